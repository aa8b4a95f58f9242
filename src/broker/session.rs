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

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::frame::{AckKind, BrokerFrame, ClientFrame};
use super::hello::{self, Reply};
use super::reason::Reason;
use super::token::{TokenLookup, tokens_match};
use super::topic;

/// Default time a client has to send its hello.
pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 5_000;
/// How often clients are asked to heartbeat (the agent does so).
pub const HEARTBEAT_INTERVAL_MS: u64 = 5_000;
/// Default silence after which the broker closes a session (3 intervals).
pub const DEFAULT_HEARTBEAT_TIMEOUT_MS: u64 = 3 * HEARTBEAT_INTERVAL_MS;
/// Default number of messages a session may hold delivered but not acked.
pub const DEFAULT_UNACKED_WINDOW: u32 = 128;
/// The name host sessions are recorded under (a reserved VM name, as in the bus log).
pub use super::hello::HOST;

/// Timeouts and policy of every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    pub hello_timeout_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub allow_tokenless_handshake: bool,
    /// Deliveries held unacked before delivery pauses (at least 1).
    pub unacked_window: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hello_timeout_ms: DEFAULT_HELLO_TIMEOUT_MS,
            heartbeat_timeout_ms: DEFAULT_HEARTBEAT_TIMEOUT_MS,
            allow_tokenless_handshake: false,
            unacked_window: DEFAULT_UNACKED_WINDOW,
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
    /// A publish of this session was durably appended (`Ok(seq)`) or not.
    Committed {
        id: Option<Value>,
        result: Result<u64, Reason>,
    },
    /// The hub cut this session off (`slow_consumer`).
    Evict(Reason),
    /// A host tool asked for a session on the host socket (never a guest).
    HostSession,
    /// The hub's next message for this session (fed only while
    /// [`Session::can_deliver`]); `frame` is the encoded `message` frame.
    Deliver { seq: u64, frame: Arc<[u8]> },
}

/// What the broker did about a struggling session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Keep the message and try again shortly.
    Retry,
    /// Close the session.
    Disconnect,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Disconnect => "disconnect",
        }
    }
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
    /// A session's subscription count changed (0 when it closed).
    Subscriptions {
        vm: String,
        session: String,
        count: u32,
    },
    /// A publish was durably appended (`vm` is `None` for the host).
    Published { vm: Option<String>, seq: u64 },
    /// A back-pressure or liveness decision (`attempt` counts retries).
    Decision {
        vm: String,
        session: String,
        reason: Reason,
        action: Action,
        attempt: u32,
    },
}

/// What the server must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Reply(Reply),
    Send(BrokerFrame),
    Record(Record),
    /// Append durably, deliver, then feed back [`Input::Committed`].
    Publish {
        topic: String,
        payload: Value,
        id: Option<Value>,
    },
    /// Tell the hub: deliver `topic` to this session from now on.
    Subscribe(String),
    /// Tell the hub: stop delivering `topic` to this session.
    Unsubscribe(String),
    /// Send an encoded `message` frame (it is now unacked).
    Deliver {
        seq: u64,
        frame: Arc<[u8]>,
    },
    Close(Reason),
}

/// Who holds a bus session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// A guest that proved its VM's token.
    Guest,
    /// A host tool on the owner-only Unix socket.
    Host,
}

/// A granted bus session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub client: Client,
    /// The VM name, or [`HOST`] for a host session.
    pub vm: String,
    pub session: String,
    pub last_heard_ms: u64,
    pub subscriptions: BTreeSet<String>,
    /// Highest `seq` the consumer acknowledged.
    pub acked_seq: Option<u64>,
    /// Delivered `seq`s not acked yet, oldest first.
    pub unacked: VecDeque<u64>,
}

impl Open {
    /// A session just granted: nothing subscribed, delivered or acked.
    fn new(client: Client, vm: String, session: String, now_ms: u64) -> Open {
        Open {
            client,
            vm,
            session,
            last_heard_ms: now_ms,
            subscriptions: BTreeSet::new(),
            acked_seq: None,
            unacked: VecDeque::new(),
        }
    }

    /// The publisher recorded for this session's publishes (`None`: host).
    pub fn publisher(&self) -> Option<&str> {
        match self.client {
            Client::Guest => Some(&self.vm),
            Client::Host => None,
        }
    }
}

/// Where a connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    AwaitingHello { deadline_ms: u64 },
    Open(Open),
    HandshakeOnly { vm: String },
    Denied { reason: Reason },
    Closed { reason: Reason },
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
                State::Open(Open::new(Client::Guest, hello.vm, self.id.clone(), now_ms)),
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

    /// A host tool's session: trusted by the socket's permissions.
    fn on_host(&self, now_ms: u64) -> (State, Vec<Effect>) {
        let record = Record::Granted {
            vm: HOST.to_owned(),
            session: Some(self.id.clone()),
            capabilities: vec![super::hello::CAP_BUS_V1.to_owned()],
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
                Err(reason) => effects.push(Effect::Send(BrokerFrame::ack_error(
                    AckKind::Subscribe,
                    reason,
                    None,
                ))),
                Ok(()) => {
                    if open.subscriptions.insert(topic.clone()) {
                        effects.push(Effect::Subscribe(topic));
                        effects.push(subscriptions(open));
                    }
                    effects.push(Effect::Send(BrokerFrame::ack_ok(AckKind::Subscribe)));
                }
            }
        }
        ClientFrame::Unsubscribe { topic } => match topic::check(&topic) {
            Err(reason) => effects.push(Effect::Send(BrokerFrame::ack_error(
                AckKind::Unsubscribe,
                reason,
                None,
            ))),
            Ok(()) => {
                // Unsubscribing from a topic not subscribed is a no-op, acked ok.
                if open.subscriptions.remove(&topic) {
                    effects.push(Effect::Unsubscribe(topic));
                    effects.push(subscriptions(open));
                }
                effects.push(Effect::Send(BrokerFrame::ack_ok(AckKind::Unsubscribe)));
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
#[path = "session_tests.rs"]
mod tests;
