//! One connection's protocol state machine, with no sockets and no clock of
//! its own: the server feeds it inputs (a hello line, a decoded frame, a
//! tick, the peer going away, shutdown) with the current time, and carries
//! out the effects it returns (reply line, send frame, record event, close).
//!
//! ```text
//! AwaitingHello --hello ok, bus-v1-->  Open{session} --bye/timeout/eof--> Closed(reason)
//!               --hello ok, no bus-->  HandshakeOnly   (closed at once)
//!               --refused/timeout-->   Denied(reason)  (closed at once)
//! ```
//!
//! Token policy: a hello naming a known VM must carry that VM's token,
//! except a handshake-only hello (no `bus-v1`) when the broker runs with
//! `allow_tokenless_handshake`; then it is recorded for reachability like any
//! other. A token-less `bus-v1` hello is always `missing_token`.

use super::frame::{AckKind, BrokerFrame, ClientFrame};
use super::hello::{self, Reply};
use super::reason::Reason;
use super::token::{TokenLookup, tokens_match};

/// Default time a client has to send its hello.
pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 5_000;
/// How often clients are asked to heartbeat (the agent does so).
pub const HEARTBEAT_INTERVAL_MS: u64 = 5_000;
/// Default silence after which the broker closes a session (3 intervals).
pub const DEFAULT_HEARTBEAT_TIMEOUT_MS: u64 = 3 * HEARTBEAT_INTERVAL_MS;

/// Timeouts and policy of every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    pub hello_timeout_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub allow_tokenless_handshake: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hello_timeout_ms: DEFAULT_HELLO_TIMEOUT_MS,
            heartbeat_timeout_ms: DEFAULT_HEARTBEAT_TIMEOUT_MS,
            allow_tokenless_handshake: false,
        }
    }
}

/// Looks up a VM's secret (the server reads token files; tests use maps).
pub trait Registry {
    fn lookup(&self, vm: &str) -> TokenLookup;
}

impl<F: Fn(&str) -> TokenLookup> Registry for F {
    fn lookup(&self, vm: &str) -> TokenLookup {
        self(vm)
    }
}

/// What happened to a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Input<'a> {
    /// A complete hello line (newline included or not).
    Line(&'a [u8]),
    /// The hello line exceeded its limit.
    LineTooLong,
    /// A decoded and parsed frame, or why decoding or parsing failed.
    Frame(Result<ClientFrame, Reason>),
    /// Time passed (the server ticks at [`Session::deadline_ms`]).
    Tick,
    /// The peer closed (`peer_closed`) or the socket failed (`io_error`).
    PeerGone(Reason),
    /// The broker is stopping.
    Shutdown,
}

/// Something the server must record (state snapshot, events, log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Handshake accepted; `session` is `None` for a handshake-only guest.
    Granted {
        vm: String,
        session: Option<String>,
        capabilities: Vec<String>,
    },
    /// Hello refused; `vm` when the line named one.
    Denied { vm: Option<String>, reason: Reason },
    /// No hello within the hello timeout.
    HelloTimeout,
    /// A heartbeat frame arrived.
    Heartbeat { vm: String, session: String },
    /// A granted session ended.
    Closed {
        vm: String,
        session: String,
        reason: Reason,
    },
}

/// What the server must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Reply(Reply),
    Send(BrokerFrame),
    Record(Record),
    Close(Reason),
}

/// Where a connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    AwaitingHello {
        deadline_ms: u64,
    },
    Open {
        vm: String,
        session: String,
        last_heard_ms: u64,
    },
    HandshakeOnly {
        vm: String,
    },
    Denied {
        reason: Reason,
    },
    Closed {
        reason: Reason,
    },
}

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

    /// When the server should feed the next `Tick`, if ever.
    pub fn deadline_ms(&self) -> Option<u64> {
        match &self.state {
            State::AwaitingHello { deadline_ms } => Some(*deadline_ms),
            State::Open { last_heard_ms, .. } => {
                Some(last_heard_ms + self.config.heartbeat_timeout_ms)
            }
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
            // Frames cannot arrive before the handshake: the server reads lines then.
            (s @ State::AwaitingHello { .. }, Input::Frame(_)) => (s, vec![]),

            (
                State::Open {
                    vm,
                    session,
                    last_heard_ms,
                },
                input,
            ) => self.on_open(vm, session, last_heard_ms, now_ms, input),

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
            (
                State::Open {
                    vm: hello.vm,
                    session: self.id.clone(),
                    last_heard_ms: now_ms,
                },
                vec![
                    Effect::Reply(Reply::Session(self.id.clone())),
                    Effect::Record(record),
                ],
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

    fn on_open(
        &self,
        vm: String,
        session: String,
        last_heard_ms: u64,
        now_ms: u64,
        input: Input<'_>,
    ) -> (State, Vec<Effect>) {
        let close = |vm: String, session: String, reason: Reason, mut effects: Vec<Effect>| {
            effects.push(Effect::Record(Record::Closed {
                vm,
                session,
                reason,
            }));
            effects.push(Effect::Close(reason));
            (State::Closed { reason }, effects)
        };
        let heard = |vm: String, session: String, effects: Vec<Effect>| {
            (
                State::Open {
                    vm,
                    session,
                    last_heard_ms: now_ms,
                },
                effects,
            )
        };
        match input {
            Input::Frame(Ok(ClientFrame::Heartbeat)) => {
                let record = Record::Heartbeat {
                    vm: vm.clone(),
                    session: session.clone(),
                };
                heard(
                    vm,
                    session,
                    vec![
                        Effect::Send(BrokerFrame::ack_ok(AckKind::Heartbeat)),
                        Effect::Record(record),
                    ],
                )
            }
            Input::Frame(Ok(ClientFrame::Publish { id, .. })) => {
                let ack = BrokerFrame::ack_error(AckKind::Publish, Reason::Unsupported, id);
                heard(vm, session, vec![Effect::Send(ack)])
            }
            Input::Frame(Ok(ClientFrame::Subscribe { .. })) => {
                let ack = BrokerFrame::ack_error(AckKind::Subscribe, Reason::Unsupported, None);
                heard(vm, session, vec![Effect::Send(ack)])
            }
            Input::Frame(Ok(ClientFrame::Unsubscribe { .. })) => {
                let ack = BrokerFrame::ack_error(AckKind::Unsubscribe, Reason::Unsupported, None);
                heard(vm, session, vec![Effect::Send(ack)])
            }
            // Nothing is delivered yet, so there is nothing to acknowledge.
            Input::Frame(Ok(ClientFrame::Ack { .. })) => heard(vm, session, vec![]),
            Input::Frame(Err(reason)) => close(
                vm,
                session,
                reason,
                vec![
                    Effect::Send(BrokerFrame::Error { reason }),
                    Effect::Send(BrokerFrame::Bye { reason }),
                ],
            ),
            Input::Tick => {
                if now_ms >= last_heard_ms + self.config.heartbeat_timeout_ms {
                    let reason = Reason::HeartbeatTimeout;
                    close(
                        vm,
                        session,
                        reason,
                        vec![Effect::Send(BrokerFrame::Bye { reason })],
                    )
                } else {
                    (
                        State::Open {
                            vm,
                            session,
                            last_heard_ms,
                        },
                        vec![],
                    )
                }
            }
            Input::PeerGone(reason) => close(vm, session, reason, vec![]),
            Input::Shutdown => {
                let reason = Reason::Shutdown;
                close(
                    vm,
                    session,
                    reason,
                    vec![Effect::Send(BrokerFrame::Bye { reason })],
                )
            }
            // Lines end with the handshake; the server no longer reads them.
            Input::Line(_) | Input::LineTooLong => (
                State::Open {
                    vm,
                    session,
                    last_heard_ms,
                },
                vec![],
            ),
        }
    }
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
#[path = "session_tests.rs"]
mod tests;
