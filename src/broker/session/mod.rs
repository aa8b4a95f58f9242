//! One connection's protocol state machine, with no sockets and no clock of
//! its own: the server feeds it inputs (a hello line, a decoded frame, a
//! tick, the peer going away, shutdown) with the current time, and carries
//! out the effects it returns (reply line, send frame, record event, close).
//!
//! ```text
//! AwaitingHello --hello ok, bus-v1-->  Open{session} --bye/timeout/eof--> Closed(reason)
//!               --host session---->    Open{host}     (the host socket; no token)
//!               --hello ok, no bus-->  HandshakeOnly   (closed at once)
//!               --refused/timeout-->   Denied(reason)  (closed at once)
//! ```
//!
//! In `Open`, bus frames become effects the server carries out: a publish
//! becomes [`Effect::Publish`] (the server appends it durably and feeds back
//! [`Input::Committed`], which alone produces the publish ack), subscribe
//! and unsubscribe become hub effects with an immediate ack. The session
//! owns its subscription set, so every way of closing (bye, heartbeat
//! timeout, eviction by the hub, peer gone) clears it deterministically.
//!
//! Unacked window: a delivery from the hub ([`Input::Deliver`]) becomes
//! [`Effect::Deliver`] and its `seq` stays *unacked* until the consumer acks
//! it (an ack of `seq` N acknowledges every delivered `seq` <= N). With
//! `unacked_window` messages unacked, [`Session::can_deliver`] is false and
//! the server stops taking deliveries from the session's bounded hub queue,
//! so a consumer that stops acking fills that queue and meets the hub's
//! `queue_full` -> retries -> `slow_consumer` path.
//!
//! Host sessions ([`Input::HostSession`], from the owner-only Unix socket)
//! are consumers and publishers like guests, recorded under the reserved
//! name `host`; they may subscribe to any VM's `vm:<name>` and their
//! publishes are the host's.
//!
//! Token policy: a hello naming a known VM must carry that VM's token,
//! except a handshake-only hello (no `bus-v1`) when the broker runs with
//! `allow_tokenless_handshake`; then it is recorded for reachability like any
//! other. A token-less `bus-v1` hello is always `missing_token`.

mod types;

use crate::broker::token::{TokenLookup, tokens_match};
use crate::broker::wire::frame::{AckKind, BrokerFrame, ClientFrame};
use crate::broker::wire::hello::{self, Reply};
use crate::broker::wire::reason::Reason;
use crate::broker::wire::topic;

pub use types::{
    Action, Client, DEFAULT_HEARTBEAT_TIMEOUT_MS, DEFAULT_HELLO_TIMEOUT_MS, DEFAULT_UNACKED_WINDOW,
    Effect, HEARTBEAT_INTERVAL_MS, HOST, Input, Open, Record, Registry, SessionConfig, State,
};

/// One connection's session.
#[derive(Debug)]
pub struct Session {
    id: String,
    config: SessionConfig,
    state: State,
}

impl Session {
    /// A new connection, greeted at `now_ms`; `id` becomes the session id if
    /// a bus session is granted.
    pub fn new(id: String, config: SessionConfig, now_ms: u64) -> Self {
        Session {
            id,
            config,
            state: State::AwaitingHello {
                deadline_ms: now_ms + config.hello_timeout_ms,
            },
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether the connection is finished (the server closes it).
    pub fn is_terminal(&self) -> bool {
        match self.state {
            State::AwaitingHello { .. } | State::Open { .. } => false,
            State::HandshakeOnly { .. } | State::Denied { .. } | State::Closed { .. } => true,
        }
    }

    /// Whether the server may feed the next [`Input::Deliver`]: the session
    /// is open and fewer than `unacked_window` deliveries await an ack.
    pub fn can_deliver(&self) -> bool {
        match &self.state {
            State::Open(open) => open.unacked.len() < self.config.unacked_window.max(1) as usize,
            State::AwaitingHello { .. }
            | State::HandshakeOnly { .. }
            | State::Denied { .. }
            | State::Closed { .. } => false,
        }
    }

    /// When the server should feed the next `Tick`, if ever.
    pub fn deadline_ms(&self) -> Option<u64> {
        match &self.state {
            State::AwaitingHello { deadline_ms } => Some(*deadline_ms),
            State::Open(open) => Some(open.last_heard_ms + self.config.heartbeat_timeout_ms),
            State::HandshakeOnly { .. } | State::Denied { .. } | State::Closed { .. } => None,
        }
    }

    /// Advance the machine.
    pub fn on_input(
        &mut self,
        now_ms: u64,
        input: Input<'_>,
        registry: &impl Registry,
    ) -> Vec<Effect> {
        let state = std::mem::replace(
            &mut self.state,
            State::Closed {
                reason: Reason::InternalError,
            },
        );
        let (next, effects) = self.step(state, now_ms, input, registry);
        self.state = next;
        effects
    }

    fn step(
        &self,
        state: State,
        now_ms: u64,
        input: Input<'_>,
        registry: &impl Registry,
    ) -> (State, Vec<Effect>) {
        match (state, input) {
            (State::AwaitingHello { .. }, Input::Line(line)) => {
                self.on_hello(line, now_ms, registry)
            }
            (State::AwaitingHello { .. }, Input::LineTooLong) => deny(None, Reason::LineTooLong),
            (State::AwaitingHello { deadline_ms }, Input::Tick) => {
                if now_ms >= deadline_ms {
                    let reason = Reason::HelloTimeout;
                    (
                        State::Denied { reason },
                        vec![
                            Effect::Reply(Reply::Error(reason)),
                            Effect::Record(Record::HelloTimeout),
                            Effect::Close(reason),
                        ],
                    )
                } else {
                    (State::AwaitingHello { deadline_ms }, vec![])
                }
            }
            (State::AwaitingHello { .. }, Input::PeerGone(reason)) => {
                (State::Closed { reason }, vec![Effect::Close(reason)])
            }
            (State::AwaitingHello { .. }, Input::Shutdown) => {
                let reason = Reason::Shutdown;
                (
                    State::Closed { reason },
                    vec![Effect::Reply(Reply::Error(reason)), Effect::Close(reason)],
                )
            }
            (State::AwaitingHello { .. }, Input::HostSession) => self.on_host(now_ms),
            // Frames cannot arrive before the handshake: the server reads lines then;
            // neither can commits, evictions or deliveries, which need a session.
            (
                s @ State::AwaitingHello { .. },
                Input::Frame(_) | Input::Committed { .. } | Input::Evict(_) | Input::Deliver { .. },
            ) => (s, vec![]),

            (State::Open(open), input) => self.on_open(open, now_ms, input),

            // Finished connections ignore everything.
            (s @ State::HandshakeOnly { .. }, _)
            | (s @ State::Denied { .. }, _)
            | (s @ State::Closed { .. }, _) => (s, vec![]),
        }
    }

    fn on_hello(&self, line: &[u8], now_ms: u64, registry: &impl Registry) -> (State, Vec<Effect>) {
        let hello = match hello::parse(line) {
            Ok(h) => h,
            Err(reason) => return deny(None, reason),
        };
        let secret = match registry.lookup(&hello.vm) {
            TokenLookup::Known(secret) => secret,
            TokenLookup::Unknown => return deny(Some(hello.vm), Reason::UnknownVm),
            TokenLookup::Unreadable(_) => return deny(Some(hello.vm), Reason::InternalError),
        };
        let wants_bus = hello.wants_bus();
        let boot = (!hello.boot.is_empty()).then(|| Record::Boot {
            vm: hello.vm.clone(),
            marks: hello.boot.clone(),
        });
        match &hello.token {
            Some(given) if tokens_match(secret.as_bytes(), given.as_bytes()) => {}
            Some(_) => return deny(Some(hello.vm), Reason::BadToken),
            None if !wants_bus && self.config.allow_tokenless_handshake => {}
            None => return deny(Some(hello.vm), Reason::MissingToken),
        }
        if wants_bus {
            let record = Record::Granted {
                vm: hello.vm.clone(),
                session: Some(self.id.clone()),
                capabilities: hello.capabilities,
            };
            let mut effects = vec![
                Effect::Reply(Reply::Session(self.id.clone())),
                Effect::Record(record),
            ];
            effects.extend(boot.map(Effect::Record));
            (
                State::Open(Open::new(Client::Guest, hello.vm, self.id.clone(), now_ms)),
                effects,
            )
        } else {
            let record = Record::Granted {
                vm: hello.vm.clone(),
                session: None,
                capabilities: hello.capabilities,
            };
            (
                State::HandshakeOnly { vm: hello.vm },
                vec![
                    Effect::Reply(Reply::Ok),
                    Effect::Record(record),
                    Effect::Close(Reason::HandshakeOnly),
                ],
            )
        }
    }

    /// A host tool's session: trusted by the socket's permissions.
    fn on_host(&self, now_ms: u64) -> (State, Vec<Effect>) {
        let record = Record::Granted {
            vm: HOST.to_owned(),
            session: Some(self.id.clone()),
            capabilities: vec![super::wire::hello::CAP_BUS_V1.to_owned()],
        };
        (
            State::Open(Open::new(
                Client::Host,
                HOST.to_owned(),
                self.id.clone(),
                now_ms,
            )),
            vec![
                Effect::Reply(Reply::Session(self.id.clone())),
                Effect::Record(record),
            ],
        )
    }

    fn on_open(&self, mut open: Open, now_ms: u64, input: Input<'_>) -> (State, Vec<Effect>) {
        let mut effects = Vec::new();
        match input {
            Input::Frame(Ok(frame)) => {
                open.last_heard_ms = now_ms;
                on_frame(&mut open, frame, &mut effects);
            }
            Input::Committed { id, result } => {
                let ack = match result {
                    Ok(seq) => {
                        effects.push(Effect::Record(Record::Published {
                            vm: open.publisher().map(str::to_owned),
                            seq,
                        }));
                        BrokerFrame::ack_published(seq, id)
                    }
                    Err(reason) => BrokerFrame::ack_error(AckKind::Publish, reason, id),
                };
                effects.insert(0, Effect::Send(ack));
            }
            Input::Frame(Err(reason)) => {
                effects.push(Effect::Send(BrokerFrame::Error { reason }));
                effects.push(Effect::Send(BrokerFrame::Bye { reason }));
                return close(open, reason, effects);
            }
            Input::Tick => {
                if now_ms >= open.last_heard_ms + self.config.heartbeat_timeout_ms {
                    let reason = Reason::HeartbeatTimeout;
                    effects.push(Effect::Send(BrokerFrame::Bye { reason }));
                    effects.push(decision(&open, reason));
                    return close(open, reason, effects);
                }
            }
            Input::Evict(reason) => {
                effects.push(Effect::Send(BrokerFrame::Bye { reason }));
                return close(open, reason, effects);
            }
            Input::PeerGone(reason) => return close(open, reason, effects),
            Input::Shutdown => {
                let reason = Reason::Shutdown;
                effects.push(Effect::Send(BrokerFrame::Bye { reason }));
                return close(open, reason, effects);
            }
            Input::Deliver { seq, frame } => {
                // The server feeds deliveries only while the window is open;
                // one fed anyway is still sent (never lost) and counted.
                open.unacked.push_back(seq);
                effects.push(Effect::Deliver { seq, frame });
            }
            // Lines end with the handshake; the server no longer reads them.
            Input::Line(_) | Input::LineTooLong | Input::HostSession => {}
        }
        (State::Open(open), effects)
    }
}

/// A well-formed frame on an open session.
fn on_frame(open: &mut Open, frame: ClientFrame, effects: &mut Vec<Effect>) {
    match frame {
        ClientFrame::Heartbeat => {
            effects.push(Effect::Send(BrokerFrame::ack_ok(AckKind::Heartbeat)));
            effects.push(Effect::Record(Record::Heartbeat {
                vm: open.vm.clone(),
                session: open.session.clone(),
            }));
        }
        ClientFrame::Publish { topic, payload, id } => match topic::check(&topic) {
            Ok(()) => effects.push(Effect::Publish { topic, payload, id }),
            Err(reason) => effects.push(Effect::Send(BrokerFrame::ack_error(
                AckKind::Publish,
                reason,
                id,
            ))),
        },
        ClientFrame::Subscribe { topic } => {
            let allowed = match open.client {
                Client::Guest => topic::check_subscribe(&topic, &open.vm),
                Client::Host => topic::check(&topic),
            };
            let verdict = allowed.and_then(|()| {
                let full = open.subscriptions.len() >= topic::MAX_SUBSCRIPTIONS;
                if full && !open.subscriptions.contains(&topic) {
                    Err(Reason::TooManySubscriptions)
                } else {
                    Ok(())
                }
            });
            match verdict {
                Err(reason) => effects.push(Effect::Send(BrokerFrame::ack_topic(
                    AckKind::Subscribe,
                    &topic,
                    Some(reason),
                ))),
                Ok(()) => {
                    let ack = BrokerFrame::ack_topic(AckKind::Subscribe, &topic, None);
                    if open.subscriptions.insert(topic.clone()) {
                        effects.push(Effect::Subscribe(topic));
                        effects.push(subscriptions(open));
                    }
                    effects.push(Effect::Send(ack));
                }
            }
        }
        ClientFrame::Unsubscribe { topic } => match topic::check(&topic) {
            Err(reason) => effects.push(Effect::Send(BrokerFrame::ack_topic(
                AckKind::Unsubscribe,
                &topic,
                Some(reason),
            ))),
            Ok(()) => {
                let ack = BrokerFrame::ack_topic(AckKind::Unsubscribe, &topic, None);
                // Unsubscribing from a topic not subscribed is a no-op, acked ok.
                if open.subscriptions.remove(&topic) {
                    effects.push(Effect::Unsubscribe(topic));
                    effects.push(subscriptions(open));
                }
                effects.push(Effect::Send(ack));
            }
        },
        ClientFrame::Ack { seq } => {
            // Cumulative: every delivered seq <= `seq` is acknowledged.
            open.acked_seq = Some(open.acked_seq.map_or(seq, |a| a.max(seq)));
            while open.unacked.front().is_some_and(|&s| s <= seq) {
                open.unacked.pop_front();
            }
        }
    }
}

fn subscriptions(open: &Open) -> Effect {
    Effect::Record(Record::Subscriptions {
        vm: open.vm.clone(),
        session: open.session.clone(),
        count: open.subscriptions.len() as u32,
    })
}

fn decision(open: &Open, reason: Reason) -> Effect {
    Effect::Record(Record::Decision {
        vm: open.vm.clone(),
        session: open.session.clone(),
        reason,
        action: Action::Disconnect,
        attempt: 0,
    })
}

/// End an open session: its subscriptions are cleared, then it is recorded
/// closed and the connection closes.
fn close(mut open: Open, reason: Reason, mut effects: Vec<Effect>) -> (State, Vec<Effect>) {
    if !open.subscriptions.is_empty() {
        for topic in std::mem::take(&mut open.subscriptions) {
            effects.push(Effect::Unsubscribe(topic));
        }
        effects.push(subscriptions(&open));
    }
    effects.push(Effect::Record(Record::Closed {
        vm: open.vm,
        session: open.session,
        reason,
    }));
    effects.push(Effect::Close(reason));
    (State::Closed { reason }, effects)
}

fn deny(vm: Option<String>, reason: Reason) -> (State, Vec<Effect>) {
    (
        State::Denied { reason },
        vec![
            Effect::Reply(Reply::Error(reason)),
            Effect::Record(Record::Denied { vm, reason }),
            Effect::Close(reason),
        ],
    )
}

#[cfg(test)]
mod tests;
