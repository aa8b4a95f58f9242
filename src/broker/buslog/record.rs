//! The bus log's record format and file naming: one [`LogRecord`] per line, the limits
//! and [`Rotation`] that shape the files, rotated generations' names, what a publisher
//! hands the writer ([`Append`]) and what it hands back ([`Committed`]), and reading a
//! file's records. The writer, recovery and the log's front (`mod.rs`) all build on it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::broker::wire::frame::{self, BrokerFrame};
use crate::broker::wire::reason::Reason;

/// Publisher name of host publishes (`from` is `host`, the file `host.log`).
pub use crate::broker::wire::hello::HOST;
/// Most publishes committed by one sync.
pub const MAX_BATCH: usize = 1024;
/// Publishes waiting for the writer; senders wait beyond this (back-pressure
/// on the publishing session only).
pub const QUEUE_CAPACITY: usize = 4096;
/// A bus log file rotates once it holds this many bytes (64 MiB).
pub const DEFAULT_ROTATE_BYTES: u64 = 64 * 1024 * 1024;
/// Rotated files kept per log (`X.log.1` .. `X.log.4`).
pub const DEFAULT_ROTATE_KEEP: u32 = 4;

/// When and how far bus log files rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate a file once its size reaches this (at least 1).
    pub max_bytes: u64,
    /// Rotated generations kept (at least 1).
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: DEFAULT_ROTATE_BYTES,
            keep: DEFAULT_ROTATE_KEEP,
        }
    }
}

/// `X.log.<n>`: generation `n` of the live file `X.log` (1 is the newest).
pub fn rotated_path(live: &Path, n: u32) -> PathBuf {
    let mut s = live.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// A live log and its rotated generations that exist, oldest first, the
/// live file last (whether or not it exists).
pub fn generations(live: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..)
        .map(|n| rotated_path(live, n))
        .take_while(|p| p.exists())
        .collect();
    out.reverse();
    out.push(live.to_owned());
    out
}

/// One line of a bus log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub seq: u64,
    /// Publisher: a VM name, or `host`.
    pub vm: String,
    pub topic: String,
    pub ts_ms: u64,
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

impl LogRecord {
    /// `vm:<name>` or `host`, as in a `message` frame's `from`.
    pub fn from(&self) -> String {
        if self.vm == HOST {
            HOST.to_owned()
        } else {
            format!("vm:{}", self.vm)
        }
    }

    /// The `message` frame every subscriber of this record receives.
    pub fn message_frame(&self) -> Arc<[u8]> {
        frame::encode(&BrokerFrame::Message {
            seq: self.seq,
            topic: self.topic.clone(),
            from: self.from(),
            ts_ms: self.ts_ms,
            payload: self.payload.clone(),
        })
        .into()
    }
}

/// Called once per publish with its sequence number, or why it failed.
pub type Done = Box<dyn FnOnce(Result<u64, Reason>) + Send>;

/// A publish waiting to be made durable.
pub struct Append {
    /// `None` for the host.
    pub vm: Option<String>,
    pub topic: String,
    pub payload: Value,
    pub id: Option<Value>,
    pub done: Done,
}

/// A committed record, handed to the hub for delivery. The hub encodes its
/// `message` frame ([`LogRecord::message_frame`]) only when the topic has a
/// subscriber: a record nobody receives costs the writer no second
/// serialization.
pub type Committed = LogRecord;

/// Read every valid record of a bus log file (bad lines skipped).
pub fn read_records(path: &Path) -> io::Result<Vec<LogRecord>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}
