//! The session machine's vocabulary: its limits and policy ([`SessionConfig`]), what the
//! server feeds it ([`Input`]), what it asks for ([`Effect`]), what it records
//! ([`Record`], [`Action`]), and its states ([`State`], an [`Open`] session). The
//! machine itself is `mod.rs`. Pure.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::broker::token::TokenLookup;
use crate::broker::wire::frame::{BrokerFrame, ClientFrame};
use crate::broker::wire::hello::Reply;
use crate::broker::wire::reason::Reason;

/// Default time a client has to send its hello.
pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 5_000;
/// How often clients are asked to heartbeat (the agent does so).
pub const HEARTBEAT_INTERVAL_MS: u64 = 5_000;
/// Default silence after which the broker closes a session (3 intervals).
pub const DEFAULT_HEARTBEAT_TIMEOUT_MS: u64 = 3 * HEARTBEAT_INTERVAL_MS;
/// Default number of messages a session may hold delivered but not acked.
pub const DEFAULT_UNACKED_WINDOW: u32 = 128;
/// The name host sessions are recorded under (a reserved VM name, as in the bus log).
pub use crate::broker::wire::hello::HOST;

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
    /// The guest's boot marks from a granted hello (stage, guest uptime ms);
    /// recorded right after its `Granted`.
    Boot {
        vm: String,
        marks: Vec<(String, u64)>,
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
    pub(super) fn new(client: Client, vm: String, session: String, now_ms: u64) -> Open {
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
