//! The broker's wire, with no I/O: the handshake line (`hello.rs`), line framing
//! (`line.rs`), bus frames and their limits (`frame.rs`), the reasons a session ends or a
//! request is refused (`reason.rs`), topic names (`topic.rs`). Shared by the broker, the
//! host's clients and the guest agent; docs/BUS.md is the protocol they implement.

pub mod frame;
pub mod hello;
pub mod line;
pub mod reason;
pub mod request;
pub mod topic;
