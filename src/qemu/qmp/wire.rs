//! QMP on the wire, with no socket: one line of QMP parsed into a [`QmpMessage`]
//! (greeting, return, error or event), a command encoded as a line, and the errors both
//! halves of the client report. Pure: tested with lines captured from a real QEMU.

use serde::Serialize;
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::time::Duration;

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

pub(super) fn truncate(line: &str) -> String {
    const MAX: usize = 200;
    match line.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // Lines captured from qemu-system-x86_64 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3).
    pub(crate) const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#;
    pub(crate) const RETURN_EMPTY: &str = r#"{"return": {}, "id": "castra-1"}"#;
    pub(crate) const RETURN_STATUS: &str = r#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": "castra-2"}"#;
    pub(crate) const ERROR_UNKNOWN: &str = r#"{"id": "castra-3", "error": {"class": "CommandNotFound", "desc": "The command no_such_cmd has not been found"}}"#;
    pub(crate) const ERROR_NO_CAPS: &str = r#"{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}"#;
    pub(crate) const EVENT_POWERDOWN: &str =
        r#"{"timestamp": {"seconds": 1795383258, "microseconds": 687530}, "event": "POWERDOWN"}"#;
    pub(crate) const EVENT_SHUTDOWN: &str = r#"{"timestamp": {"seconds": 1795383259, "microseconds": 491160}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#;

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
}
