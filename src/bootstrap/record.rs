//! The durable record of a VM's latest bootstrap (`vms/<vm>/bootstrap.json`)
//! and its run logs (`vms/<vm>/bootstrap/<run>.log`). Written by apply,
//! read by plan and status. Secret values never reach these files.

use crate::fsutil::{JsonFile, JsonFileError};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::BootstrapMode;

/// A run's state as status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Requested and not finished (or apply died while waiting).
    Running,
    Ok,
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Ok => "ok",
            RunState::Failed => "failed",
        }
    }
}

/// `bootstrap.json`: the latest run of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapRecord {
    pub run: String,
    pub state: RunState,
    /// Fingerprint of the plan it ran (kind, shell text, env).
    pub fingerprint: String,
    pub mode: BootstrapMode,
    pub kind: String,
    /// `launched_at_ms` of the VM launch it ran in.
    pub launch_ms: u64,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub exit_code: Option<i32>,
    /// Why it failed, in words.
    pub error: Option<String>,
    /// The run log, relative to the VM's directory.
    pub log: String,
}

/// Errors name the file; a broken record is deleted to run the bootstrap again.
pub type RecordError = JsonFileError;

const FILE: JsonFile = JsonFile {
    what: "bootstrap record",
    fix: "delete it to run the bootstrap again",
};

/// `Ok(None)` when the VM never bootstrapped.
pub fn read(path: &Path) -> Result<Option<BootstrapRecord>, RecordError> {
    FILE.read(path)
}

/// Write atomically (temp file + rename).
pub fn write(path: &Path, record: &BootstrapRecord) -> Result<(), RecordError> {
    FILE.write(path, record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.json");
        assert_eq!(read(&path).unwrap(), None);
        let r = BootstrapRecord {
            run: "1-ab".into(),
            state: RunState::Failed,
            fingerprint: "ab".into(),
            mode: BootstrapMode::Auto,
            kind: "run".into(),
            launch_ms: 5,
            started_ms: 6,
            finished_ms: Some(7),
            exit_code: Some(1),
            error: Some("exit code 1".into()),
            log: "bootstrap/1-ab.log".into(),
        };
        write(&path, &r).unwrap();
        assert_eq!(read(&path).unwrap(), Some(r));
        std::fs::write(&path, "{").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("delete it to run the bootstrap again"), "{e}");
    }
}
