//! Validated project configuration: the types every other module consumes.
//!
//! `castra.toml` is parsed by [`load`] (serde input types in `raw`, checked in
//! `validate`) into a [`Project`]. Nothing outside this module sees the raw
//! serde types; nothing inside it does I/O beyond reading the one config file.

// helper A adds: discover, load (ConfigError, load, load_str), raw, size (ByteSize), template, validate

/// Bytes (placeholder until `size.rs` lands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteSize(pub u64);

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A loaded, validated project.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    /// `[project] name`, or the config directory's name.
    pub name: String,
    /// Absolute path of the `castra.toml` this came from.
    pub config_path: PathBuf,
    /// Absolute directory that relative paths in the config are resolved against.
    pub root_dir: PathBuf,
    /// Absolute state root (`[project] state_dir`, default `<root_dir>/.castra`).
    pub state_root: PathBuf,
    /// VM instances after replica expansion, in config order.
    pub vms: Vec<VmSpec>,
    pub broker: BrokerConfig,
    pub lifecycle: Lifecycle,
}

/// Everything that defines how one VM instance is launched.
///
/// This is what gets fingerprinted: a change to any field is drift and makes
/// the plan restart the VM. Runtime-only knobs (shutdown waits) live elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Instance name (`web`, or `web-1`, `web-2`, ... with `count`).
    pub name: String,
    pub cpus: u32,
    pub memory: ByteSize,
    pub image: ImageSpec,
    pub machine: Machine,
    pub accel: AccelChoice,
    pub forwards: Vec<Forward>,
}

/// What the guest boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageSpec {
    /// castra's default guest image (see `castra image build`).
    Default,
    /// Direct kernel boot from files the user provides.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: Option<String>,
    },
    /// A qcow2 disk, never written: each VM runs on its own copy-on-write overlay.
    Disk { path: PathBuf },
}

/// QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Machine {
    /// `-M microvm`: no PCI, no firmware, fastest boot; needs direct kernel boot.
    Microvm,
    /// `-M q35`: PCI, firmware, boots disks.
    Q35,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }
}

/// Accelerator requested by config or `CASTRA_ACCEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccelChoice {
    /// KVM when a bounded probe proves it works, otherwise TCG.
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            AccelChoice::Auto => "auto",
            AccelChoice::Kvm => "kvm",
            AccelChoice::Tcg => "tcg",
        }
    }
}

/// A host port forwarded into the guest through QEMU user networking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub proto: Proto,
    /// Host address to bind; 127.0.0.1 unless the config says otherwise.
    pub host_addr: IpAddr,
    pub host_port: u16,
    pub guest_port: u16,
}

impl std::fmt::Display for Forward {
    /// `127.0.0.1:8080->80/tcp`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}->{}/{}",
            self.host_addr,
            self.host_port,
            self.guest_port,
            self.proto.as_str()
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// `[broker]`: the host broker guests connect to (10.0.2.2:<port> from inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub port: u16,
}

/// `[lifecycle]`: how long each stage of the shutdown ladder waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// After QMP `system_powerdown`, before SIGTERM.
    pub powerdown_wait: Duration,
    /// After SIGTERM, before SIGKILL.
    pub sigterm_wait: Duration,
}

pub const DEFAULT_BROKER_PORT: u16 = 7750;
pub const DEFAULT_POWERDOWN_WAIT: Duration = Duration::from_secs(20);
pub const DEFAULT_SIGTERM_WAIT: Duration = Duration::from_secs(5);
