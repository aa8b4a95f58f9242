//! The state root's layout: every path castra writes, as a named function in one place.
//!
//! ```text
//! <state_root>/                    default <project dir>/.castra
//!   lock                           project lock (flock) held by apply/down/clean
//!   events.jsonl                   structured events, one JSON object a line
//!   broker/                        the host broker (mode 0700)
//!     broker.pid                   pid of the running `castra broker`
//!     broker.sock                  Unix socket for host tools (mode 0600)
//!     broker.log                   readable log (the broker's stdout/stderr)
//!     events.jsonl                 handshake and session events, one JSON object a line
//!     state.json                   broker state snapshot (atomic rename), read by status
//!   logs/bus/                      the durable bus log (mode 0700)
//!     all.log                      every publish, one JSON object a line, in seq order
//!     <vm>.log                     that VM's publishes (`host.log`: `castra bus publish`)
//!     *.log.1 .. *.log.N           rotated generations (`.1` newest), by size
//!   hosts/                         libvirt hosts ([hosts.NAME]) as last observed
//!     targets.json                 the hosts and domain prefix the broker polls
//!     host-<name>.json             HostSnapshot: reachable or why not, the project's
//!                                  domains with state and record (atomic rename)
//!   vms/<vm>/
//!     launch.json                  LaunchRecord: spec + fingerprint + pid identity
//!     qemu.pid                     pid written by QEMU (-pidfile)
//!     qmp.sock                     QMP control socket
//!     serial.log                   guest serial console
//!     qemu.log                     QEMU's own stderr
//!     overlay.qcow2                copy-on-write overlay (disk images only)
//!     fw_cfg.vm, fw_cfg.broker_port  name and broker port, by fw_cfg (opt/castra/vm, ...)
//!     domain.xml                   the libvirt domain a host VM was created from (no secret)
//!     token                        the VM's secret (0600); its existence makes the VM
//!                                  known to the broker; passed to QEMU by fw_cfg
//!     bootstrap.json               the latest bootstrap run: state, fingerprint, launch
//!     bootstrap/<run>.log          each bootstrap run's output (secrets masked)
//! ```
//!
//! This module only computes paths; it creates nothing.

use std::path::{Path, PathBuf};

/// Unix socket paths longer than this cannot be bound (sun_path is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

pub const LOCK_FILE: &str = "lock";
pub const EVENTS_FILE: &str = "events.jsonl";
pub const PROJECT_INFO: &str = "project.json";
pub const VMS_DIR: &str = "vms";
pub const HOSTS_DIR: &str = "hosts";
pub const HOST_TARGETS: &str = "targets.json";
pub const DOMAIN_XML: &str = "domain.xml";
pub const LAUNCH_RECORD: &str = "launch.json";
pub const QEMU_PIDFILE: &str = "qemu.pid";
pub const QMP_SOCKET: &str = "qmp.sock";
pub const SERIAL_LOG: &str = "serial.log";
pub const QEMU_LOG: &str = "qemu.log";
pub const OVERLAY: &str = "overlay.qcow2";
pub const VM_TOKEN: &str = "token";
/// The VM's name and the broker port, handed to the guest by fw_cfg
/// (`opt/castra/vm`, `opt/castra/broker_port`) for guests without castra's
/// kernel command line (disks booted through firmware).
pub const VM_FW_NAME: &str = "fw_cfg.vm";
pub const VM_FW_BROKER_PORT: &str = "fw_cfg.broker_port";
/// The VM's share table, handed to the guest agent by fw_cfg (`opt/castra/shares`).
pub const VM_SHARES: &str = "shares";
pub const BOOTSTRAP_RECORD: &str = "bootstrap.json";
pub const BOOTSTRAP_DIR: &str = "bootstrap";
pub const BROKER_DIR: &str = "broker";
pub const BROKER_PIDFILE: &str = "broker.pid";
pub const BROKER_SOCKET: &str = "broker.sock";
pub const BROKER_LOG: &str = "broker.log";
pub const BROKER_EVENTS: &str = "events.jsonl";
pub const BROKER_STATE: &str = "state.json";
pub const LOGS_DIR: &str = "logs";
pub const BUS_LOG_DIR: &str = "bus";
pub const BUS_ALL_LOG: &str = "all.log";
/// Per-publisher bus logs are `<vm>.log`; host publishes go to `host.log`.
pub const BUS_LOG_SUFFIX: &str = ".log";

/// Paths of one project's state root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLayout {
    root: PathBuf,
}

impl StateLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateLayout { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }
    pub fn events_file(&self) -> PathBuf {
        self.root.join(EVENTS_FILE)
    }
    /// `project.json`: the project's name, config and broker port (see `reconcile::holder`).
    pub fn project_info(&self) -> PathBuf {
        self.root.join(PROJECT_INFO)
    }
    pub fn vms_dir(&self) -> PathBuf {
        self.root.join(VMS_DIR)
    }
    /// `<state_root>/hosts`: what castra last saw on each libvirt host.
    pub fn hosts_dir(&self) -> PathBuf {
        self.root.join(HOSTS_DIR)
    }
    /// The hosts the broker polls (written by apply and plan).
    pub fn host_targets(&self) -> PathBuf {
        self.hosts_dir().join(HOST_TARGETS)
    }
    /// One host's latest snapshot.
    pub fn host_snapshot(&self, host: &str) -> PathBuf {
        self.hosts_dir().join(format!("host-{host}.json"))
    }
    pub fn broker_dir(&self) -> PathBuf {
        self.root.join(BROKER_DIR)
    }
    pub fn broker_pidfile(&self) -> PathBuf {
        self.broker_dir().join(BROKER_PIDFILE)
    }
    pub fn broker_socket(&self) -> PathBuf {
        self.broker_dir().join(BROKER_SOCKET)
    }
    pub fn broker_log(&self) -> PathBuf {
        self.broker_dir().join(BROKER_LOG)
    }
    pub fn broker_events(&self) -> PathBuf {
        self.broker_dir().join(BROKER_EVENTS)
    }
    pub fn broker_state(&self) -> PathBuf {
        self.broker_dir().join(BROKER_STATE)
    }
    /// `<state_root>/logs/bus`.
    pub fn bus_log_dir(&self) -> PathBuf {
        self.root.join(LOGS_DIR).join(BUS_LOG_DIR)
    }
    pub fn bus_all_log(&self) -> PathBuf {
        self.bus_log_dir().join(BUS_ALL_LOG)
    }
    /// One publisher's bus log (`vm` = `host` for host publishes).
    pub fn bus_vm_log(&self, vm: &str) -> PathBuf {
        self.bus_log_dir().join(format!("{vm}{BUS_LOG_SUFFIX}"))
    }
    pub fn vm(&self, name: &str) -> VmPaths {
        VmPaths {
            dir: self.vms_dir().join(name),
        }
    }
}

/// Paths of one VM's directory in the state root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub dir: PathBuf,
}

impl VmPaths {
    pub fn launch_record(&self) -> PathBuf {
        self.dir.join(LAUNCH_RECORD)
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join(QEMU_PIDFILE)
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join(QMP_SOCKET)
    }
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join(SERIAL_LOG)
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join(QEMU_LOG)
    }
    pub fn overlay(&self) -> PathBuf {
        self.dir.join(OVERLAY)
    }
    pub fn fw_name(&self) -> PathBuf {
        self.dir.join(VM_FW_NAME)
    }
    pub fn fw_broker_port(&self) -> PathBuf {
        self.dir.join(VM_FW_BROKER_PORT)
    }
    pub fn domain_xml(&self) -> PathBuf {
        self.dir.join(DOMAIN_XML)
    }
    pub fn token(&self) -> PathBuf {
        self.dir.join(VM_TOKEN)
    }
    pub fn shares(&self) -> PathBuf {
        self.dir.join(VM_SHARES)
    }
    pub fn bootstrap_record(&self) -> PathBuf {
        self.dir.join(BOOTSTRAP_RECORD)
    }
    pub fn bootstrap_dir(&self) -> PathBuf {
        self.dir.join(BOOTSTRAP_DIR)
    }
    /// The log of one run, relative to the VM's directory.
    pub fn bootstrap_log_rel(run: &str) -> String {
        format!("{BOOTSTRAP_DIR}/{run}.log")
    }
}
