//! The launch record: what a VM was started with (`vms/<vm>/launch.json`).
//!
//! It carries the spec and its fingerprint (so drift can be named field by
//! field) and the process identity (so a reused pid is never mistaken for our
//! QEMU). Written atomically after a successful launch, removed after a clean stop.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

use crate::config::VmSpec;
use crate::fsutil::{JsonFile, JsonFileError};
use crate::qemu::Accel;
use crate::qemu::process::ProcessIdentity;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchRecord {
    pub spec: VmSpec,
    /// Content id of the image booted (default image id, or empty).
    pub image_id: String,
    pub fingerprint: String,
    pub accel: Accel,
    pub accel_reason: String,
    pub process: ProcessIdentity,
    /// Absolute QMP socket path; also the marker that proves a pid is our QEMU.
    pub qmp_socket: PathBuf,
    /// Unix ms just before QEMU was spawned (the boot timeline's first stage).
    pub launched_at_ms: u64,
    pub castra_version: String,
    /// The QEMU command line it was started with (secrets travel by file, never here).
    #[serde(default)]
    pub argv: Vec<String>,
    /// The libvirt host it runs on (`[hosts.NAME]`); absent for direct QEMU.
    /// A libvirt VM's record lives in its domain's metadata, its `process`
    /// is zero and its `qmp_socket` empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Fingerprint of what a VM is launched with: the spec plus the image content.
pub fn fingerprint(spec: &VmSpec, image_id: &str) -> String {
    let mut h = Sha256::new();
    // serde_json writes struct fields in declaration order: stable across runs.
    h.update(serde_json::to_vec(spec).unwrap_or_default());
    h.update([0u8]);
    h.update(image_id.as_bytes());
    hex::encode(&h.finalize()[..12])
}

/// Errors name the file; a broken record is rewritten by down + apply.
pub type RecordError = JsonFileError;

const FILE: JsonFile = JsonFile {
    what: "launch record",
    fix: "`castra down` then `castra apply` rewrites it",
};

/// `Ok(None)` when there is no record.
pub fn read(path: &Path) -> Result<Option<LaunchRecord>, RecordError> {
    FILE.read(path)
}

/// Write atomically: a crash leaves the old record or the new one, never half.
pub fn write(path: &Path, record: &LaunchRecord) -> Result<(), RecordError> {
    FILE.write(path, record)
}
