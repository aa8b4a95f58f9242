//! Observe: what each VM of the project really is, from its launch record,
//! /proc (process identity guards against pid reuse) and, when asked, QMP.
//!
//! Total by design: every VM gets a state, contradictory or unreadable evidence
//! becomes `Broken { reasons }`, and nothing here returns an error for the
//! project as a whole. The `Quick` depth reads files and /proc only, so it
//! answers at once even when a QEMU is frozen; `Deep` also asks QMP (bounded).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::broker::control::{self, BrokerState};
use crate::layout::{StateLayout, VmPaths};
use crate::qemu::process::{self, Liveness};
use crate::qemu::qmp::Qmp;

use super::record::{self, LaunchRecord};

/// How hard to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Files and /proc only: never blocks (status).
    Quick,
    /// Also `query-status` over QMP with a short timeout (apply).
    Deep,
}

/// How long a deep observe waits for QMP before calling the VM broken.
pub const QMP_OBSERVE_TIMEOUT: Duration = Duration::from_millis(800);

#[derive(Debug, Clone, PartialEq)]
pub enum VmState {
    Running {
        pid: i32,
    },
    Stopped {
        why: String,
    },
    Broken {
        reasons: Vec<String>,
    },
    /// Its host did not answer: castra cannot say (`host NAME unreachable: reason`).
    Unknown {
        why: String,
    },
}

impl VmState {
    pub fn word(&self) -> &'static str {
        match self {
            VmState::Running { .. } => "running",
            VmState::Stopped { .. } => "stopped",
            VmState::Broken { .. } => "broken",
            VmState::Unknown { .. } => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObservedVm {
    pub name: String,
    pub state: VmState,
    /// The launch record, when one could be read.
    pub record: Option<LaunchRecord>,
    /// The libvirt host it was found on (or, when unknown, placed on);
    /// `None`: the local direct-QEMU backend.
    pub host: Option<String>,
}

/// Every VM of the project (those in castra.toml and those with state on
/// disk) and the project's broker.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub vms: BTreeMap<String, ObservedVm>,
    pub broker: BrokerState,
}

impl Default for Observed {
    fn default() -> Self {
        Observed {
            vms: BTreeMap::new(),
            broker: BrokerState::Offline {
                why: "not started".into(),
            },
        }
    }
}

impl Observed {
    pub fn get(&self, name: &str) -> Option<&ObservedVm> {
        self.vms.get(name)
    }
}

/// Observe the VMs named in config plus any VM directory in the state root.
pub fn observe(layout: &StateLayout, config_names: &[String], depth: Depth) -> Observed {
    let mut names: Vec<String> = config_names.to_vec();
    if let Ok(entries) = std::fs::read_dir(layout.vms_dir()) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    names.dedup();
    let vms = names
        .into_iter()
        .map(|name| {
            let vm = observe_vm(&name, &layout.vm(&name), depth);
            (name, vm)
        })
        .collect();
    Observed {
        vms,
        broker: control::observe(layout),
    }
}

/// One VM's state. Never fails.
pub fn observe_vm(name: &str, paths: &VmPaths, depth: Depth) -> ObservedVm {
    let record = match record::read(&paths.launch_record()) {
        Ok(r) => r,
        Err(e) => {
            return ObservedVm {
                name: name.to_owned(),
                state: VmState::Broken {
                    reasons: vec![e.to_string()],
                },
                record: None,
                host: None,
            };
        }
    };
    let state = match &record {
        None => orphan_state(paths),
        Some(rec) => recorded_state(rec, paths, depth),
    };
    ObservedVm {
        name: name.to_owned(),
        state,
        record,
        host: None,
    }
}

/// No launch record: stopped, unless a QEMU of ours runs without one (a launch
/// that died half-way), which is broken so the plan replaces it.
fn orphan_state(paths: &VmPaths) -> VmState {
    let Some(pid) = read_pidfile(paths) else {
        return VmState::Stopped {
            why: "not started".into(),
        };
    };
    let marker = paths.qmp_socket();
    let ours = process::identity_of(pid)
        .is_some_and(|id| process::probe(&id, &marker.to_string_lossy()) == Liveness::Alive);
    if ours {
        VmState::Broken {
            reasons: vec![format!(
                "qemu pid {pid} runs without a launch record (an earlier launch was interrupted)"
            )],
        }
    } else {
        VmState::Stopped {
            why: "not started (stale pidfile)".into(),
        }
    }
}

fn recorded_state(rec: &LaunchRecord, paths: &VmPaths, depth: Depth) -> VmState {
    let marker = rec.qmp_socket.to_string_lossy();
    match process::probe(&rec.process, &marker) {
        Liveness::Gone => VmState::Stopped {
            why: format!("qemu pid {} exited", rec.process.pid),
        },
        Liveness::Exiting => VmState::Stopped {
            why: format!(
                "qemu pid {} exited (still releasing its files)",
                rec.process.pid
            ),
        },
        Liveness::Zombie => VmState::Stopped {
            why: format!("qemu pid {} exited (zombie)", rec.process.pid),
        },
        Liveness::Reused => VmState::Stopped {
            why: format!(
                "qemu pid {} exited (the pid now belongs to another process)",
                rec.process.pid
            ),
        },
        Liveness::Alive => {
            let mut reasons = Vec::new();
            if let Some(pid) = read_pidfile(paths)
                && pid != rec.process.pid
            {
                reasons.push(format!(
                    "pidfile says {pid} but the launch record says {}",
                    rec.process.pid
                ));
            }
            if depth == Depth::Deep
                && let Some(r) = qmp_reason(rec)
            {
                reasons.push(r);
            }
            if reasons.is_empty() {
                VmState::Running {
                    pid: rec.process.pid,
                }
            } else {
                VmState::Broken { reasons }
            }
        }
    }
}

/// `Some(reason)` when QMP disagrees that the VM is running.
fn qmp_reason(rec: &LaunchRecord) -> Option<String> {
    match Qmp::connect(&rec.qmp_socket, QMP_OBSERVE_TIMEOUT) {
        Err(e) => Some(format!("qmp not answering: {e}")),
        Ok(mut qmp) => match qmp.query_status() {
            Ok(s) if s.running => None,
            Ok(s) => Some(format!("qemu reports the guest {}", s.status)),
            Err(e) => Some(format!("qmp query-status failed: {e}")),
        },
    }
}

fn read_pidfile(paths: &VmPaths) -> Option<i32> {
    std::fs::read_to_string(paths.pidfile())
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccelChoice, ImageSpec, Machine, VmSpec, parse_size};
    use crate::qemu::Accel;
    use crate::qemu::process::{ProcessIdentity, identity_of};
    use std::process::{Child, Command};

    /// A real process whose command line carries `marker`, as QEMU's carries
    /// its QMP socket path. `; exit` keeps shells that exec their last
    /// command (bash) from replacing themselves with `sleep`; the wait covers
    /// the moment between fork and exec when /proc still shows our own argv.
    fn process_with_marker(marker: &str) -> Killed {
        let child = Killed(
            Command::new("sh")
                .args(["-c", "sleep 60; exit", marker])
                .spawn()
                .unwrap(),
        );
        let cmdline = format!("/proc/{}/cmdline", child.id());
        for _ in 0..500 {
            let seen = std::fs::read(&cmdline).unwrap_or_default();
            if String::from_utf8_lossy(&seen).contains(marker) {
                return child;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        panic!("{cmdline} never showed the marker");
    }

    /// A child killed and reaped on drop, whatever the test does.
    struct Killed(Child);

    impl std::ops::Deref for Killed {
        type Target = Child;
        fn deref(&self) -> &Child {
            &self.0
        }
    }

    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn record(paths: &VmPaths, id: ProcessIdentity) -> LaunchRecord {
        let spec = VmSpec {
            name: "web".into(),
            cpus: 1,
            memory: parse_size("256M").unwrap(),
            image: ImageSpec::Default,
            machine: Machine::Microvm,
            accel: AccelChoice::Tcg,
            forwards: vec![],
            shares: vec![],
        };
        LaunchRecord {
            fingerprint: record::fingerprint(&spec, ""),
            spec,
            image_id: String::new(),
            accel: Accel::Tcg,
            accel_reason: "test".into(),
            process: id,
            qmp_socket: paths.qmp_socket(),
            launched_at_ms: 0,
            castra_version: "test".into(),
            argv: vec![],
            host: None,
        }
    }

    fn setup() -> (tempfile::TempDir, StateLayout, VmPaths) {
        let dir = tempfile::tempdir().unwrap();
        let layout = StateLayout::new(dir.path());
        let paths = layout.vm("web");
        std::fs::create_dir_all(&paths.dir).unwrap();
        (dir, layout, paths)
    }

    #[test]
    fn never_started_is_stopped() {
        let (_d, layout, _p) = setup();
        let o = observe(&layout, &["web".into(), "db".into()], Depth::Quick);
        assert_eq!(o.vms.len(), 2);
        assert_eq!(
            o.get("db").unwrap().state,
            VmState::Stopped {
                why: "not started".into()
            }
        );
    }

    #[test]
    fn live_recorded_process_is_running_then_stopped_when_killed() {
        let (_d, layout, paths) = setup();
        let child = process_with_marker(&paths.qmp_socket().to_string_lossy());
        let pid = child.id() as i32;
        let id = identity_of(pid).unwrap();
        record::write(&paths.launch_record(), &record(&paths, id)).unwrap();
        std::fs::write(paths.pidfile(), pid.to_string()).unwrap();
        let o = observe_vm("web", &paths, Depth::Quick);
        assert_eq!(o.state, VmState::Running { pid });

        // Contradictory pidfile: broken, with the reason.
        std::fs::write(paths.pidfile(), "1").unwrap();
        let o = observe_vm("web", &paths, Depth::Quick);
        assert!(
            matches!(&o.state, VmState::Broken { reasons } if reasons[0].contains("pidfile says 1")),
            "{o:?}"
        );

        drop(child);
        let o = observe(&layout, &[], Depth::Quick);
        assert!(
            matches!(&o.get("web").unwrap().state, VmState::Stopped { why } if why.contains("exited")),
            "{o:?}"
        );
    }

    #[test]
    fn a_reused_pid_is_not_our_vm() {
        let (_d, _l, paths) = setup();
        // Our process identity, but the pid now runs something without our marker.
        let other = Killed(Command::new("sleep").arg("60").spawn().unwrap());
        let id = identity_of(other.id() as i32).unwrap();
        record::write(&paths.launch_record(), &record(&paths, id)).unwrap();
        let o = observe_vm("web", &paths, Depth::Quick);
        assert!(
            matches!(&o.state, VmState::Stopped { why } if why.contains("another process")),
            "{o:?}"
        );
        drop(other);
    }

    #[test]
    fn a_qemu_without_record_is_broken_and_garbage_records_are_broken() {
        let (_d, _l, paths) = setup();
        let child = process_with_marker(&paths.qmp_socket().to_string_lossy());
        std::fs::write(paths.pidfile(), child.id().to_string()).unwrap();
        let o = observe_vm("web", &paths, Depth::Quick);
        assert!(
            matches!(&o.state, VmState::Broken { reasons } if reasons[0].contains("without a launch record")),
            "{o:?}"
        );
        drop(child);

        std::fs::write(paths.launch_record(), "{not json").unwrap();
        let o = observe_vm("web", &paths, Depth::Quick);
        assert!(
            matches!(&o.state, VmState::Broken { reasons } if reasons[0].contains("not a valid launch record")),
            "{o:?}"
        );
    }

    #[test]
    fn deep_observe_calls_a_process_without_qmp_broken() {
        let (_d, _l, paths) = setup();
        let child = process_with_marker(&paths.qmp_socket().to_string_lossy());
        let id = identity_of(child.id() as i32).unwrap();
        record::write(&paths.launch_record(), &record(&paths, id)).unwrap();
        let o = observe_vm("web", &paths, Depth::Deep);
        assert!(
            matches!(&o.state, VmState::Broken { reasons } if reasons[0].contains("qmp not answering")),
            "{o:?}"
        );
        drop(child);
    }
}
