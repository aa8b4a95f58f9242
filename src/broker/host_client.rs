//! The host side of the broker's Unix socket for the bus. Synchronous (std
//! only), used by `castra bus publish` / `castra bus subscribe` and tests:
//! [`publish`] sends one message and waits for its durable ack (one
//! request line, one reply line); [`HostSession`] opens a framed bus session
//! (`session` request, then protocol v1 frames as a guest speaks them) to
//! subscribe, receive and ack. The request formats are in `host_socket`.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::frame_reader::FrameReader;
use super::host_socket::SESSION_REQUEST;
use super::wire::frame::{self, AckKind, AckStatus, BrokerFrame, ClientFrame};
use super::wire::reason::Reason;

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
    #[error("the broker refused the publish: {reason}{}{detail}", hint(*reason))]
    Refused { reason: Reason, detail: String },
    #[error(
        "lost the broker on {socket} before the ack ({why}); the message may or may not be logged: check `castra bus tail`"
    )]
    NoAck { socket: PathBuf, why: String },
}

fn hint(reason: Reason) -> &'static str {
    match reason {
        Reason::InvalidTopic => " (a topic is 1..256 bytes without control characters)",
        Reason::StorageError => {
            " (the bus log could not be written or synced; see <state_root>/broker/broker.log)"
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
        }) => Err(PublishError::Refused {
            reason,
            detail: refusal_detail(reason, socket),
        }),
        Ok(_) | Err(_) => Err(no_ack(format!("unexpected reply {:?}", line.trim()))),
    }
}

/// For `storage_error`: how much space the bus log's file system has left
/// (the socket is `<state_root>/broker/broker.sock`, the log `<state_root>/logs/bus`).
fn refusal_detail(reason: Reason, socket: &Path) -> String {
    if reason != Reason::StorageError {
        return String::new();
    }
    let Some(root) = socket.parent().and_then(Path::parent) else {
        return String::new();
    };
    let dir = crate::layout::StateLayout::new(root).bus_log_dir();
    match super::buslog::faults::free_bytes(&dir) {
        Ok(free) if free < super::buslog::faults::SPACE_RESERVE * 2 => format!(
            "; the file system of {} is full ({free} bytes free): free space there and \
             publishing resumes",
            dir.display()
        ),
        Ok(_) | Err(_) => String::new(),
    }
}

/// How long the broker has to grant a host session.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a host bus session could not be opened or went on no longer.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(
        "the broker is not running (nothing answers on {socket}); run `castra apply` to start it"
    )]
    NotRunning { socket: PathBuf },
    #[error("the broker on {socket} refused a host session: {reply:?}")]
    Refused { socket: PathBuf, reply: String },
    #[error("subscribing to {topic:?} was refused: {reason}{}", hint(*reason))]
    SubscribeRefused { topic: String, reason: Reason },
    #[error("the broker ended the session: {reason}{}", bye_hint(*reason))]
    Ended { reason: Reason },
    #[error("lost the broker on {socket} ({why}); run `castra status` to see whether it runs")]
    Lost { socket: PathBuf, why: String },
}

fn bye_hint(reason: Reason) -> &'static str {
    match reason {
        Reason::SlowConsumer => {
            " (this consumer did not read and ack fast enough; messages it missed are in `castra bus tail`)"
        }
        Reason::Shutdown => " (the broker stopped; run `castra apply` and subscribe again)",
        Reason::HeartbeatTimeout => " (no frame from this consumer for the heartbeat timeout)",
        _ => "",
    }
}

/// An open host bus session on the broker's Unix socket (blocking).
pub struct HostSession {
    socket: PathBuf,
    stream: UnixStream,
    frames: FrameReader,
    /// Frames read while waiting for something else (subscribe acks).
    stash: VecDeque<BrokerFrame>,
    /// The session id the broker granted.
    pub session: String,
}

impl HostSession {
    /// Ask the broker for a session; `Ok` once it answered `ok session=`.
    pub fn open(socket: &Path) -> Result<HostSession, SessionError> {
        let mut stream = UnixStream::connect(socket).map_err(|_| SessionError::NotRunning {
            socket: socket.to_path_buf(),
        })?;
        let lost = |e: io::Error| SessionError::Lost {
            socket: socket.to_path_buf(),
            why: e.to_string(),
        };
        stream
            .write_all(format!("{SESSION_REQUEST}\n").as_bytes())
            .map_err(lost)?;
        stream
            .set_read_timeout(Some(SESSION_TIMEOUT))
            .map_err(lost)?;
        // Read the reply line byte by byte: frames may follow it at once.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < super::wire::hello::MAX_HELLO_LINE {
            match stream.read(&mut byte) {
                Ok(0) => break,
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => line.push(byte[0]),
                Err(e) => return Err(lost(e)),
            }
        }
        let reply = String::from_utf8_lossy(&line).trim().to_owned();
        let Some(session) = reply.strip_prefix("ok session=") else {
            return Err(SessionError::Refused {
                socket: socket.to_path_buf(),
                reply,
            });
        };
        Ok(HostSession {
            socket: socket.to_path_buf(),
            session: session.to_owned(),
            stream,
            frames: FrameReader::new(Vec::new()),
            stash: VecDeque::new(),
        })
    }

    /// A handle on the same socket (to shut it down from another thread).
    pub fn try_clone_stream(&self) -> io::Result<UnixStream> {
        self.stream.try_clone()
    }

    fn lost(&self, why: impl ToString) -> SessionError {
        SessionError::Lost {
            socket: self.socket.clone(),
            why: why.to_string(),
        }
    }

    pub fn send(&mut self, f: &ClientFrame) -> Result<(), SessionError> {
        self.stream
            .write_all(&frame::encode(f))
            .map_err(|e| self.lost(e))
    }

    /// Subscribe to each topic and wait for every ack; messages that arrive
    /// meanwhile are kept for [`HostSession::next`].
    pub fn subscribe(&mut self, topics: &[String]) -> Result<(), SessionError> {
        for topic in topics {
            self.send(&ClientFrame::Subscribe {
                topic: topic.clone(),
            })?;
        }
        let deadline = Instant::now() + SESSION_TIMEOUT;
        let mut acked = 0;
        while acked < topics.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left)? {
                None => return Err(self.lost("no subscribe ack within 5 s")),
                Some(BrokerFrame::Ack {
                    ack: AckKind::Subscribe,
                    status,
                    reason,
                    topic,
                    ..
                }) => {
                    if status == AckStatus::Error {
                        return Err(SessionError::SubscribeRefused {
                            // The ack names its topic (older brokers: acks come in order).
                            topic: topic.unwrap_or_else(|| topics[acked].clone()),
                            reason: reason.unwrap_or(Reason::Unsupported),
                        });
                    }
                    acked += 1;
                }
                Some(BrokerFrame::Bye { reason }) => return Err(SessionError::Ended { reason }),
                Some(f) => self.stash.push_back(f),
            }
        }
        Ok(())
    }

    /// The next broker frame, or `None` when `timeout` passed first. A
    /// `bye` is returned as [`SessionError::Ended`], EOF as `Lost`.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<BrokerFrame>, SessionError> {
        let next = match self.stash.pop_front() {
            Some(f) => Some(f),
            None => self.read_frame(timeout)?,
        };
        match next {
            Some(BrokerFrame::Bye { reason }) => Err(SessionError::Ended { reason }),
            other => Ok(other),
        }
    }

    fn read_frame(&mut self, timeout: Duration) -> Result<Option<BrokerFrame>, SessionError> {
        let read = self.frames.next(&mut self.stream, timeout);
        read.map_err(|e| self.lost(e))
    }
}
