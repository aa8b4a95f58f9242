//! The QEMU layer: a pure argv builder, a QMP client, process control and the
//! accelerator choice. Nothing here knows about plans or castra.toml files;
//! it launches, inspects and stops one QEMU at a time.

pub mod accel;
pub mod argv;
pub mod fw_cfg;
pub mod guest_clock;
pub mod process;
pub mod qmp;
pub mod shutdown;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The accelerator a VM actually runs with (after `auto` is resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What QEMU boots, with every path resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootImage {
    /// Direct kernel boot (`-kernel/-initrd/-append`), with an optional root
    /// disk: the VM's copy-on-write overlay, the guest's `/dev/vda`.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
        disk: Option<PathBuf>,
    },
    /// A copy-on-write overlay over the user's disk.
    Disk { overlay: PathBuf },
}

/// Name of the QEMU binary castra runs (overridable with `CASTRA_QEMU`).
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("CASTRA_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}
