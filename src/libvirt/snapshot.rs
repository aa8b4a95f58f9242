//! What castra last saw on each libvirt host, kept in the state root so that
//! `castra status` reads a file instead of asking a host (status never waits
//! on a network). Written by every deep observe (apply, plan) and by the
//! broker's host poller while the broker runs; each write is atomic.
//!
//! `targets.json` says which hosts to poll and the project's domain prefix;
//! `host-<name>.json` is one host's [`HostSnapshot`].

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

use super::host::{Domain, Host};
use super::names::ProjectNames;
use crate::fsutil::{JsonFile, JsonFileError};

/// How long a poll of one host may take before it counts as not answering.
pub const POLL_DEADLINE: Duration = Duration::from_secs(3);

/// The hosts of a project, for the poller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    pub project: String,
    pub state_root: String,
    pub hosts: Vec<Target>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub uri: String,
}

impl Targets {
    pub fn names(&self) -> ProjectNames {
        ProjectNames::new(&self.project, &self.state_root)
    }
}

/// One host, as last observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSnapshot {
    pub host: String,
    pub uri: String,
    /// When the observation finished (ms since the epoch).
    pub checked_ms: u64,
    /// Why the host could not be listed; `None`: it answered.
    pub error: Option<String>,
    /// The project's domains on it (empty when it did not answer).
    pub domains: Vec<SeenDomain>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenDomain {
    pub vm: String,
    pub domain: String,
    pub state: String,
    pub record_json: Option<String>,
}

impl From<Domain> for SeenDomain {
    fn from(d: Domain) -> Self {
        SeenDomain {
            vm: d.vm,
            domain: d.domain,
            state: d.state,
            record_json: d.record_json,
        }
    }
}

/// Ask the host now (bounded by `deadline`).
pub fn poll(host: &Host, names: &ProjectNames, deadline: Duration, now_ms: u64) -> HostSnapshot {
    let (error, domains) = match host.domains(names, deadline) {
        Ok(d) => (None, d.into_iter().map(SeenDomain::from).collect()),
        Err(e) => (Some(e.to_string()), Vec::new()),
    };
    HostSnapshot {
        host: host.name.to_owned(),
        uri: host.uri.to_owned(),
        checked_ms: now_ms,
        error,
        domains,
    }
}

const SNAPSHOT: JsonFile = JsonFile {
    what: "host snapshot",
    fix: "the next `castra plan` or the broker's next poll rewrites it",
};

const TARGETS: JsonFile = JsonFile {
    what: "host list",
    fix: "the next `castra apply` rewrites it",
};

pub fn read(path: &Path) -> Result<Option<HostSnapshot>, JsonFileError> {
    SNAPSHOT.read(path)
}

pub fn write(path: &Path, snapshot: &HostSnapshot) -> Result<(), JsonFileError> {
    SNAPSHOT.write(path, snapshot)
}

pub fn read_targets(path: &Path) -> Result<Option<Targets>, JsonFileError> {
    TARGETS.read(path)
}

pub fn write_targets(path: &Path, targets: &Targets) -> Result<(), JsonFileError> {
    TARGETS.write(path, targets)
}
