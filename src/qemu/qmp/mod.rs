//! A small synchronous QMP client: one connection to one QEMU's control socket.
//!
//! The pure half (`wire.rs`: [`parse_line`]) turns one line of QMP into a [`QmpMessage`]
//! (greeting, return, error or event); the socket half ([`Qmp`]) frames lines
//! over a `UnixStream` with a deadline on every read and write, so no call can
//! hang on a wedged or frozen QEMU. Commands carry an `id`; events that arrive
//! while a command waits for its return are buffered and handed out by
//! [`Qmp::next_event`], never dropped. This module knows nothing of VMs or
//! shutdown policy (see `process.rs`). Protocol: QEMU's `docs/interop/qmp-spec`.

mod wire;

use wire::truncate;
pub use wire::{Greeting, QmpError, QmpEvent, QmpMessage, VmStatus, encode_command, parse_line};

use serde_json::Value;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest QMP line accepted; QEMU's replies castra asks for are far smaller.
const MAX_LINE: usize = 1 << 20;

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
    use super::wire::tests::{EVENT_POWERDOWN, GREETING, RETURN_EMPTY, RETURN_STATUS};
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

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
