//! `apply` and `down` end to end: lock, observe, plan, check ports, execute,
//! observe again. This is the one place that sequences the reconcile phases;
//! the CLI only renders what it returns.

use std::time::{Duration, Instant};

use crate::broker::control::BrokerState;
use crate::config::Project;
use crate::events::{Event, Reporter};
use crate::layout::StateLayout;

use super::desired::{self, DesiredVm};
use super::execute::{Executor, StepResult};
use super::lock::{self, LockError, ProjectLock};
use super::observe::{self, Depth, Observed, VmState};
use super::plan::{self, BrokerStep, Plan};
use super::ports::{self, PortConflict};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("port conflicts, nothing was changed:\n  {}", .0.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("\n  "))]
    Ports(Vec<PortConflict>),
    #[error("unknown VM {0:?}: not in castra.toml and no state for it in the state root")]
    UnknownVm(String),
}

/// What `plan` computed and, for `apply`, what happened.
#[derive(Debug)]
pub struct ApplyOutcome {
    pub plan: Plan,
    pub results: Vec<StepResult>,
    /// The plan of the fresh observe after execute (empty = converged).
    pub remaining: Plan,
    pub elapsed: Duration,
}

impl ApplyOutcome {
    pub fn converged(&self) -> bool {
        self.remaining.is_empty() && self.results.iter().all(|r| r.ok)
    }
}

/// Observe + plan without changing anything (and without the lock: a plan is a read).
pub fn plan_only(project: &Project) -> Result<(Plan, Vec<DesiredVm>, Observed), ApplyError> {
    let desired = desired::resolve(project);
    let observed = observe_project(project, Depth::Deep);
    let plan = plan::plan(&desired, &observed);
    let conflicts = ports::check(&plan, &desired, &observed, project.broker.port);
    if !conflicts.is_empty() {
        return Err(ApplyError::Ports(conflicts));
    }
    Ok((plan, desired, observed))
}

pub fn observe_project(project: &Project, depth: Depth) -> Observed {
    let names: Vec<String> = project.vms.iter().map(|v| v.name.clone()).collect();
    observe::observe(&StateLayout::new(&project.state_root), &names, depth)
}

/// Take the project lock, telling the user when another castra holds it.
pub fn lock_project(project: &Project) -> Result<ProjectLock, LockError> {
    let layout = StateLayout::new(&project.state_root);
    lock::acquire(&layout.lock_file(), &mut |pid| match pid {
        Some(pid) => eprintln!(
            "waiting for another castra (pid {pid}) that holds {}",
            layout.lock_file().display()
        ),
        None => eprintln!(
            "waiting for another castra that holds {}",
            layout.lock_file().display()
        ),
    })
}

/// Converge: `on_plan` sees the plan before anything changes.
pub fn apply(
    project: &Project,
    reporter: &Reporter,
    on_plan: &mut dyn FnMut(&Plan),
) -> Result<ApplyOutcome, ApplyError> {
    let t0 = Instant::now();
    let _lock = lock_project(project)?;
    let (plan, desired, observed) = plan_only(project)?;
    on_plan(&plan);
    if plan.is_empty() {
        return Ok(ApplyOutcome {
            remaining: plan.clone(),
            plan,
            results: Vec::new(),
            elapsed: t0.elapsed(),
        });
    }
    let exec = Executor::new(project, reporter);
    let mut results = Vec::new();
    if let Some(BrokerStep::Start { .. }) = &plan.broker {
        results.push(exec.start_broker());
    }
    results.extend(exec.run(&plan, &desired, &observed));
    if let Some(BrokerStep::Stop) = &plan.broker {
        results.push(exec.stop_broker());
    }
    // Only a fresh observe with an empty plan means converged.
    let again = observe_project(project, Depth::Deep);
    let remaining = plan::plan(&desired, &again);
    if remaining.is_empty() {
        reporter.emit(Event::Converged { vms: desired.len() });
    } else {
        reporter.emit(Event::NotConverged {
            pending: remaining.steps.iter().map(|s| s.to_string()).collect(),
        });
    }
    Ok(ApplyOutcome {
        plan,
        results,
        remaining,
        elapsed: t0.elapsed(),
    })
}

/// Stop the named VMs (all when empty), cooperatively first.
pub fn down(
    project: &Project,
    reporter: &Reporter,
    only: &[String],
) -> Result<Vec<StepResult>, ApplyError> {
    let _lock = lock_project(project)?;
    let observed = observe_project(project, Depth::Quick);
    for name in only {
        if observed.get(name).is_none() {
            return Err(ApplyError::UnknownVm(name.clone()));
        }
    }
    let steps: Vec<plan::Step> = observed
        .vms
        .values()
        .filter(|o| only.is_empty() || only.contains(&o.name))
        // Stopped VMs with a record left behind (their QEMU died) are swept too:
        // down leaves no stale pidfile, socket or record.
        .filter(|o| match o.state {
            VmState::Running { .. } | VmState::Broken { .. } => true,
            VmState::Stopped { .. } => o.record.is_some(),
        })
        .map(|o| plan::Step::Stop { vm: o.name.clone() })
        .collect();
    let plan = Plan {
        broker: None,
        steps,
        unchanged: Vec::new(),
    };
    let exec = Executor::new(project, reporter);
    let mut results = exec.run(&plan, &[], &observed);
    // The broker goes when no VM of the project runs any more.
    let after = observe_project(project, Depth::Quick);
    let any_running = after
        .vms
        .values()
        .any(|o| !matches!(o.state, VmState::Stopped { .. }));
    if !any_running && matches!(after.broker, BrokerState::Running { .. }) {
        results.push(exec.stop_broker());
    }
    Ok(results)
}
