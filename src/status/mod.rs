//! `castra status`: collect a report from launch records and /proc (never QMP,
//! never a live session), and render it as a table or stable JSON.
//!
//! **Invariant:** collecting status takes no lock and performs no blocking
//! I/O on a VM or the broker: it answers at once even when a QEMU or the
//! broker is frozen (`kill -STOP`). Guest reachability comes from the
//! broker's state snapshot file, never from a live session.

pub mod render;
pub mod timeline;

use serde::Serialize;
use std::path::PathBuf;

use crate::broker::control::BrokerState;
use crate::broker::{BrokerSnapshot, VmEntry, age_ms, reachable, read_snapshot};
use crate::config::{Project, VmSpec};
use crate::events::now_ms;
use crate::layout::StateLayout;
use crate::reconcile::apply::observe_project;
use crate::reconcile::observe::{Depth, ObservedVm, VmState};

/// Top-level `castra status --json` object. Fields may be added, never renamed.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub project: String,
    pub config: PathBuf,
    pub state_root: PathBuf,
    pub broker: BrokerStatus,
    pub vms: Vec<VmStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerStatus {
    /// `running` or `offline`.
    pub state: String,
    pub pid: Option<i32>,
    /// Guests reach it at 10.0.2.2:<port>; it listens on 127.0.0.1:<port>.
    pub port: u16,
    /// Why it is offline, or a problem reading its state file.
    pub reason: Option<String>,
    /// Host bus sessions open now (`castra bus subscribe`); null when the
    /// broker is not running or has no state file.
    pub host_sessions: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmStatus {
    pub name: String,
    /// The host it runs on (`[hosts.NAME]`), or `local` for direct QEMU.
    pub host: String,
    /// `running`, `stopped` or `broken`.
    pub state: String,
    /// Why it is stopped or broken (empty when running).
    pub reasons: Vec<String>,
    /// False for a VM that runs but was removed from castra.toml.
    pub in_config: bool,
    /// True when castra.toml changed since launch (`castra plan` names the fields).
    pub config_changed: bool,
    pub pid: Option<i32>,
    pub cpus: Option<u32>,
    pub memory_bytes: Option<u64>,
    /// Seconds since launch while running.
    pub uptime_s: Option<u64>,
    /// Accelerator in use (`kvm`/`tcg`) while running, with the reason it was chosen.
    pub accel: Option<String>,
    pub accel_reason: Option<String>,
    /// `127.0.0.1:8080->80/tcp`
    pub forwards: Vec<String>,
    /// The guest proved it is up: the broker runs, and this launch of the VM
    /// handshaked or heartbeated within the freshness window (15 s).
    pub reachable: bool,
    /// Milliseconds since the VM's latest accepted handshake (null: never).
    pub last_handshake_age_ms: Option<u64>,
    /// Milliseconds since the latest heartbeat on one of its sessions (null: never).
    pub last_heartbeat_age_ms: Option<u64>,
    /// Bus sessions the VM holds open now.
    pub sessions: u32,
    /// Any of its open sessions subscribes to a topic.
    pub bus_subscribed: bool,
    /// Milliseconds since the VM's latest durable publish (null: never).
    pub last_publish_age_ms: Option<u64>,
    /// The latest bootstrap (null: the VM has no bootstrap and never ran one).
    pub bootstrap: Option<BootstrapStatus>,
    /// This launch's boot, stage by stage (null: no agent handshake with boot
    /// marks since it launched). See docs/BOOT.md.
    pub boot_timeline: Option<Vec<timeline::Stage>>,
}

/// `vms[].bootstrap` in `castra status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct BootstrapStatus {
    /// `never`, `running`, `ok` or `failed`.
    pub state: String,
    /// Milliseconds since it finished (since it started while running; null: never).
    pub age_ms: Option<u64>,
    /// The run id (null: never ran).
    pub run: Option<String>,
    /// The run log (null: never ran).
    pub log: Option<PathBuf>,
    /// Why it failed.
    pub error: Option<String>,
}

/// What `bootstrap.json` says (the record is read, never waited on).
fn bootstrap_status(
    layout: &StateLayout,
    name: &str,
    declared: bool,
    now: u64,
) -> Option<BootstrapStatus> {
    let paths = layout.vm(name);
    match crate::bootstrap::record::read(&paths.bootstrap_record()) {
        Ok(Some(r)) => Some(BootstrapStatus {
            state: r.state.as_str().into(),
            age_ms: Some(now.saturating_sub(r.finished_ms.unwrap_or(r.started_ms))),
            log: Some(paths.dir.join(&r.log)),
            run: Some(r.run),
            error: r.error,
        }),
        Ok(None) if declared => Some(BootstrapStatus {
            state: "never".into(),
            age_ms: None,
            run: None,
            log: None,
            error: None,
        }),
        Ok(None) => None,
        Err(e) => Some(BootstrapStatus {
            state: "failed".into(),
            age_ms: None,
            run: None,
            log: None,
            error: Some(e.to_string()),
        }),
    }
}

/// Collect status without blocking on anything.
pub fn collect(project: &Project) -> StatusReport {
    let observed = observe_project(project, Depth::Quick);
    let now = now_ms();
    let layout = StateLayout::new(&project.state_root);
    let (snapshot, snapshot_error) = match read_snapshot(&layout.broker_state()) {
        Ok(s) => (s, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let broker_up = matches!(observed.broker, BrokerState::Running { .. });
    let guests = Guests {
        snapshot: snapshot.as_ref(),
        broker_up,
        now,
    };
    // castra.toml order first, then VMs that only have state on disk.
    let position = |name: &str| {
        project
            .vms
            .iter()
            .position(|v| v.name == name)
            .unwrap_or(usize::MAX)
    };
    let mut seen: Vec<&ObservedVm> = observed.vms.values().collect();
    seen.sort_by_key(|o| position(&o.name));
    let vms = seen
        .into_iter()
        .map(|o| {
            let mut v = vm_status(o, project.vms.iter().find(|v| v.name == o.name), &guests);
            v.bootstrap = bootstrap_status(
                &layout,
                &o.name,
                project.bootstraps.contains_key(&o.name),
                now,
            );
            v
        })
        .collect();
    StatusReport {
        project: project.name.clone(),
        config: project.config_path.clone(),
        state_root: project.state_root.clone(),
        broker: BrokerStatus {
            state: observed.broker.word().into(),
            pid: observed.broker.pid(),
            port: project.broker.port,
            reason: match &observed.broker {
                BrokerState::Offline { why } => Some(why.clone()),
                BrokerState::Running { .. } => snapshot_error,
            },
            host_sessions: snapshot
                .as_ref()
                .filter(|_| broker_up)
                .map(|s| s.host.sessions),
        },
        vms,
    }
}

/// What the broker's snapshot says about guests, at one instant.
struct Guests<'a> {
    snapshot: Option<&'a BrokerSnapshot>,
    broker_up: bool,
    now: u64,
}

fn vm_status(o: &ObservedVm, declared: Option<&VmSpec>, guests: &Guests) -> VmStatus {
    let now_ms = guests.now;
    let running = matches!(o.state, VmState::Running { .. });
    let entry: Option<&VmEntry> = guests.snapshot.and_then(|s| s.vms.get(&o.name));
    let live_record = o.record.as_ref().filter(|_| running);
    // While running, show what it runs with; otherwise what castra.toml asks for.
    let spec = live_record.map(|r| &r.spec).or(declared);
    let (pid, reasons) = match &o.state {
        // A libvirt domain's QEMU pid is the host's, not castra's: null.
        VmState::Running { .. } | VmState::Broken { .. } if o.host.is_some() => (
            None,
            match &o.state {
                VmState::Broken { reasons } => reasons.clone(),
                _ => Vec::new(),
            },
        ),
        VmState::Running { pid } => (Some(*pid), Vec::new()),
        VmState::Stopped { why } | VmState::Unknown { why } => (None, vec![why.clone()]),
        VmState::Broken { reasons } => (o.record.as_ref().map(|r| r.process.pid), reasons.clone()),
    };
    VmStatus {
        name: o.name.clone(),
        host: o
            .host
            .clone()
            .unwrap_or_else(|| crate::config::LOCAL_HOST.into()),
        state: o.state.word().into(),
        reasons,
        in_config: declared.is_some(),
        config_changed: match (live_record, declared) {
            (Some(r), Some(d)) => &r.spec != d,
            _ => false,
        },
        pid,
        cpus: spec.map(|s| s.cpus),
        memory_bytes: spec.map(|s| s.memory.bytes()),
        uptime_s: live_record.map(|r| now_ms.saturating_sub(r.launched_at_ms) / 1000),
        accel: live_record.map(|r| r.accel.as_str().into()),
        accel_reason: live_record.map(|r| r.accel_reason.clone()),
        forwards: spec
            .map(|s| s.forwards.iter().map(|f| f.to_string()).collect())
            .unwrap_or_default(),
        reachable: entry.is_some_and(|e| {
            // Evidence must come from this launch, not from before a restart.
            let since_launch = live_record
                .is_some_and(|r| e.last_handshake_ms.is_some_and(|t| t >= r.launched_at_ms));
            guests.broker_up && since_launch && reachable(e, now_ms)
        }),
        last_handshake_age_ms: entry.and_then(|e| age_ms(e.last_handshake_ms, now_ms)),
        last_heartbeat_age_ms: entry.and_then(|e| age_ms(e.last_heartbeat_ms, now_ms)),
        // A stopped VM holds no session, whatever the broker has not noticed yet.
        sessions: entry.filter(|_| running).map(|e| e.sessions).unwrap_or(0),
        bus_subscribed: guests.broker_up && running && entry.is_some_and(|e| e.bus_subscribed),
        last_publish_age_ms: entry.and_then(|e| age_ms(e.last_publish_ms, now_ms)),
        bootstrap: None,
        boot_timeline: live_record
            .zip(entry.and_then(|e| e.last_boot.as_ref()))
            .and_then(|(r, b)| timeline::timeline(r.launched_at_ms, b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Right after a VM stops the broker may not have seen its session end:
    /// a stopped VM never shows sessions or a bus subscription.
    #[test]
    fn a_stopped_vm_shows_no_bus_session_whatever_the_snapshot_says() {
        let mut snapshot = BrokerSnapshot::starting(None, 42, 7750, 15_000, 1_000);
        snapshot.vms.insert(
            "web".into(),
            VmEntry {
                sessions: 1,
                bus_subscribed: true,
                last_handshake_ms: Some(900),
                ..VmEntry::default()
            },
        );
        let guests = Guests {
            snapshot: Some(&snapshot),
            broker_up: true,
            now: 1_000,
        };
        let stopped = ObservedVm {
            name: "web".into(),
            state: VmState::Stopped {
                why: "not running".into(),
            },
            record: None,
            host: None,
        };
        let v = vm_status(&stopped, None, &guests);
        assert_eq!(
            (v.sessions, v.bus_subscribed, v.reachable),
            (0, false, false)
        );
    }
}
