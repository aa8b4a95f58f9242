//! The broker's state snapshot (`<state_root>/broker/state.json`): what the
//! broker knows per VM (last handshake, last heartbeat, open sessions,
//! denials) and the pure rules status uses to read it ([`reachable`],
//! [`age_ms`]). Applying session records to the snapshot is pure; writing the
//! file (atomic rename, coalesced) is the server's hub, reading it is
//! [`read_snapshot`].
//!
//! **Freshness**: a VM is reachable when it has an open bus session and
//! heard from it (handshake or heartbeat) within [`FRESHNESS_WINDOW_MS`]
//! (3 heartbeat intervals = 15 s), or, when its latest handshake was
//! handshake-only, that handshake is within the window. A stale file (broker
//! killed or frozen) therefore ages out by itself.
//!
//! Host sessions (`castra bus subscribe`) are recorded under the reserved
//! name `host` and kept in [`BrokerSnapshot::host`], never among the VMs.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::session::{Action, HEARTBEAT_INTERVAL_MS, HOST, Record};
use super::wire::reason::Reason;

/// Format version of state.json.
pub const STATE_VERSION: u32 = 1;
/// How long a handshake or heartbeat counts as evidence that a guest is up.
pub const FRESHNESS_WINDOW_MS: u64 = 3 * HEARTBEAT_INTERVAL_MS;

/// What the broker knows about one VM. Times are unix milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmEntry {
    /// Latest accepted handshake (bus or handshake-only).
    pub last_handshake_ms: Option<u64>,
    /// Latest heartbeat frame on any of its sessions.
    pub last_heartbeat_ms: Option<u64>,
    /// The most recently granted session that is still open.
    pub session: Option<String>,
    /// Bus sessions open now.
    pub sessions: u32,
    /// Accepted handshakes since the state root was created.
    pub handshakes: u64,
    /// Whether the latest accepted handshake was handshake-only.
    pub handshake_only: bool,
    /// Refused hellos naming this VM (bad or missing token, unreadable token file).
    pub denials: u64,
    /// Reason of the latest refusal.
    pub last_denial: Option<Reason>,
    /// Open session ids in the order they were granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_sessions: Vec<String>,
    /// Whether any open session of this VM holds a bus subscription.
    #[serde(default)]
    pub bus_subscribed: bool,
    /// Latest durable publish from this VM (unix ms).
    #[serde(default)]
    pub last_publish_ms: Option<u64>,
    /// Durable publishes from this VM since the state root was created.
    #[serde(default)]
    pub publishes: u64,
    /// Sessions of this VM the broker cut off as slow consumers.
    #[serde(default)]
    pub slow_consumer_disconnects: u64,
    /// Subscription count per open session (sessions with none are absent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub session_subscriptions: BTreeMap<String, u32>,
    /// The boot marks of the latest handshake that carried some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_boot: Option<GuestBoot>,
}

/// A guest's boot marks and the host time of the handshake that carried them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestBoot {
    /// Unix ms at which the broker granted that handshake.
    pub handshake_ms: u64,
    /// Stage -> guest uptime in ms (`init`, `net`, `agent`, `hello`, ...).
    pub marks: BTreeMap<String, u64>,
}

/// The whole snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerSnapshot {
    pub version: u32,
    pub broker_pid: u32,
    pub port: u16,
    pub started_ms: u64,
    pub written_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub freshness_window_ms: u64,
    /// Connections open now (any phase).
    pub connections: u32,
    /// Hellos naming a VM that has no token file.
    pub denied_unknown_vm: u64,
    /// The latest such name (bounded: one name, not a list).
    pub last_unknown_vm: Option<String>,
    /// Hellos that were malformed or too long.
    pub denied_malformed: u64,
    /// Connections that sent no hello in time.
    pub hello_timeouts: u64,
    /// Latest durable publish from the host (`castra bus publish`), unix ms.
    #[serde(default)]
    pub host_last_publish_ms: Option<u64>,
    /// Sequence number of the latest durable publish.
    #[serde(default)]
    pub bus_last_seq: Option<u64>,
    /// Deliveries dropped because a subscriber's queue was full (ron-bus name).
    #[serde(default)]
    pub bus_overflow_dropped_total: u64,
    /// Frames waiting in every session's outbound queue, at the latest sample.
    #[serde(default)]
    pub bus_queue_depth: u64,
    /// Host bus sessions (`castra bus subscribe`): open sessions, their
    /// subscriptions, heartbeats and slow-consumer cut-offs, as for a VM.
    #[serde(default)]
    pub host: VmEntry,
    pub vms: BTreeMap<String, VmEntry>,
}

impl BrokerSnapshot {
    /// A fresh snapshot for a broker starting now; per-VM history (times and
    /// counters) is carried over from `previous`, open sessions are not.
    pub fn starting(
        previous: Option<BrokerSnapshot>,
        pid: u32,
        port: u16,
        heartbeat_timeout_ms: u64,
        now_ms: u64,
    ) -> Self {
        let mut vms = BTreeMap::new();
        let (mut unknown, mut last_unknown, mut malformed, mut timeouts) = (0, None, 0, 0);
        let (mut host_publish, mut last_seq, mut dropped) = (None, None, 0);
        let mut host = VmEntry::default();
        if let Some(prev) = previous {
            host = prev.host;
            host.forget_sessions();
            host_publish = prev.host_last_publish_ms;
            last_seq = prev.bus_last_seq;
            dropped = prev.bus_overflow_dropped_total;
            for (name, mut entry) in prev.vms {
                entry.forget_sessions();
                vms.insert(name, entry);
            }
            unknown = prev.denied_unknown_vm;
            last_unknown = prev.last_unknown_vm;
            malformed = prev.denied_malformed;
            timeouts = prev.hello_timeouts;
        }
        BrokerSnapshot {
            version: STATE_VERSION,
            broker_pid: pid,
            port,
            started_ms: now_ms,
            written_ms: now_ms,
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
            heartbeat_timeout_ms,
            freshness_window_ms: FRESHNESS_WINDOW_MS,
            connections: 0,
            denied_unknown_vm: unknown,
            last_unknown_vm: last_unknown,
            denied_malformed: malformed,
            hello_timeouts: timeouts,
            host_last_publish_ms: host_publish,
            bus_last_seq: last_seq,
            bus_overflow_dropped_total: dropped,
            bus_queue_depth: 0,
            host,
            vms,
        }
    }

    /// The entry records about `vm` go to: the host's for [`HOST`].
    fn entry(&mut self, vm: &str) -> &mut VmEntry {
        if vm == HOST {
            &mut self.host
        } else {
            self.vms.entry(vm.to_owned()).or_default()
        }
    }

    /// Apply one session record observed at `now_ms` (every record changes
    /// the snapshot).
    pub fn apply(&mut self, record: &Record, now_ms: u64) {
        match record {
            Record::Granted { vm, session, .. } => {
                let e = self.entry(vm);
                e.last_handshake_ms = Some(now_ms);
                e.handshakes += 1;
                e.handshake_only = session.is_none();
                if let Some(id) = session {
                    e.open_sessions.push(id.clone());
                }
                e.refresh();
            }
            Record::Boot { vm, marks } => {
                let e = self.entry(vm);
                e.last_boot = Some(GuestBoot {
                    handshake_ms: e.last_handshake_ms.unwrap_or(now_ms),
                    marks: marks.iter().cloned().collect(),
                });
            }
            Record::Denied { vm, reason } => match (vm, reason) {
                (Some(name), Reason::UnknownVm) => {
                    self.denied_unknown_vm += 1;
                    self.last_unknown_vm = Some(name.clone());
                }
                (Some(name), _) => {
                    let e = self.vms.entry(name.clone()).or_default();
                    e.denials += 1;
                    e.last_denial = Some(*reason);
                }
                (None, _) => self.denied_malformed += 1,
            },
            Record::HelloTimeout => self.hello_timeouts += 1,
            Record::Heartbeat { vm, .. } => {
                self.entry(vm).last_heartbeat_ms = Some(now_ms);
            }
            Record::Closed { vm, session, .. } => {
                let e = self.entry(vm);
                e.open_sessions.retain(|s| s != session);
                e.session_subscriptions.remove(session);
                e.refresh();
            }
            Record::Subscriptions { vm, session, count } => {
                let e = self.entry(vm);
                if *count == 0 {
                    e.session_subscriptions.remove(session);
                } else {
                    e.session_subscriptions.insert(session.clone(), *count);
                }
                e.refresh();
            }
            Record::Published { vm, seq } => {
                self.bus_last_seq = Some(self.bus_last_seq.map_or(*seq, |s| s.max(*seq)));
                match vm {
                    Some(vm) => {
                        let e = self.entry(vm);
                        e.last_publish_ms = Some(now_ms);
                        e.publishes += 1;
                    }
                    None => self.host_last_publish_ms = Some(now_ms),
                }
            }
            Record::Decision {
                vm, reason, action, ..
            } => {
                if *reason == Reason::SlowConsumer && *action == Action::Disconnect {
                    self.entry(vm).slow_consumer_disconnects += 1;
                }
            }
        }
    }

    /// Take the hub's latest counters.
    pub fn set_bus_stats(&mut self, dropped_total: u64, queue_depth: u64) {
        self.bus_overflow_dropped_total = dropped_total;
        self.bus_queue_depth = queue_depth;
    }
}

impl VmEntry {
    /// A restarted broker keeps history, not sessions.
    fn forget_sessions(&mut self) {
        self.session = None;
        self.sessions = 0;
        self.open_sessions.clear();
        self.session_subscriptions.clear();
        self.bus_subscribed = false;
    }

    fn refresh(&mut self) {
        self.sessions = self.open_sessions.len() as u32;
        self.session = self.open_sessions.last().cloned();
        self.bus_subscribed = !self.session_subscriptions.is_empty();
    }
}

/// Whether the snapshot shows the VM as up at `now_ms` (see the module doc).
/// Status should also treat a VM as unreachable when the broker is not running.
pub fn reachable(entry: &VmEntry, now_ms: u64) -> bool {
    let fresh = |t: Option<u64>| t.is_some_and(|t| now_ms.saturating_sub(t) <= FRESHNESS_WINDOW_MS);
    if entry.sessions > 0 {
        fresh(entry.last_heartbeat_ms) || fresh(entry.last_handshake_ms)
    } else {
        entry.handshake_only && fresh(entry.last_handshake_ms)
    }
}

/// Age of a timestamp at `now_ms` (`None` when never).
pub fn age_ms(t: Option<u64>, now_ms: u64) -> Option<u64> {
    t.map(|t| now_ms.saturating_sub(t))
}

/// Errors reading state.json.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read broker state {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error(
        "broker state {path} is not valid JSON ({source}); the broker rewrites it on its next change"
    )]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

/// Read state.json; `Ok(None)` when the broker never wrote one.
pub fn read_snapshot(path: &Path) -> Result<Option<BrokerSnapshot>, StateError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| StateError::Parse {
            path: path.display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(vm: &str, session: Option<&str>) -> Record {
        Record::Granted {
            vm: vm.into(),
            session: session.map(str::to_owned),
            capabilities: vec![],
        }
    }

    #[test]
    fn records_build_the_snapshot() {
        let mut s = BrokerSnapshot::starting(None, 42, 7750, 15_000, 1_000);
        s.apply(&granted("web", Some("a")), 1_100);
        s.apply(&granted("web", Some("b")), 1_200);
        s.apply(
            &Record::Heartbeat {
                vm: "web".into(),
                session: "a".into(),
            },
            1_300,
        );
        s.apply(
            &Record::Closed {
                vm: "web".into(),
                session: "b".into(),
                reason: Reason::PeerClosed,
            },
            1_400,
        );
        s.apply(&granted("db", None), 1_500);
        s.apply(
            &Record::Denied {
                vm: Some("db".into()),
                reason: Reason::BadToken,
            },
            1_600,
        );
        s.apply(
            &Record::Denied {
                vm: Some("ghost".into()),
                reason: Reason::UnknownVm,
            },
            1_700,
        );
        s.apply(
            &Record::Denied {
                vm: None,
                reason: Reason::MalformedHello,
            },
            1_800,
        );
        s.apply(&Record::HelloTimeout, 1_900);
        let subs = |count| Record::Subscriptions {
            vm: "web".into(),
            session: "a".into(),
            count,
        };
        s.apply(&subs(2), 2_000);
        s.apply(
            &Record::Published {
                vm: Some("web".into()),
                seq: 5,
            },
            2_100,
        );
        s.apply(&Record::Published { vm: None, seq: 6 }, 2_200);
        s.apply(
            &Record::Decision {
                vm: "db".into(),
                session: "c".into(),
                reason: Reason::SlowConsumer,
                action: Action::Disconnect,
                attempt: 5,
            },
            2_300,
        );
        // A host consumer is counted apart from the VMs.
        s.apply(&granted(HOST, Some("h")), 2_400);
        s.apply(
            &Record::Subscriptions {
                vm: HOST.into(),
                session: "h".into(),
                count: 1,
            },
            2_500,
        );
        s.set_bus_stats(3, 17);
        insta::assert_snapshot!(serde_json::to_string_pretty(&s).unwrap(), @r#"
            {
              "version": 1,
              "broker_pid": 42,
              "port": 7750,
              "started_ms": 1000,
              "written_ms": 1000,
              "heartbeat_interval_ms": 5000,
              "heartbeat_timeout_ms": 15000,
              "freshness_window_ms": 15000,
              "connections": 0,
              "denied_unknown_vm": 1,
              "last_unknown_vm": "ghost",
              "denied_malformed": 1,
              "hello_timeouts": 1,
              "host_last_publish_ms": 2200,
              "bus_last_seq": 6,
              "bus_overflow_dropped_total": 3,
              "bus_queue_depth": 17,
              "host": {
                "last_handshake_ms": 2400,
                "last_heartbeat_ms": null,
                "session": "h",
                "sessions": 1,
                "handshakes": 1,
                "handshake_only": false,
                "denials": 0,
                "last_denial": null,
                "open_sessions": [
                  "h"
                ],
                "bus_subscribed": true,
                "last_publish_ms": null,
                "publishes": 0,
                "slow_consumer_disconnects": 0,
                "session_subscriptions": {
                  "h": 1
                }
              },
              "vms": {
                "db": {
                  "last_handshake_ms": 1500,
                  "last_heartbeat_ms": null,
                  "session": null,
                  "sessions": 0,
                  "handshakes": 1,
                  "handshake_only": true,
                  "denials": 1,
                  "last_denial": "bad_token",
                  "bus_subscribed": false,
                  "last_publish_ms": null,
                  "publishes": 0,
                  "slow_consumer_disconnects": 1
                },
                "web": {
                  "last_handshake_ms": 1200,
                  "last_heartbeat_ms": 1300,
                  "session": "a",
                  "sessions": 1,
                  "handshakes": 2,
                  "handshake_only": false,
                  "denials": 0,
                  "last_denial": null,
                  "open_sessions": [
                    "a"
                  ],
                  "bus_subscribed": true,
                  "last_publish_ms": 2100,
                  "publishes": 1,
                  "slow_consumer_disconnects": 0,
                  "session_subscriptions": {
                    "a": 2
                  }
                }
              }
            }
            "#);

        s.apply(&subs(0), 2_400);
        assert!(!s.vms["web"].bus_subscribed);
        s.apply(&subs(1), 2_500);
        assert!(s.vms["web"].bus_subscribed);

        // A restarted broker keeps history, not sessions.
        let restarted = BrokerSnapshot::starting(Some(s), 43, 7750, 15_000, 5_000);
        let web = &restarted.vms["web"];
        assert_eq!((web.sessions, web.session.as_deref()), (0, None));
        assert_eq!(web.last_heartbeat_ms, Some(1_300));
        assert_eq!(
            (web.bus_subscribed, web.last_publish_ms),
            (false, Some(2_100))
        );
        assert_eq!(restarted.bus_last_seq, Some(6));
        assert_eq!(restarted.denied_unknown_vm, 1);
    }

    #[test]
    fn reachability_table() {
        let w = FRESHNESS_WINDOW_MS;
        let open = |hs: Option<u64>, hb: Option<u64>| VmEntry {
            last_handshake_ms: hs,
            last_heartbeat_ms: hb,
            sessions: 1,
            session: Some("s".into()),
            ..VmEntry::default()
        };
        let only = |hs: Option<u64>| VmEntry {
            last_handshake_ms: hs,
            handshake_only: true,
            ..VmEntry::default()
        };
        let now = 100_000;
        let closed = VmEntry {
            last_handshake_ms: Some(now - 10),
            last_heartbeat_ms: Some(now - 10),
            handshakes: 1,
            ..VmEntry::default()
        };
        let cases = [
            ("never", VmEntry::default(), false),
            ("open, fresh handshake", open(Some(now - 10), None), true),
            (
                "open, old handshake, fresh heartbeat",
                open(Some(0), Some(now - w)),
                true,
            ),
            ("open, both stale", open(Some(0), Some(now - w - 1)), false),
            ("handshake-only, fresh", only(Some(now - w)), true),
            ("handshake-only, stale", only(Some(now - w - 1)), false),
            ("closed session, recent times", closed, false),
            ("clock went back", open(Some(now + 5_000), None), true),
        ];
        for (name, entry, want) in cases {
            assert_eq!(reachable(&entry, now), want, "{name}");
        }
        assert_eq!(age_ms(None, now), None);
        assert_eq!(age_ms(Some(now - 7), now), Some(7));
    }

    #[test]
    fn read_snapshot_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(read_snapshot(&path).unwrap().is_none());
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            read_snapshot(&path),
            Err(StateError::Parse { .. })
        ));
        let s = BrokerSnapshot::starting(None, 1, 2, 3, 4);
        std::fs::write(&path, serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(read_snapshot(&path).unwrap(), Some(s));
    }
}
