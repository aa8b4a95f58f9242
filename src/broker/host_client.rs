//! The host side of the broker's Unix socket for the bus: `publish` one
//! message and wait for its durable ack. Synchronous (std only), used by
//! `castra bus publish` and tests. The request format is in `server`
//! (`publish {"topic":T,"payload":ANY,"id"?:ANY}`, one line each way).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::frame::{AckStatus, BrokerFrame};
use super::reason::Reason;

/// How long to wait for the ack (the broker itself gives up after 30 s).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(35);

/// Why a host publish was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "the broker is not running (nothing answers on {socket}); run `castra apply` to start it"
    )]
    NotRunning { socket: PathBuf },
    #[error("payload is not valid JSON ({0}); quote text as JSON ('\"hello\"') or pass --text")]
    InvalidJson(String),
    #[error("message is {size} bytes; the bus takes at most {limit} bytes per message")]
    TooLarge { size: usize, limit: usize },
    #[error("the broker refused the publish: {reason}{}", hint(*reason))]
    Refused { reason: Reason },
    #[error(
        "lost the broker on {socket} before the ack ({why}); the message may or may not be logged: check `castra bus tail`"
    )]
    NoAck { socket: PathBuf, why: String },
}

fn hint(reason: Reason) -> &'static str {
    match reason {
        Reason::InvalidTopic => " (a topic is 1..256 bytes without control characters)",
        Reason::StorageError => {
            " (the bus log could not be synced; see <state_root>/broker/broker.log)"
        }
        Reason::FrameTooLarge => " (the message exceeds the broker's frame limit)",
        _ => "",
    }
}

/// Publish `payload` on `topic` through the broker socket; `Ok(seq)` once
/// the broker has made it durable.
pub fn publish(
    socket: &Path,
    topic: &str,
    payload: Value,
    id: Option<Value>,
    limit: usize,
) -> Result<u64, PublishError> {
    let mut request = json!({ "topic": topic, "payload": payload });
    if let Some(id) = id {
        request["id"] = id;
    }
    let body = request.to_string();
    if body.len() > limit {
        return Err(PublishError::TooLarge {
            size: body.len(),
            limit,
        });
    }
    let mut stream = UnixStream::connect(socket).map_err(|_| PublishError::NotRunning {
        socket: socket.to_path_buf(),
    })?;
    let no_ack = |why: String| PublishError::NoAck {
        socket: socket.to_path_buf(),
        why,
    };
    stream
        .set_read_timeout(Some(ACK_TIMEOUT))
        .map_err(|e| no_ack(e.to_string()))?;
    stream
        .write_all(format!("publish {body}\n").as_bytes())
        .map_err(|e| no_ack(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| no_ack(e.to_string()))?;
    if line.is_empty() {
        return Err(no_ack("the broker closed the connection".into()));
    }
    match BrokerFrame::parse(line.trim().as_bytes()) {
        Ok(BrokerFrame::Ack {
            status: AckStatus::Ok,
            seq: Some(seq),
            ..
        }) => Ok(seq),
        Ok(BrokerFrame::Ack {
            reason: Some(reason),
            ..
        }) => Err(PublishError::Refused { reason }),
        Ok(_) | Err(_) => Err(no_ack(format!("unexpected reply {:?}", line.trim()))),
    }
}
