//! Broker events: what goes to `<state_root>/broker/events.jsonl` (one JSON
//! object a line) and, as readable text, to broker.log. Pure rendering; the
//! hub appends the lines. Heartbeats are not events (they only refresh the
//! state snapshot).

use std::net::SocketAddr;

use serde::Serialize;

use super::session::{Action, Record};
use super::stamp::utc;
use super::wire::reason::Reason;

/// One broker event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    BrokerStarted {
        pid: u32,
        port: u16,
    },
    BrokerStopped {
        reason: Reason,
    },
    HandshakeGranted {
        vm: String,
        /// `null` for a handshake-only guest.
        session: Option<String>,
        capabilities: Vec<String>,
        peer: String,
    },
    HandshakeDenied {
        vm: Option<String>,
        reason: Reason,
        peer: String,
    },
    HelloTimeout {
        peer: String,
    },
    SessionClosed {
        vm: String,
        session: String,
        reason: Reason,
        peer: String,
    },
    /// A back-pressure or liveness decision about a bus session.
    BusDecision {
        vm: String,
        session: String,
        reason: Reason,
        action: Action,
        attempt: u32,
        peer: String,
    },
    /// A host tool's stream (exec, shell, cp) reached the VM's agent.
    StreamOpened {
        vm: String,
        stream: String,
        user: String,
    },
    /// A stream ended: what ran and how much went each way (never stdin,
    /// environment values or file contents).
    StreamClosed {
        vm: String,
        stream: String,
        user: String,
        kind: Option<String>,
        argv: Option<Vec<String>>,
        path: Option<String>,
        exit_code: Option<i32>,
        duration_ms: u64,
        bytes_in: u64,
        bytes_out: u64,
    },
    /// A stream hello on the guest port was refused (impostor, stale id).
    StreamRefused {
        vm: Option<String>,
        reason: String,
        peer: String,
    },
}

impl Event {
    /// The event a session record produces, if any.
    pub fn from_record(record: &Record, peer: SocketAddr) -> Option<Event> {
        let peer = peer.to_string();
        match record {
            Record::Granted {
                vm,
                session,
                capabilities,
            } => Some(Event::HandshakeGranted {
                vm: vm.clone(),
                session: session.clone(),
                capabilities: capabilities.clone(),
                peer,
            }),
            Record::Denied { vm, reason } => Some(Event::HandshakeDenied {
                vm: vm.clone(),
                reason: *reason,
                peer,
            }),
            Record::HelloTimeout => Some(Event::HelloTimeout { peer }),
            Record::Heartbeat { .. }
            | Record::Subscriptions { .. }
            | Record::Published { .. }
            | Record::Boot { .. } => None,
            Record::Decision {
                vm,
                session,
                reason,
                action,
                attempt,
            } => Some(Event::BusDecision {
                vm: vm.clone(),
                session: session.clone(),
                reason: *reason,
                action: *action,
                attempt: *attempt,
                peer,
            }),
            Record::Closed {
                vm,
                session,
                reason,
            } => Some(Event::SessionClosed {
                vm: vm.clone(),
                session: session.clone(),
                reason: *reason,
                peer,
            }),
        }
    }

    /// One line of events.jsonl (no newline).
    pub fn json_line(&self, ts_ms: u64) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            ts_ms: u64,
            #[serde(flatten)]
            event: &'a Event,
        }
        serde_json::to_string(&Line { ts_ms, event: self }).unwrap_or_default()
    }

    /// One readable line of broker.log (no newline).
    pub fn log_line(&self, ts_ms: u64) -> String {
        let body = match self {
            Event::BrokerStarted { pid, port } => {
                format!("broker started pid={pid} port={port}")
            }
            Event::BrokerStopped { reason } => format!("broker stopped reason={reason}"),
            Event::HandshakeGranted {
                vm,
                session,
                capabilities,
                peer,
            } => match session {
                Some(id) => format!(
                    "handshake granted vm={vm} session={id} capabilities={} peer={peer}",
                    capabilities.join(",")
                ),
                None => format!("handshake granted vm={vm} handshake-only peer={peer}"),
            },
            Event::HandshakeDenied { vm, reason, peer } => format!(
                "handshake denied vm={} reason={reason} peer={peer}",
                vm.as_deref().unwrap_or("-")
            ),
            Event::HelloTimeout { peer } => format!("hello timeout peer={peer}"),
            Event::SessionClosed {
                vm,
                session,
                reason,
                peer,
            } => format!("session closed vm={vm} session={session} reason={reason} peer={peer}"),
            Event::BusDecision {
                vm,
                session,
                reason,
                action,
                attempt,
                peer,
            } => format!(
                "bus decision vm={vm} session={session} reason={reason} action={} attempt={attempt} peer={peer}",
                action.as_str()
            ),
            Event::StreamOpened { vm, stream, user } => {
                format!("stream opened vm={vm} stream={stream} user={user}")
            }
            Event::StreamClosed {
                vm,
                stream,
                kind,
                exit_code,
                duration_ms,
                bytes_in,
                bytes_out,
                ..
            } => format!(
                "stream closed vm={vm} stream={stream} kind={} exit={} duration_ms={duration_ms} in={bytes_in} out={bytes_out}",
                kind.as_deref().unwrap_or("-"),
                exit_code.map_or("-".to_owned(), |c| c.to_string())
            ),
            Event::StreamRefused { vm, reason, peer } => format!(
                "stream refused vm={} reason={reason} peer={peer}",
                vm.as_deref().unwrap_or("-")
            ),
        };
        format!("{} {body}", utc(ts_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines() {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let records = [
            Record::Granted {
                vm: "web".into(),
                session: Some("0123abcd".into()),
                capabilities: vec!["bus-v1".into()],
            },
            Record::Granted {
                vm: "web".into(),
                session: None,
                capabilities: vec![],
            },
            Record::Denied {
                vm: Some("web".into()),
                reason: Reason::BadToken,
            },
            Record::Denied {
                vm: None,
                reason: Reason::LineTooLong,
            },
            Record::HelloTimeout,
            Record::Heartbeat {
                vm: "web".into(),
                session: "0123abcd".into(),
            },
            Record::Closed {
                vm: "web".into(),
                session: "0123abcd".into(),
                reason: Reason::HeartbeatTimeout,
            },
            Record::Decision {
                vm: "web".into(),
                session: "0123abcd".into(),
                reason: Reason::QueueFull,
                action: Action::Retry,
                attempt: 2,
            },
            Record::Published {
                vm: Some("web".into()),
                seq: 3,
            },
        ];
        let mut events: Vec<Event> = records
            .iter()
            .filter_map(|r| Event::from_record(r, peer))
            .collect();
        events.insert(0, Event::BrokerStarted { pid: 7, port: 7750 });
        events.push(Event::BrokerStopped {
            reason: Reason::Shutdown,
        });
        let mut out = String::new();
        for e in &events {
            out.push_str(&e.json_line(1_714_566_896_789));
            out.push('\n');
            out.push_str(&e.log_line(1_714_566_896_789));
            out.push('\n');
        }
        insta::assert_snapshot!(out, @r#"
            {"ts_ms":1714566896789,"event":"broker_started","pid":7,"port":7750}
            2024-05-01T12:34:56.789Z broker started pid=7 port=7750
            {"ts_ms":1714566896789,"event":"handshake_granted","vm":"web","session":"0123abcd","capabilities":["bus-v1"],"peer":"127.0.0.1:40000"}
            2024-05-01T12:34:56.789Z handshake granted vm=web session=0123abcd capabilities=bus-v1 peer=127.0.0.1:40000
            {"ts_ms":1714566896789,"event":"handshake_granted","vm":"web","session":null,"capabilities":[],"peer":"127.0.0.1:40000"}
            2024-05-01T12:34:56.789Z handshake granted vm=web handshake-only peer=127.0.0.1:40000
            {"ts_ms":1714566896789,"event":"handshake_denied","vm":"web","reason":"bad_token","peer":"127.0.0.1:40000"}
            2024-05-01T12:34:56.789Z handshake denied vm=web reason=bad_token peer=127.0.0.1:40000
            {"ts_ms":1714566896789,"event":"handshake_denied","vm":null,"reason":"line_too_long","peer":"127.0.0.1:40000"}
            2024-05-01T12:34:56.789Z handshake denied vm=- reason=line_too_long peer=127.0.0.1:40000
            {"ts_ms":1714566896789,"event":"hello_timeout","peer":"127.0.0.1:40000"}
            2024-05-01T12:34:56.789Z hello timeout peer=127.0.0.1:40000
            {"ts_ms":1714566896789,"event":"session_closed","vm":"web","session":"0123abcd","reason":"heartbeat_timeout","peer":"127.0.0.1:40000"}
            2024-05-01T12:34:56.789Z session closed vm=web session=0123abcd reason=heartbeat_timeout peer=127.0.0.1:40000
            {"ts_ms":1714566896789,"event":"bus_decision","vm":"web","session":"0123abcd","reason":"queue_full","action":"retry","attempt":2,"peer":"127.0.0.1:40000"}
            2024-05-01T12:34:56.789Z bus decision vm=web session=0123abcd reason=queue_full action=retry attempt=2 peer=127.0.0.1:40000
            {"ts_ms":1714566896789,"event":"broker_stopped","reason":"shutdown"}
            2024-05-01T12:34:56.789Z broker stopped reason=shutdown
            "#);
    }
}
