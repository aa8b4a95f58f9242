//! The stream extension's wire format (capabilities `exec-v1` / `stream-v1`,
//! docs/BUS.md section 11), pure: stream frames, the control messages they
//! carry, the stream hello and the refusal words. No sockets here: the broker
//! splices streams (`stream/mod.rs`), the agent and the CLI read and write
//! them with `stream/blocking.rs`.
//!
//! ```text
//! frame := len:u32 (big-endian, counts the channel byte and the payload, 1..=65537)
//!          channel:u8 (0 control JSON, 1 host->guest data, 2 stdout, 3 stderr)
//!          payload
//! ```
//! An empty payload on channel 1 is the end of the host's data (stdin EOF).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The capability an agent announces on its bus hello when it serves streams.
pub const CAP_EXEC_V1: &str = "exec-v1";
/// The capability of a stream connection's hello (with `stream=<id>`).
pub const CAP_STREAM_V1: &str = "stream-v1";
/// Largest payload of one stream frame.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Largest `len` field (the channel byte plus the largest payload).
pub const MAX_LEN: u32 = MAX_PAYLOAD as u32 + 1;
/// Length of a stream id (hex characters).
pub const STREAM_ID_LEN: usize = 32;

/// Which flow a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// One JSON object ([`Control`]).
    Control,
    /// Host -> guest bytes (stdin, or a copy's data into the guest).
    Input,
    /// Guest -> host bytes (stdout, or a copy's data out of the guest).
    Stdout,
    Stderr,
}

impl Channel {
    pub fn byte(self) -> u8 {
        match self {
            Channel::Control => 0,
            Channel::Input => 1,
            Channel::Stdout => 2,
            Channel::Stderr => 3,
        }
    }

    pub fn from_byte(b: u8) -> Option<Channel> {
        match b {
            0 => Some(Channel::Control),
            1 => Some(Channel::Input),
            2 => Some(Channel::Stdout),
            3 => Some(Channel::Stderr),
            _ => None,
        }
    }
}

/// Why a stream frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("stream frame length 0")]
    Empty,
    #[error("stream frame length {0} above {MAX_LEN}")]
    TooLarge(u32),
    #[error("unknown stream channel {0}")]
    BadChannel(u8),
}

/// The header of a frame carrying `payload_len` bytes on `channel`.
pub fn header(channel: Channel, payload_len: usize) -> [u8; 5] {
    debug_assert!(payload_len <= MAX_PAYLOAD);
    let len = (payload_len as u32 + 1).to_be_bytes();
    [len[0], len[1], len[2], len[3], channel.byte()]
}

/// One whole frame.
pub fn encode(channel: Channel, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.extend_from_slice(&header(channel, payload.len()));
    out.extend_from_slice(payload);
    out
}

/// A control frame.
pub fn encode_control(msg: &Control) -> Vec<u8> {
    encode(
        Channel::Control,
        &serde_json::to_vec(msg).unwrap_or_default(),
    )
}

/// Check a header: the channel and the payload length, before reading it.
pub fn check_header(h: [u8; 5]) -> Result<(Channel, usize), FrameError> {
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let channel = Channel::from_byte(h[4]).ok_or(FrameError::BadChannel(h[4]))?;
    Ok((channel, len as usize - 1))
}

/// What a copy entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One file, directory or symlink of a copy. `path` is relative to the
/// copy's root, `/`-separated, never absolute and without `..`; the root
/// itself is `""`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: EntryKind,
    pub path: String,
    pub mode: u32,
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Control messages, both directions (`type` tagged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// host: run `argv` (no shell). `tty`: in a PTY of `rows` x `cols`.
    Exec {
        argv: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        #[serde(default)]
        tty: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cols: Option<u16>,
        /// Kill the process group after this long (exit 124 as `timeout(1)`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// host: copy into the guest at `path`; entries follow.
    Put { path: String },
    /// host: copy `path` out of the guest; the guest sends the entries.
    Get { path: String, recursive: bool },
    /// host: deliver a signal (`INT`, `TERM`, `HUP`, `QUIT`, `KILL`) to the
    /// command's process group.
    Signal { signal: String },
    /// host: the terminal's new size (tty execs).
    Resize { rows: u16, cols: u16 },
    /// guest: the command runs.
    Started { pid: u32 },
    /// guest: the command ended (`code` as a shell reports it: 128+N for signal N).
    Exit {
        code: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    /// Either side: the request failed; `code` is the exit code to report.
    Error { code: i32, message: String },
    /// A copy's entry; a file's bytes follow on the data channel.
    Entry(Entry),
    /// The end of a file's bytes, with their sha256 (hex).
    EntryEnd { sha256: String },
    /// The sender of a copy has sent every entry (`bytes`: file bytes).
    Done { bytes: u64 },
    /// The size of what a `get` will send (for progress), before the entries.
    Total { bytes: u64 },
}

impl Control {
    pub fn parse(payload: &[u8]) -> Option<Control> {
        serde_json::from_slice(payload).ok()
    }

    /// The request word recorded in events (`exec`, `shell`, `cp_in`, `cp_out`).
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            Control::Exec { tty: true, .. } => Some("shell"),
            Control::Exec { .. } => Some("exec"),
            Control::Put { .. } => Some("cp_in"),
            Control::Get { .. } => Some("cp_out"),
            _ => None,
        }
    }
}

/// Why the broker refused a stream (host socket or stream hello), as the
/// word after `error: `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request line is not `stream {"vm":...}`.
    BadRequest,
    /// No such VM (no token file).
    UnknownVm,
    /// The VM's agent holds no bus session now.
    NotConnected,
    /// The VM's agent does not announce `exec-v1`.
    Unsupported,
    /// The agent did not connect its stream in time.
    Timeout,
    /// A stream hello named no pending stream of that VM, or a bad token.
    UnknownStream,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad_request",
            Refusal::UnknownVm => "unknown_vm",
            Refusal::NotConnected => "not_connected",
            Refusal::Unsupported => "exec_unsupported",
            Refusal::Timeout => "stream_timeout",
            Refusal::UnknownStream => "unknown_stream",
        }
    }

    pub fn from_word(word: &str) -> Option<Refusal> {
        [
            Refusal::BadRequest,
            Refusal::UnknownVm,
            Refusal::NotConnected,
            Refusal::Unsupported,
            Refusal::Timeout,
            Refusal::UnknownStream,
        ]
        .into_iter()
        .find(|r| r.as_str() == word)
    }
}

/// The host socket's request line: `stream {"vm":"web","user":"alice"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRequest {
    pub vm: String,
    #[serde(default)]
    pub user: String,
}

/// The request word of the host socket.
pub const STREAM_REQUEST: &str = "stream";

impl StreamRequest {
    pub fn to_line(&self) -> String {
        format!(
            "{STREAM_REQUEST} {}",
            serde_json::to_string(self).unwrap_or_default()
        )
    }
}

/// The reply that opens a stream: `ok stream=<id>`.
pub fn ok_line(id: &str) -> String {
    format!("ok stream={id}")
}

/// Parse a stream reply: the id, or the refusal (unknown words are `Err(None)`).
pub fn parse_reply(line: &str) -> Result<String, Option<Refusal>> {
    let line = line.trim_end_matches(['\n', '\r']);
    if let Some(id) = line.strip_prefix("ok stream=")
        && !id.is_empty()
    {
        return Ok(id.to_owned());
    }
    Err(line
        .strip_prefix("error:")
        .and_then(|w| Refusal::from_word(w.trim())))
}

/// The broker's frame to an agent's bus session asking it to connect a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOpen {
    #[serde(rename = "type")]
    pub kind: String,
    pub stream: String,
}

impl StreamOpen {
    pub fn new(stream: &str) -> StreamOpen {
        StreamOpen {
            kind: "stream_open".into(),
            stream: stream.into(),
        }
    }
}

/// The `stream=<id>` word of a hello line, if it has one.
pub fn hello_stream(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    text.split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("stream="))
        .map(str::to_owned)
}

/// Watches the frames going one way through a splice without holding them:
/// it keeps only the control messages (small) and counts the data bytes.
#[derive(Debug, Default)]
pub struct Scanner {
    header: Vec<u8>,
    /// Bytes of the current frame's payload still to come, and its channel.
    remaining: usize,
    channel: Option<Channel>,
    control: Vec<u8>,
    /// Data payload bytes seen (channels 1-3).
    pub data_bytes: u64,
    /// Control messages seen, in order (parsed).
    pub controls: Vec<Control>,
    /// The stream is not well framed (the splice goes on; this only watches).
    pub broken: bool,
}

impl Scanner {
    pub fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.broken {
            if self.channel.is_none() {
                let want = 5 - self.header.len();
                let take = want.min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.header.len() < 5 {
                    return;
                }
                let h = [
                    self.header[0],
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ];
                self.header.clear();
                match check_header(h) {
                    Ok((channel, len)) => {
                        self.channel = Some(channel);
                        self.remaining = len;
                    }
                    Err(_) => {
                        self.broken = true;
                        return;
                    }
                }
            }
            let take = self.remaining.min(bytes.len());
            let channel = self.channel.unwrap_or(Channel::Control);
            if channel == Channel::Control {
                self.control.extend_from_slice(&bytes[..take]);
            } else {
                self.data_bytes += take as u64;
            }
            bytes = &bytes[take..];
            self.remaining -= take;
            if self.remaining == 0 {
                if channel == Channel::Control {
                    if let Some(c) = Control::parse(&self.control) {
                        // Only the first few matter (request, exit): keep it small.
                        if self.controls.len() < 8 || matches!(c, Control::Exit { .. }) {
                            self.controls.push(c);
                        }
                    }
                    self.control.clear();
                }
                self.channel = None;
            }
        }
    }

    /// The exit code the guest reported, if it did.
    pub fn exit_code(&self) -> Option<i32> {
        self.controls.iter().rev().find_map(|c| match c {
            Control::Exit { code, .. } | Control::Error { code, .. } => Some(*code),
            _ => None,
        })
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
