//! `plan(desired, observed)`: the pure heart of reconcile. It compares what
//! castra.toml asks for with what was observed and prints itself:
//!
//! ```text
//! + start web
//! ~ restart db (memory 512M -> 1G)
//! - stop old (removed from castra.toml)
//! ```
//!
//! **Invariant:** no I/O, no clock, no randomness: the same inputs give the
//! same plan, so it is snapshot-tested as a table.

use std::fmt;

use crate::config::{ImageSpec, VmSpec};

use super::desired::DesiredVm;
use super::observe::{Observed, VmState};
use crate::broker::control::BrokerState;

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Not running and wanted.
    Start { vm: String, why: StartWhy },
    /// Running (or broken) but not as declared.
    Restart { vm: String, why: RestartWhy },
    /// Running but no longer in castra.toml.
    Stop { vm: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartWhy {
    /// Never started, or cleanly stopped.
    NotRunning,
    /// Was running and its QEMU died.
    Exited(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartWhy {
    /// The spec changed since launch: each changed field, old and new.
    Drift(Vec<FieldChange>),
    /// Observe found contradictory or bad evidence.
    Broken(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    pub field: &'static str,
    pub from: String,
    pub to: String,
}

impl Step {
    pub fn vm(&self) -> &str {
        match self {
            Step::Start { vm, .. } | Step::Restart { vm, .. } | Step::Stop { vm } => vm,
        }
    }
    /// `start`, `restart` or `stop`.
    pub fn action(&self) -> &'static str {
        match self {
            Step::Start { .. } => "start",
            Step::Restart { .. } => "restart",
            Step::Stop { .. } => "stop",
        }
    }
    /// Why, in words (empty when obvious).
    pub fn reason(&self) -> String {
        match self {
            Step::Start {
                why: StartWhy::NotRunning,
                ..
            } => String::new(),
            Step::Start {
                why: StartWhy::Exited(why),
                ..
            } => why.clone(),
            Step::Restart {
                why: RestartWhy::Drift(changes),
                ..
            } => changes
                .iter()
                .map(|c| format!("{} {} -> {}", c.field, c.from, c.to))
                .collect::<Vec<_>>()
                .join(", "),
            Step::Restart {
                why: RestartWhy::Broken(reasons),
                ..
            } => format!("broken: {}", reasons.join("; ")),
            Step::Stop { .. } => "removed from castra.toml".into(),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.render(f, None)
    }
}

impl Step {
    /// `+ start web on b (reason)`: `host` is where the step acts (none: local QEMU).
    fn render(&self, f: &mut fmt::Formatter<'_>, host: Option<&str>) -> fmt::Result {
        let sign = match self {
            Step::Start { .. } => '+',
            Step::Restart { .. } => '~',
            Step::Stop { .. } => '-',
        };
        write!(f, "{sign} {} {}", self.action(), self.vm())?;
        if let Some(h) = host {
            write!(f, " on {h}")?;
        }
        let reason = self.reason();
        if !reason.is_empty() {
            write!(f, " ({reason})")?;
        }
        Ok(())
    }
}

/// What to do with the project's broker (it runs while any VM is declared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerStep {
    /// Start it before the VMs (`why`: how observe knows it is not running).
    Start { why: String },
    /// Stop it after the VMs: nothing is declared any more.
    Stop,
}

impl fmt::Display for BrokerStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerStep::Start { why } => write!(f, "+ start broker ({why})"),
            BrokerStep::Stop => write!(f, "- stop broker (no VM declared)"),
        }
    }
}

/// The steps to converge, plus the VMs already as declared.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub broker: Option<BrokerStep>,
    pub steps: Vec<Step>,
    pub unchanged: Vec<String>,
    /// Where each step acts, for VMs on a libvirt host (start/restart: the
    /// host it is placed on; stop: the host it runs on).
    pub hosts: std::collections::BTreeMap<String, String>,
    /// VMs nothing can be decided for: their host did not answer.
    pub unplanned: Vec<Unplanned>,
}

/// A VM left out of the plan because its host is unreachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplanned {
    pub vm: String,
    /// `host b (qemu+tcp://10.0.0.2/system) unreachable: ...`
    pub why: String,
}

impl fmt::Display for Unplanned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "! {} not planned: {}", self.vm, self.why)
    }
}

impl Plan {
    /// No step to take (unplanned VMs are not steps: see [`Plan::unplanned`]).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.broker.is_none()
    }

    /// The host a step acts on, for display.
    pub fn host_of(&self, vm: &str) -> Option<&str> {
        self.hosts.get(vm).map(String::as_str)
    }

    /// One step as the plan prints it (`+ start web on b`).
    pub fn step_line(&self, step: &Step) -> String {
        struct Line<'a>(&'a Step, Option<&'a str>);
        impl fmt::Display for Line<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.render(f, self.1)
            }
        }
        Line(step, self.host_of(step.vm())).to_string()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for u in &self.unplanned {
            writeln!(f, "{u}")?;
        }
        if self.is_empty() {
            return write!(
                f,
                "no changes: {} VM(s) already as declared",
                self.unchanged.len()
            );
        }
        if let Some(b @ BrokerStep::Start { .. }) = &self.broker {
            writeln!(f, "{b}")?;
        }
        for step in &self.steps {
            writeln!(f, "{}", self.step_line(step))?;
        }
        if let Some(b @ BrokerStep::Stop) = &self.broker {
            writeln!(f, "{b}")?;
        }
        let count = |a: &str| self.steps.iter().filter(|s| s.action() == a).count();
        write!(
            f,
            "plan: {} to start, {} to restart, {} to stop, {} unchanged",
            count("start"),
            count("restart"),
            count("stop"),
            self.unchanged.len()
        )?;
        if !self.unplanned.is_empty() {
            write!(f, ", {} not planned", self.unplanned.len())?;
        }
        Ok(())
    }
}

/// Compute the plan. Desired VMs come first in config order, then stops in
/// name order.
pub fn plan(desired: &[DesiredVm], observed: &Observed) -> Plan {
    let mut out = Plan::default();
    for want in desired {
        let name = &want.spec.name;
        let seen = observed.get(name);
        let state = seen.map(|o| &o.state);
        let record = seen.and_then(|o| o.record.as_ref());
        if let Some(h) = &want.host {
            out.hosts.insert(name.clone(), h.clone());
        }
        let seen_host = seen.and_then(|o| o.host.clone());
        match state {
            Some(VmState::Unknown { why }) => out.unplanned.push(Unplanned {
                vm: name.clone(),
                why: why.clone(),
            }),
            Some(VmState::Running { .. }) if seen_host != want.host => {
                out.steps.push(Step::Restart {
                    vm: name.clone(),
                    why: RestartWhy::Drift(vec![FieldChange {
                        field: "host",
                        from: host_word(seen_host.as_deref()),
                        to: host_word(want.host.as_deref()),
                    }]),
                });
            }
            None | Some(VmState::Stopped { .. }) => {
                let why = match (state, record) {
                    (Some(VmState::Stopped { why }), Some(_)) => StartWhy::Exited(why.clone()),
                    _ => StartWhy::NotRunning,
                };
                out.steps.push(Step::Start {
                    vm: name.clone(),
                    why,
                });
            }
            Some(VmState::Broken { reasons }) => out.steps.push(Step::Restart {
                vm: name.clone(),
                why: RestartWhy::Broken(reasons.clone()),
            }),
            Some(VmState::Running { .. }) => {
                let changes = match record {
                    Some(rec) if rec.fingerprint == want.fingerprint => Vec::new(),
                    Some(rec) => diff(&rec.spec, &rec.image_id, &want.spec, &want.image_id),
                    None => vec![FieldChange {
                        field: "launch record",
                        from: "missing".into(),
                        to: "present".into(),
                    }],
                };
                if changes.is_empty() {
                    out.unchanged.push(name.clone());
                } else {
                    out.steps.push(Step::Restart {
                        vm: name.clone(),
                        why: RestartWhy::Drift(changes),
                    });
                }
            }
        }
    }
    for (name, seen) in &observed.vms {
        let wanted = desired.iter().any(|d| &d.spec.name == name);
        let live = matches!(seen.state, VmState::Running { .. } | VmState::Broken { .. });
        if !wanted && live {
            out.steps.push(Step::Stop { vm: name.clone() });
            if let Some(h) = &seen.host {
                out.hosts.insert(name.clone(), h.clone());
            }
        }
        if let (false, VmState::Unknown { why }) = (wanted, &seen.state) {
            out.unplanned.push(Unplanned {
                vm: name.clone(),
                why: why.clone(),
            });
        }
    }
    out.broker = match (&observed.broker, desired.is_empty()) {
        (BrokerState::Offline { why }, false) => Some(BrokerStep::Start { why: why.clone() }),
        (BrokerState::Running { .. }, true) => Some(BrokerStep::Stop),
        (BrokerState::Offline { .. }, true) | (BrokerState::Running { .. }, false) => None,
    };
    out
}

/// Field-by-field difference between the launched spec and the wanted one.
pub fn diff(old: &VmSpec, old_image: &str, new: &VmSpec, new_image: &str) -> Vec<FieldChange> {
    let mut out = Vec::new();
    let mut push = |field, from: String, to: String| {
        if from != to {
            out.push(FieldChange { field, from, to });
        }
    };
    push("cpus", old.cpus.to_string(), new.cpus.to_string());
    push("memory", old.memory.to_string(), new.memory.to_string());
    push("image", image_words(&old.image), image_words(&new.image));
    if old.image == new.image {
        push("image content", short(old_image), short(new_image));
    }
    push(
        "machine",
        old.machine.as_str().into(),
        new.machine.as_str().into(),
    );
    push(
        "accel",
        old.accel.as_str().into(),
        new.accel.as_str().into(),
    );
    push("forwards", forwards_words(old), forwards_words(new));
    push("shares", shares_words(old), shares_words(new));
    out
}

/// A host as the plan names it: its name, or `local` for direct QEMU.
fn host_word(host: Option<&str>) -> String {
    host.unwrap_or(crate::config::LOCAL_HOST).to_owned()
}

fn short(id: &str) -> String {
    if id.is_empty() {
        "none".into()
    } else {
        id.chars().take(12).collect()
    }
}

fn image_words(image: &ImageSpec) -> String {
    match image {
        ImageSpec::Default => "default".into(),
        ImageSpec::Kernel {
            kernel,
            initrd,
            cmdline,
            disk,
        } => {
            let mut s = format!("kernel {}", kernel.display());
            if let Some(d) = disk {
                s.push_str(&format!(" disk {}", d.display()));
            }
            if let Some(i) = initrd {
                s.push_str(&format!(" initrd {}", i.display()));
            }
            if let Some(c) = cmdline {
                s.push_str(&format!(" cmdline {c:?}"));
            }
            s
        }
        ImageSpec::Disk { path } => format!("disk {}", path.display()),
    }
}

/// `[flake:/mnt/flake ro]`: tag, mount point and mode of each share.
fn shares_words(spec: &VmSpec) -> String {
    let list: Vec<String> = spec
        .shares
        .iter()
        .map(|s| {
            let mode = if s.readonly { "ro" } else { "rw" };
            format!("{}:{} {mode} from {}", s.tag, s.guest, s.host.display())
        })
        .collect();
    format!("[{}]", list.join(", "))
}

fn forwards_words(spec: &VmSpec) -> String {
    if spec.forwards.is_empty() {
        return "[]".into();
    }
    let list: Vec<String> = spec.forwards.iter().map(|f| f.to_string()).collect();
    format!("[{}]", list.join(", "))
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
