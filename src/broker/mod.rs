//! The host broker: guests prove they are up (handshake) and hold framed
//! sessions (heartbeats now, the bus later). Pure wire code and the session
//! state machine live apart from the smol server so the guest agent can
//! share them; see docs/BUS.md for the protocol.

pub mod buslog;
mod conn;
pub mod consumer;
pub mod context;
pub mod control;
pub mod events;
pub mod frame_reader;
pub mod host_client;
pub mod host_socket;
pub mod hosts_poller;
pub mod hub;
mod pending;
pub mod recorder;
pub mod server;
pub mod session;
pub mod stamp;
pub mod state;
pub mod stream;
pub mod token;
pub mod wire;

pub use context::BrokerOptions;
pub use server::{BrokerError, run};
pub use state::{
    BrokerSnapshot, FRESHNESS_WINDOW_MS, GuestBoot, VmEntry, age_ms, reachable, read_snapshot,
};
