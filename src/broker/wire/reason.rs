//! Reason words: the closed vocabulary of why the broker refused, timed out or
//! closed something. They appear on the wire (`error: <reason>`, `error`/`bye`
//! frames, ack `reason`), in events.jsonl and in broker.log, and are documented
//! in docs/BUS.md. This module owns the words only, not when they are used.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a hello was refused, a frame rejected or a session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The hello line does not follow the grammar (or is not UTF-8).
    MalformedHello,
    /// No `<state_root>/vms/<vm>/token` exists for the name given.
    UnknownVm,
    /// A token was given and does not match the VM's secret.
    BadToken,
    /// No token was given and this broker does not accept token-less hellos.
    MissingToken,
    /// No complete hello line arrived within the hello timeout.
    HelloTimeout,
    /// The hello line exceeded 512 bytes without a newline.
    LineTooLong,
    /// The broker already serves its maximum number of connections.
    TooManyConnections,
    /// The broker could not read the VM's token file (see broker.log).
    InternalError,
    /// The handshake-only guest was recorded; the broker closes the connection.
    HandshakeOnly,
    /// A framed session sent nothing for the heartbeat timeout.
    HeartbeatTimeout,
    /// A frame announced length 0.
    EmptyFrame,
    /// A frame announced a length above the frame limit.
    FrameTooLarge,
    /// A frame body is not a UTF-8 JSON object.
    InvalidJson,
    /// A frame's `type` is not one the protocol knows.
    UnknownType,
    /// A known frame type lacks a field or has one of the wrong type.
    BadFrame,
    /// The frame type is part of bus v1 but this broker does not serve it yet.
    Unsupported,
    /// The broker is stopping (SIGTERM/SIGINT).
    Shutdown,
    /// The peer closed the connection.
    PeerClosed,
    /// Reading from or writing to the peer failed (or a write stalled).
    IoError,
    /// The host socket got a request line it does not know.
    UnknownRequest,
    /// A subscriber's outbound queue stayed full through every retry: the
    /// broker says `bye slow_consumer` and disconnects it.
    SlowConsumer,
    /// A subscriber's outbound queue is full (a retry follows; events only).
    QueueFull,
    /// A topic is empty, longer than 256 bytes or holds control characters.
    InvalidTopic,
    /// A session subscribed to `vm:<other>`: only that VM's sessions may.
    ForbiddenTopic,
    /// A session asked for more than 64 subscriptions.
    TooManySubscriptions,
    /// The broker could not durably append a publish (see broker.log); it was not acknowledged.
    StorageError,
}

impl Reason {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedHello => "malformed_hello",
            Reason::UnknownVm => "unknown_vm",
            Reason::BadToken => "bad_token",
            Reason::MissingToken => "missing_token",
            Reason::HelloTimeout => "hello_timeout",
            Reason::LineTooLong => "line_too_long",
            Reason::TooManyConnections => "too_many_connections",
            Reason::InternalError => "internal_error",
            Reason::HandshakeOnly => "handshake_only",
            Reason::HeartbeatTimeout => "heartbeat_timeout",
            Reason::EmptyFrame => "empty_frame",
            Reason::FrameTooLarge => "frame_too_large",
            Reason::InvalidJson => "invalid_json",
            Reason::UnknownType => "unknown_type",
            Reason::BadFrame => "bad_frame",
            Reason::Unsupported => "unsupported",
            Reason::Shutdown => "shutdown",
            Reason::PeerClosed => "peer_closed",
            Reason::IoError => "io_error",
            Reason::UnknownRequest => "unknown_request",
            Reason::SlowConsumer => "slow_consumer",
            Reason::QueueFull => "queue_full",
            Reason::InvalidTopic => "invalid_topic",
            Reason::ForbiddenTopic => "forbidden_topic",
            Reason::TooManySubscriptions => "too_many_subscriptions",
            Reason::StorageError => "storage_error",
        }
    }

    /// Every reason, for docs and tests.
    pub const ALL: [Reason; 26] = [
        Reason::MalformedHello,
        Reason::UnknownVm,
        Reason::BadToken,
        Reason::MissingToken,
        Reason::HelloTimeout,
        Reason::LineTooLong,
        Reason::TooManyConnections,
        Reason::InternalError,
        Reason::HandshakeOnly,
        Reason::HeartbeatTimeout,
        Reason::EmptyFrame,
        Reason::FrameTooLarge,
        Reason::InvalidJson,
        Reason::UnknownType,
        Reason::BadFrame,
        Reason::Unsupported,
        Reason::Shutdown,
        Reason::PeerClosed,
        Reason::IoError,
        Reason::UnknownRequest,
        Reason::SlowConsumer,
        Reason::QueueFull,
        Reason::InvalidTopic,
        Reason::ForbiddenTopic,
        Reason::TooManySubscriptions,
        Reason::StorageError,
    ];

    /// Parse a wire word (used by clients such as the agent).
    pub fn from_word(word: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == word)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_and_as_str_agree_and_round_trip() {
        for r in Reason::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(Reason::from_word(r.as_str()), Some(r));
        }
        assert_eq!(Reason::from_word("nope"), None);
    }
}
