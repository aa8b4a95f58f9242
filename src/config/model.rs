//! The validated configuration: a [`Project`] and its [`VmSpec`]s, images, forwards,
//! shares, bootstraps and their modes, with the defaults and limits that shape them. What
//! `load` returns and everything else in castra reads; the checks that produce it live in
//! the files beside this one.

use super::size::ByteSize;
use super::suggest;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
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
    /// Bootstrap plans by VM instance name (replicas share their entry's plan).
    /// Kept apart from [`VmSpec`] on purpose: changing a bootstrap never
    /// restarts a VM, it only reruns the bootstrap.
    pub bootstraps: std::collections::BTreeMap<String, BootstrapSpec>,
    /// `[hosts.NAME]`: libvirt hosts, by name.
    pub hosts: std::collections::BTreeMap<String, HostSpec>,
    /// The host of each VM instance placed on one (`host = "NAME"`). A VM
    /// missing here runs on the local direct-QEMU backend. Kept apart from
    /// [`VmSpec`]: where a VM runs is not what it runs, so a fingerprint does
    /// not change when a VM moves.
    pub placement: std::collections::BTreeMap<String, String>,
}

impl Project {
    /// The host a VM instance is placed on (`None`: local direct QEMU).
    pub fn host_of(&self, vm: &str) -> Option<&HostSpec> {
        self.placement.get(vm).and_then(|h| self.hosts.get(h))
    }
}

/// `[hosts.NAME]`: a libvirt connection castra places VMs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSpec {
    pub name: String,
    /// The libvirt URI: `qemu:///system`, `qemu+tcp://ADDR/system`, `qemu+ssh://...`.
    pub uri: String,
}

/// The name status and plan use for the direct-QEMU backend; no `[hosts.local]`.
pub const LOCAL_HOST: &str = "local";

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
    /// Host directories shared into the guest (virtio-9p). Left out of the
    /// serialized spec when empty, so fingerprints of VMs without shares
    /// are what they were before shares existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<Share>,
}

/// A host directory the guest mounts (virtio-9p; the guest agent mounts it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// Absolute host directory (relative paths in castra.toml start at its directory).
    pub host: PathBuf,
    /// The 9p mount tag: letters, digits, `_`, `-`, `.`; unique within the VM.
    pub tag: String,
    /// Absolute mount point in the guest.
    pub guest: String,
    pub readonly: bool,
}

/// What the guest boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageSpec {
    /// castra's default guest image (see `castra image build`).
    Default,
    /// Direct kernel boot from files the user provides, optionally with a
    /// qcow2 root disk (run on a copy-on-write overlay, attached as `/dev/vda`).
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: Option<String>,
        /// Absent from the serialized spec when `None` (stable fingerprints).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk: Option<PathBuf>,
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
    pub const ALL: [Machine; 2] = [Machine::Microvm, Machine::Q35];

    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Machine {
    type Err = ParseChoiceError;

    /// `microvm` or `q35`, ignoring case and surrounding spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_choice("machine", s, &Machine::ALL, |m| m.as_str())
    }
}

/// Accelerator requested by config or `CASTRA_ACCEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccelChoice {
    /// KVM when a bounded probe proves it works, otherwise TCG.
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    pub const ALL: [AccelChoice; 3] = [AccelChoice::Auto, AccelChoice::Kvm, AccelChoice::Tcg];

    pub fn as_str(self) -> &'static str {
        match self {
            AccelChoice::Auto => "auto",
            AccelChoice::Kvm => "kvm",
            AccelChoice::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AccelChoice {
    type Err = ParseChoiceError;

    /// `auto`, `kvm` or `tcg`, ignoring case and surrounding spaces (so
    /// `CASTRA_ACCEL=TCG` works).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_choice("accelerator", s, &AccelChoice::ALL, |a| a.as_str())
    }
}

/// A value that is not one of a closed set of names (`accel`, `machine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseChoiceError {
    /// What was being parsed: `accelerator`, `machine`.
    pub what: &'static str,
    pub input: String,
    pub expected: Vec<&'static str>,
    /// A likely intended value, when one is close.
    pub suggestion: Option<&'static str>,
}

impl std::fmt::Display for ParseChoiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown {} \"{}\": expected {}",
            self.what,
            self.input,
            suggest::one_of(&self.expected)
        )?;
        if let Some(s) = self.suggestion {
            write!(f, " (did you mean \"{s}\"?)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseChoiceError {}

fn parse_choice<T: Copy>(
    what: &'static str,
    input: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<T, ParseChoiceError> {
    let wanted = input.trim();
    if let Some(v) = all.iter().find(|v| name(**v).eq_ignore_ascii_case(wanted)) {
        return Ok(*v);
    }
    let expected: Vec<&'static str> = all.iter().map(|v| name(*v)).collect();
    Err(ParseChoiceError {
        what,
        input: input.to_string(),
        suggestion: suggest::closest(wanted, &expected),
        expected,
    })
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
    /// `127.0.0.1:8080->80/tcp`, `[::1]:8080->80/tcp`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}->{}/{}",
            std::net::SocketAddr::new(self.host_addr, self.host_port),
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
    /// Let a handshake-only hello without a token (`echo hello vm:web | nc ...`)
    /// mark its VM reachable. Off by default: every castra guest has a token.
    pub allow_tokenless_handshake: bool,
}

/// `[lifecycle]`: how long each stage of the shutdown ladder waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// After QMP `system_powerdown`, before SIGTERM.
    pub powerdown_wait: Duration,
    /// After SIGTERM, before SIGKILL.
    pub sigterm_wait: Duration,
}

/// What runs in a guest after it is up (`bootstrap = { ... }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapSpec {
    pub kind: BootstrapKind,
    pub mode: BootstrapMode,
    /// Environment for the command (sorted, so fingerprints are stable).
    pub env: std::collections::BTreeMap<String, String>,
    /// Keys of `env` whose values are secret: `secret_env`, plus every key
    /// ending in `_TOKEN`, `_SECRET`, `_PASSWORD` or `_KEY`.
    pub secret_env: std::collections::BTreeSet<String>,
    /// How long one run may take (the guest kills it after that).
    pub timeout: Duration,
}

/// The one thing a bootstrap runs; the agent runs each with `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapKind {
    /// `script = "setup.sh"`: a host file (absolute path), sent as text.
    Script { path: PathBuf },
    /// `run = "apk add nginx"`: an inline shell command.
    Run { command: String },
    /// `flake = "<ref>"`: `nix run <ref>`.
    Flake { reference: String },
    /// `nixos = "<flake>#<host>"`: `nixos-rebuild switch --flake <ref>`.
    Nixos { reference: String },
}

impl BootstrapKind {
    pub fn word(&self) -> &'static str {
        match self {
            BootstrapKind::Script { .. } => "script",
            BootstrapKind::Run { .. } => "run",
            BootstrapKind::Flake { .. } => "flake",
            BootstrapKind::Nixos { .. } => "nixos",
        }
    }
}

/// When a bootstrap runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootstrapMode {
    /// Never.
    Skip,
    /// Once per (VM launch, plan fingerprint), and again after a failure.
    Auto,
    /// On every apply.
    Always,
}

impl BootstrapMode {
    pub const ALL: [BootstrapMode; 3] = [
        BootstrapMode::Skip,
        BootstrapMode::Auto,
        BootstrapMode::Always,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            BootstrapMode::Skip => "skip",
            BootstrapMode::Auto => "auto",
            BootstrapMode::Always => "always",
        }
    }
}

impl std::fmt::Display for BootstrapMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BootstrapMode {
    type Err = ParseChoiceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_choice("bootstrap mode", s, &BootstrapMode::ALL, |m| m.as_str())
    }
}

/// Env keys with these endings are secret without being listed.
pub const SECRET_SUFFIXES: [&str; 4] = ["_TOKEN", "_SECRET", "_PASSWORD", "_KEY"];
pub const DEFAULT_BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(600);

pub const DEFAULT_BROKER_PORT: u16 = 7750;
pub const DEFAULT_POWERDOWN_WAIT: Duration = Duration::from_secs(20);
pub const DEFAULT_SIGTERM_WAIT: Duration = Duration::from_secs(5);
pub const DEFAULT_CPUS: u32 = 1;
pub const DEFAULT_MEMORY: ByteSize = ByteSize::from_mib(256);
/// The smallest `memory` accepted: below it the default guest cannot boot.
pub const MIN_MEMORY: ByteSize = ByteSize::from_mib(64);
pub const MAX_CPUS: u32 = 255;
/// The largest `count`: replica names and port ranges stay readable.
pub const MAX_COUNT: u32 = 64;
pub const DEFAULT_STATE_DIR: &str = ".castra";

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            port: DEFAULT_BROKER_PORT,
            allow_tokenless_handshake: false,
        }
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            powerdown_wait: DEFAULT_POWERDOWN_WAIT,
            sigterm_wait: DEFAULT_SIGTERM_WAIT,
        }
    }
}
