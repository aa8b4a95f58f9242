//! A small synchronous QMP client: one connection to one QEMU's control socket.
//!
//! The pure half ([`parse_line`]) turns one line of QMP into a [`QmpMessage`]
//! (greeting, return, error or event); the socket half ([`Qmp`]) frames lines
//! over a `UnixStream` with a deadline on every read and write, so no call can
//! hang on a wedged or frozen QEMU. Commands carry an `id`; events that arrive
//! while a command waits for its return are buffered and handed out by
//! [`Qmp::next_event`], never dropped. This module knows nothing of VMs or
//! shutdown policy (see `process.rs`). Protocol: QEMU's `docs/interop/qmp-spec`.

use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest QMP line accepted; QEMU's replies castra asks for are far smaller.
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("qmp {path}: cannot connect: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("qmp {path}: no answer within {timeout:?} while waiting for {waiting_for}")]
    Timeout {
        path: PathBuf,
        timeout: Duration,
        waiting_for: String,
    },
    #[error("qmp {path}: qemu closed the connection while waiting for {waiting_for}")]
    Closed { path: PathBuf, waiting_for: String },
    #[error("qmp {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("qmp: malformed message ({reason}): {line}")]
    Malformed { line: String, reason: String },
    #[error("qmp {path}: expected {expected}, got: {line}")]
    Unexpected {
        path: PathBuf,
        expected: String,
        line: String,
    },
    #[error("qmp command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// The server's greeting: `{"QMP": {"version": ..., "capabilities": [...]}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Greeting {
    /// `(major, minor, micro)` of QEMU.
    pub version: (u64, u64, u64),
    pub package: String,
    pub capabilities: Vec<String>,
}

/// An asynchronous event (`SHUTDOWN`, `POWERDOWN`, `STOP`, ...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QmpEvent {
    pub name: String,
    /// `data`, or `null` when the event has none.
    pub data: Value,
    /// `(seconds, microseconds)` since the epoch, as QEMU stamped it.
    pub timestamp: Option<(i64, i64)>,
}

/// One line of QMP, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpMessage {
    Greeting(Greeting),
    Return {
        id: Option<Value>,
        value: Value,
    },
    Error {
        id: Option<Value>,
        class: String,
        desc: String,
    },
    Event(QmpEvent),
}

/// What `query-status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmStatus {
    pub running: bool,
    /// QEMU's run state: `running`, `paused`, `shutdown`, `prelaunch`, ...
    pub status: String,
}

/// Parses one QMP line (without its newline).
pub fn parse_line(line: &str) -> Result<QmpMessage, QmpError> {
    let malformed = |reason: &str| QmpError::Malformed {
        line: truncate(line),
        reason: reason.to_string(),
    };
    let value: Value = serde_json::from_str(line).map_err(|e| malformed(&e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| malformed("not an object"))?;
    let id = obj.get("id").cloned();

    if let Some(qmp) = obj.get("QMP") {
        return parse_greeting(qmp).ok_or_else(|| malformed("bad greeting"));
    }
    if let Some(ret) = obj.get("return") {
        return Ok(QmpMessage::Return {
            id,
            value: ret.clone(),
        });
    }
    if let Some(err) = obj.get("error") {
        let field = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_string);
        return Ok(QmpMessage::Error {
            id,
            class: field("class").ok_or_else(|| malformed("error without class"))?,
            desc: field("desc").unwrap_or_default(),
        });
    }
    if let Some(name) = obj.get("event").and_then(Value::as_str) {
        let timestamp = obj.get("timestamp").and_then(|t| {
            Some((
                t.get("seconds")?.as_i64()?,
                t.get("microseconds")?.as_i64()?,
            ))
        });
        return Ok(QmpMessage::Event(QmpEvent {
            name: name.to_string(),
            data: obj.get("data").cloned().unwrap_or(Value::Null),
            timestamp,
        }));
    }
    Err(malformed("neither greeting, return, error nor event"))
}

fn parse_greeting(qmp: &Value) -> Option<QmpMessage> {
    let version = qmp.get("version")?;
    let q = version.get("qemu")?;
    let num = |k: &str| q.get(k).and_then(Value::as_u64);
    Some(QmpMessage::Greeting(Greeting {
        version: (num("major")?, num("minor")?, num("micro")?),
        package: version
            .get("package")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        capabilities: qmp
            .get("capabilities")?
            .as_array()?
            .iter()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect(),
    }))
}

/// The command line sent for `execute` (with its trailing newline).
pub fn encode_command(command: &str, args: Option<&Value>, id: &str) -> String {
    let mut obj = Map::new();
    obj.insert("execute".into(), json!(command));
    if let Some(args) = args {
        obj.insert("arguments".into(), args.clone());
    }
    obj.insert("id".into(), json!(id));
    let mut line = Value::Object(obj).to_string();
    line.push('\n');
    line
}

fn truncate(line: &str) -> String {
    const MAX: usize = 200;
    match line.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

/// One open QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    stream: UnixStream,
    timeout: Duration,
    /// Bytes read but not yet split into lines.
    buf: Vec<u8>,
    events: VecDeque<QmpEvent>,
    greeting: Greeting,
    next_id: u64,
}

impl Qmp {
    /// Connects, reads the greeting and negotiates capabilities. Every later
    /// command waits at most `timeout` for its answer.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let mut qmp = Qmp {
            path: path.to_path_buf(),
            stream,
            timeout,
            buf: Vec::new(),
            events: VecDeque::new(),
            greeting: Greeting {
                version: (0, 0, 0),
                package: String::new(),
                capabilities: Vec::new(),
            },
            next_id: 0,
        };
        let deadline = Instant::now() + timeout;
        let line = qmp.read_line(deadline, "the greeting")?;
        match parse_line(&line)? {
            QmpMessage::Greeting(g) => qmp.greeting = g,
            _ => {
                return Err(QmpError::Unexpected {
                    path: qmp.path.clone(),
                    expected: "the greeting".into(),
                    line: truncate(&line),
                });
            }
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// Runs one command and returns its `return` value. Events that arrive
    /// first are kept for [`Qmp::next_event`].
    pub fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = format!("castra-{}", self.next_id);
        let deadline = Instant::now() + self.timeout;
        self.write_all(
            encode_command(command, args.as_ref(), &id).as_bytes(),
            deadline,
        )?;
        let waiting_for = format!("the reply to {command}");
        loop {
            let line = self.read_line(deadline, &waiting_for)?;
            match parse_line(&line)? {
                QmpMessage::Event(ev) => self.events.push_back(ev),
                QmpMessage::Return { id: rid, value } if matches_id(&rid, &id) => {
                    return Ok(value);
                }
                QmpMessage::Error {
                    id: rid,
                    class,
                    desc,
                } if matches_id(&rid, &id) => {
                    return Err(QmpError::Command {
                        command: command.to_string(),
                        class,
                        desc,
                    });
                }
                // A late reply to an earlier command that timed out.
                QmpMessage::Return { .. } | QmpMessage::Error { .. } => {}
                QmpMessage::Greeting(_) => {
                    return Err(QmpError::Unexpected {
                        path: self.path.clone(),
                        expected: waiting_for,
                        line: truncate(&line),
                    });
                }
            }
        }
    }

    /// `query-status`.
    pub fn query_status(&mut self) -> Result<VmStatus, QmpError> {
        let v = self.execute("query-status", None)?;
        let bad = || QmpError::Unexpected {
            path: self.path.clone(),
            expected: "a query-status return".into(),
            line: truncate(&v.to_string()),
        };
        Ok(VmStatus {
            running: v.get("running").and_then(Value::as_bool).ok_or_else(bad)?,
            status: v
                .get("status")
                .and_then(Value::as_str)
                .ok_or_else(bad)?
                .to_string(),
        })
    }

    /// `system_powerdown`: presses the ACPI power button. QEMU acknowledges at
    /// once; whether the guest reacts is up to the guest.
    pub fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(|_| ())
    }

    /// The next event: a buffered one at once, else the next to arrive within
    /// `timeout`. `None` on timeout or when the connection is closed or broken.
    pub fn next_event(&mut self, timeout: Duration) -> Option<QmpEvent> {
        if let Some(ev) = self.events.pop_front() {
            return Some(ev);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let line = self.read_line(deadline, "an event").ok()?;
            match parse_line(&line) {
                Ok(QmpMessage::Event(ev)) => return Some(ev),
                Ok(_) | Err(_) => continue,
            }
        }
    }

    fn write_all(&mut self, mut bytes: &[u8], deadline: Instant) -> Result<(), QmpError> {
        while !bytes.is_empty() {
            let left = self.remaining(deadline, "a write")?;
            self.stream
                .set_write_timeout(Some(left))
                .map_err(|e| self.io(e))?;
            match self.stream.write(bytes) {
                Ok(0) => {
                    return Err(QmpError::Closed {
                        path: self.path.clone(),
                        waiting_for: "a write".into(),
                    });
                }
                Ok(n) => bytes = &bytes[n..],
                Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        Ok(())
    }

    /// Reads one line (without '\n'), waiting until `deadline` at most.
    fn read_line(&mut self, deadline: Instant, waiting_for: &str) -> Result<String, QmpError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let rest = self.buf.split_off(pos + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8_lossy(&line).into_owned();
                if line.trim().is_empty() {
                    continue;
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(QmpError::Malformed {
                    line: truncate(&String::from_utf8_lossy(&self.buf)),
                    reason: format!("line longer than {MAX_LINE} bytes"),
                });
            }
            let left = self.remaining(deadline, waiting_for)?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| self.io(e))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(QmpError::Closed {
                        path: self.path.clone(),
                        waiting_for: waiting_for.to_string(),
                    });
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    fn remaining(&self, deadline: Instant, waiting_for: &str) -> Result<Duration, QmpError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(QmpError::Timeout {
                path: self.path.clone(),
                timeout: self.timeout,
                waiting_for: waiting_for.to_string(),
            });
        }
        Ok(left)
    }

    fn io(&self, source: std::io::Error) -> QmpError {
        QmpError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

fn matches_id(reply: &Option<Value>, sent: &str) -> bool {
    match reply {
        Some(v) => v.as_str() == Some(sent),
        // QEMU echoes ids; a reply without one can only answer the command in flight.
        None => true,
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    // Lines captured from qemu-system-x86_64 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3).
    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#;
    const RETURN_EMPTY: &str = r#"{"return": {}, "id": "castra-1"}"#;
    const RETURN_STATUS: &str = r#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": "castra-2"}"#;
    const ERROR_UNKNOWN: &str = r#"{"id": "castra-3", "error": {"class": "CommandNotFound", "desc": "The command no_such_cmd has not been found"}}"#;
    const ERROR_NO_CAPS: &str = r#"{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}"#;
    const EVENT_POWERDOWN: &str =
        r#"{"timestamp": {"seconds": 1795383258, "microseconds": 687530}, "event": "POWERDOWN"}"#;
    const EVENT_SHUTDOWN: &str = r#"{"timestamp": {"seconds": 1795383259, "microseconds": 491160}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#;

    #[test]
    fn parses_qemu_7_2_greeting() {
        assert_eq!(
            parse_line(GREETING).unwrap(),
            QmpMessage::Greeting(Greeting {
                version: (7, 2, 22),
                package: "Debian 1:7.2+dfsg-7+deb12u18+b3".into(),
                capabilities: vec!["oob".into()],
            })
        );
    }

    #[test]
    fn parses_returns_with_ids() {
        assert_eq!(
            parse_line(RETURN_EMPTY).unwrap(),
            QmpMessage::Return {
                id: Some(json!("castra-1")),
                value: json!({})
            }
        );
        match parse_line(RETURN_STATUS).unwrap() {
            QmpMessage::Return { id, value } => {
                assert_eq!(id, Some(json!("castra-2")));
                assert_eq!(value["status"], "running");
            }
            other => panic!("expected a return, got {other:?}"),
        }
    }

    #[test]
    fn parses_errors_with_and_without_id() {
        assert_eq!(
            parse_line(ERROR_UNKNOWN).unwrap(),
            QmpMessage::Error {
                id: Some(json!("castra-3")),
                class: "CommandNotFound".into(),
                desc: "The command no_such_cmd has not been found".into(),
            }
        );
        match parse_line(ERROR_NO_CAPS).unwrap() {
            QmpMessage::Error { id, class, .. } => {
                assert_eq!(id, None);
                assert_eq!(class, "CommandNotFound");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn parses_events_with_and_without_data() {
        assert_eq!(
            parse_line(EVENT_POWERDOWN).unwrap(),
            QmpMessage::Event(QmpEvent {
                name: "POWERDOWN".into(),
                data: Value::Null,
                timestamp: Some((1795383258, 687530)),
            })
        );
        match parse_line(EVENT_SHUTDOWN).unwrap() {
            QmpMessage::Event(ev) => {
                assert_eq!(ev.name, "SHUTDOWN");
                assert_eq!(ev.data["reason"], "host-qmp-quit");
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn rejects_garbage() {
        for line in ["", "not json", "[1,2]", r#"{"hello": 1}"#, r#"{"QMP": {}}"#] {
            let err = parse_line(line).unwrap_err();
            assert!(matches!(err, QmpError::Malformed { .. }), "{line}: {err}");
        }
    }

    #[test]
    fn encodes_commands_with_id_and_optional_arguments() {
        insta::assert_snapshot!(encode_command("query-status", None, "castra-7"), @r#"{"execute":"query-status","id":"castra-7"}"#);
        insta::assert_snapshot!(
            encode_command("human-monitor-command", Some(&json!({"command-line": "info version"})), "castra-8"),
            @r#"{"arguments":{"command-line":"info version"},"execute":"human-monitor-command","id":"castra-8"}"#
        );
    }

    /// A scripted QMP server on a real Unix socket: for each command line it
    /// receives, it writes the scripted lines (events first, like QEMU may).
    fn serve(
        script: Vec<Vec<String>>,
    ) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<Vec<String>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(format!("{GREETING}\n").as_bytes()).unwrap();
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut received = Vec::new();
            for replies in script {
                let mut line = String::new();
                std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
                received.push(line.trim_end().to_string());
                for r in replies {
                    conn.write_all(format!("{r}\n").as_bytes()).unwrap();
                }
            }
            // Keep the connection open until the client is done.
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
            received
        });
        (dir, path, handle)
    }

    #[test]
    fn events_during_a_command_are_buffered_not_lost() {
        let (_dir, path, server) = serve(vec![
            vec![RETURN_EMPTY.into()],
            vec![
                EVENT_POWERDOWN.into(),
                // A stale reply to some other id must be skipped.
                r#"{"return": {}, "id": "castra-99"}"#.into(),
                RETURN_STATUS.into(),
            ],
        ]);
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(qmp.greeting().version, (7, 2, 22));
        let status = qmp.query_status().unwrap();
        assert_eq!(
            status,
            VmStatus {
                running: true,
                status: "running".into()
            }
        );
        let ev = qmp.next_event(Duration::from_millis(10)).unwrap();
        assert_eq!(ev.name, "POWERDOWN");
        drop(qmp);
        let received = server.join().unwrap();
        assert_eq!(
            received,
            vec![
                r#"{"execute":"qmp_capabilities","id":"castra-1"}"#,
                r#"{"execute":"query-status","id":"castra-2"}"#,
            ]
        );
    }

    #[test]
    fn command_errors_name_the_command() {
        let (_dir, path, _server) = serve(vec![
            vec![RETURN_EMPTY.into()],
            vec![
                r#"{"id": "castra-2", "error": {"class": "GenericError", "desc": "nope"}}"#.into(),
            ],
        ]);
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        let err = qmp.system_powerdown().unwrap_err();
        assert_eq!(
            err.to_string(),
            "qmp command system_powerdown failed: GenericError: nope"
        );
    }

    #[test]
    fn a_silent_server_times_out_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        // Bound and listening but never accepting or writing: like a frozen QEMU.
        let _listener = UnixListener::bind(&path).unwrap();
        let start = Instant::now();
        let err = Qmp::connect(&path, Duration::from_millis(300)).unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        assert!(took >= Duration::from_millis(300), "{took:?}");
        // A bound that only catches a hang (the server never answers).
        assert!(took < Duration::from_secs(30), "{took:?}");
    }

    #[test]
    fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Qmp::connect(&dir.path().join("nope.sock"), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }), "{err}");
    }

    #[test]
    fn next_event_times_out_with_none() {
        let (_dir, path, _server) = serve(vec![vec![RETURN_EMPTY.into()]]);
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        let start = Instant::now();
        assert_eq!(qmp.next_event(Duration::from_millis(100)), None);
        // A bound that only catches a hang.
        assert!(start.elapsed() < Duration::from_secs(30));
    }
}
