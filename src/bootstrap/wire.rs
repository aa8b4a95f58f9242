//! The bootstrap messages on the bus, shared by the host and the agent:
//! the request the host publishes on `vm:<name>` and the reports the agent
//! publishes on [`TOPIC`], each wrapped as `{"bootstrap": ...}`. Secret env
//! values never travel (or reach the durable bus log) in clear text: they are
//! sealed with the VM's per-launch token, which only the host and that guest
//! hold. Pure: no sockets, no processes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The topic the agent publishes its bootstrap reports on.
pub const TOPIC: &str = "castra.bootstrap";
/// The key that wraps every bootstrap payload.
pub const KEY: &str = "bootstrap";

/// Host -> guest: run this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Unique per run (`<unix ms>-<fingerprint>`); the agent runs an id once.
    pub run: String,
    /// `script`, `run`, `flake` or `nixos` (informational: all run with `/bin/sh -c`).
    pub kind: String,
    /// Shell text for `/bin/sh -c`.
    pub script: String,
    /// Plain environment values.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secret environment values, sealed with the VM token ([`seal`]).
    #[serde(default)]
    pub sealed_env: BTreeMap<String, String>,
    /// The guest kills the run after this long.
    pub timeout_ms: u64,
}

/// Guest -> host: what happened to a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Report {
    /// The agent accepted the request and started `/bin/sh`.
    Started { run: String },
    /// A batch of output lines (stdout and stderr, in arrival order).
    Output { run: String, lines: Vec<String> },
    /// The run is over.
    Finished {
        run: String,
        status: RunStatus,
        /// The shell's exit code (None when killed by a signal or never started).
        exit_code: Option<i32>,
        /// Output past the cap was dropped (counted in `output_bytes`).
        truncated: bool,
        output_bytes: u64,
        elapsed_ms: u64,
        /// Why it could not run, or what killed it.
        error: Option<String>,
    },
}

impl Report {
    pub fn run(&self) -> &str {
        match self {
            Report::Started { run } | Report::Output { run, .. } | Report::Finished { run, .. } => {
                run
            }
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Exit code 0.
    Ok,
    /// A non-zero exit, a signal, or it could not start.
    Failed,
    /// Killed after `timeout_ms`.
    Timeout,
}

/// Wrap a request or report as a bus payload.
pub fn payload<T: Serialize>(inner: &T) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(
        KEY.to_owned(),
        serde_json::to_value(inner).unwrap_or(Value::Null),
    );
    Value::Object(map)
}

/// The request in a payload, if it is one.
pub fn parse_request(payload: &Value) -> Option<Request> {
    serde_json::from_value(payload.get(KEY)?.clone()).ok()
}

/// The report in a payload, if it is one.
pub fn parse_report(payload: &Value) -> Option<Report> {
    serde_json::from_value(payload.get(KEY)?.clone()).ok()
}

fn keystream(token: &str, run: &str, key: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block: u64 = 0;
    while out.len() < len {
        let mut h = Sha256::new();
        for part in [token, run, key] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        h.update(block.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        block += 1;
    }
    out.truncate(len);
    out
}

/// Seal a secret value for one run and key (hex). The keystream is
/// SHA-256(token, run, key, block), so the same value sealed for another run
/// or key looks unrelated. Confidentiality only: the bus session already
/// proves who sent it.
pub fn seal(token: &str, run: &str, key: &str, value: &str) -> String {
    let ks = keystream(token, run, key, value.len());
    let bytes: Vec<u8> = value.bytes().zip(ks).map(|(b, k)| b ^ k).collect();
    hex::encode(bytes)
}

/// Open what [`seal`] produced; `None` for bad hex or a wrong token.
pub fn open(token: &str, run: &str, key: &str, sealed: &str) -> Option<String> {
    let bytes = hex::decode(sealed).ok()?;
    let ks = keystream(token, run, key, bytes.len());
    String::from_utf8(bytes.into_iter().zip(ks).map(|(b, k)| b ^ k).collect()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_hides_the_value() {
        let sealed = seal("tok", "r1", "API_KEY", "hunter2-secret");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(sealed.len(), 2 * "hunter2-secret".len());
        assert_eq!(
            open("tok", "r1", "API_KEY", &sealed).as_deref(),
            Some("hunter2-secret")
        );
        assert_ne!(
            open("other", "r1", "API_KEY", &sealed).as_deref(),
            Some("hunter2-secret")
        );
        assert_ne!(sealed, seal("tok", "r2", "API_KEY", "hunter2-secret"));
        assert_ne!(sealed, seal("tok", "r1", "OTHER", "hunter2-secret"));
        assert_eq!(open("tok", "r1", "K", "zz"), None);
        let long = "x".repeat(100);
        assert_eq!(open("t", "r", "K", &seal("t", "r", "K", &long)), Some(long));
    }

    #[test]
    fn wire_shapes() {
        let req = Request {
            run: "1-ab".into(),
            kind: "run".into(),
            script: "echo hi".into(),
            env: [("A".to_owned(), "1".to_owned())].into(),
            sealed_env: BTreeMap::new(),
            timeout_ms: 1000,
        };
        let p = payload(&req);
        insta::assert_snapshot!(p.to_string(), @r#"{"bootstrap":{"env":{"A":"1"},"kind":"run","run":"1-ab","script":"echo hi","sealed_env":{},"timeout_ms":1000}}"#);
        assert_eq!(parse_request(&p), Some(req));
        assert_eq!(parse_report(&p), None);
        let done = Report::Finished {
            run: "1-ab".into(),
            status: RunStatus::Failed,
            exit_code: Some(3),
            truncated: false,
            output_bytes: 12,
            elapsed_ms: 40,
            error: None,
        };
        let p = payload(&done);
        insta::assert_snapshot!(p.to_string(), @r#"{"bootstrap":{"elapsed_ms":40,"error":null,"event":"finished","exit_code":3,"output_bytes":12,"run":"1-ab","status":"failed","truncated":false}}"#);
        assert_eq!(parse_report(&p), Some(done));
        assert_eq!(parse_request(&serde_json::json!({"ping": 1})), None);
    }
}
