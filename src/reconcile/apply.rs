//! `apply` and `down` end to end: lock, observe, plan, check ports, execute,
//! observe again, then run the bootstraps the mode table asks for. This is
//! the one place that sequences the reconcile phases; the CLI only renders
//! what it returns.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::bootstrap::decide::{Launch, Pending};
use crate::bootstrap::host::{self as bootstrap, RunOutcome};

use crate::broker::control::BrokerState;
use crate::config::Project;
use crate::events::{Event, Reporter};
use crate::layout::StateLayout;

use super::desired::{self, DesiredVm};
use super::execute::{Executor, StepResult};
use super::holder::{self, ProjectInfo};
use super::hosts;
use super::lock::{self, LockError, ProjectLock};
use super::observe::{self, Depth, Observed, VmState};
use super::plan::{self, BrokerStep, Plan};
use super::preflight::{self, Preflight};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A launch input is missing or a port is taken: nothing was touched.
    #[error(
        "{0}\n\nnothing was changed: every VM keeps running as it was (fix the above, then apply again)"
    )]
    Preflight(Preflight),
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
    /// The bootstraps this apply ran (or found due but could not run).
    pub bootstraps: Vec<RunOutcome>,
    pub elapsed: Duration,
}

impl ApplyOutcome {
    pub fn converged(&self) -> bool {
        self.remaining.is_empty()
            && self.remaining.unplanned.is_empty()
            && self.results.iter().all(|r| r.ok)
    }
    /// Converged, and every bootstrap it ran succeeded.
    pub fn ok(&self) -> bool {
        self.converged() && self.bootstraps.iter().all(|b| b.ok)
    }
}

/// The bootstraps `apply` would run after this plan: VMs the plan (re)starts
/// count as a new launch; others keep the launch they run.
pub fn bootstrap_plan(project: &Project, plan: &Plan, observed: &Observed) -> Vec<Pending> {
    let resolved = bootstrap::resolve(project);
    pending_for(project, &resolved, plan, observed)
}

fn pending_for(
    project: &Project,
    resolved: &[bootstrap::Resolved],
    plan: &Plan,
    observed: &Observed,
) -> Vec<Pending> {
    let layout = StateLayout::new(&project.state_root);
    let launches: BTreeMap<String, Launch> = resolved
        .iter()
        .map(|r| {
            let restarts = plan.steps.iter().any(|s| s.vm() == r.vm);
            let running = observed
                .get(&r.vm)
                .filter(|o| matches!(o.state, VmState::Running { .. }))
                .and_then(|o| o.record.as_ref())
                .map(|rec| rec.launched_at_ms);
            let launch = match (restarts, running) {
                (false, Some(launched_ms)) => Launch::Running { launched_ms },
                _ => Launch::Starting,
            };
            (r.vm.clone(), launch)
        })
        .collect();
    let records = bootstrap::read_records(&layout, resolved);
    bootstrap::pending(resolved, &launches, &records)
}

/// What `plan` found: the steps, and the launch inputs that are not ready.
pub struct Planned {
    pub plan: Plan,
    pub desired: Vec<DesiredVm>,
    pub observed: Observed,
    pub preflight: Preflight,
}

/// Observe + plan + preflight without changing anything (and without the
/// lock: a plan is a read).
pub fn plan_only(project: &Project) -> Planned {
    let desired = desired::resolve(project);
    let observed = observe_project(project, Depth::Deep);
    let plan = plan::plan(&desired, &observed);
    let preflight = preflight::check(project, &plan, &desired, &observed);
    Planned {
        plan,
        desired,
        observed,
        preflight,
    }
}

/// The local backend's VMs, then what the libvirt hosts hold (`hosts.rs`).
pub fn observe_project(project: &Project, depth: Depth) -> Observed {
    observe_with(project, depth, depth)
}

/// Local VMs at `local` depth, hosts at `hosts` depth (`down` reads local
/// state quickly but must ask hosts what runs before stopping it).
fn observe_with(project: &Project, local: Depth, hosts_depth: Depth) -> Observed {
    let names: Vec<String> = project.vms.iter().map(|v| v.name.clone()).collect();
    let mut observed = observe::observe(&StateLayout::new(&project.state_root), &names, local);
    if !project.hosts.is_empty() {
        let seen = hosts::snapshots(project, hosts_depth);
        hosts::merge(project, &mut observed, &seen, crate::events::now_ms());
    }
    observed
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

/// Converge, then bootstrap: `on_plan` sees the plan and the pending
/// bootstraps before anything changes; `bootstrap_wait` bounds each
/// bootstrap's wait (default: its timeout plus a grace).
pub fn apply(
    project: &Project,
    reporter: &Reporter,
    bootstrap_wait: Option<Duration>,
    on_plan: &mut dyn FnMut(&Plan, &[Pending]),
) -> Result<ApplyOutcome, ApplyError> {
    let t0 = Instant::now();
    let _lock = lock_project(project)?;
    let Planned {
        plan,
        desired,
        observed,
        preflight,
    } = plan_only(project);
    if !preflight.is_empty() {
        return Err(ApplyError::Preflight(preflight));
    }
    holder::write_project_info(
        &StateLayout::new(&project.state_root),
        &ProjectInfo {
            name: project.name.clone(),
            config: project.config_path.clone(),
            broker_port: project.broker.port,
        },
    );
    hosts::write_targets(project);
    let resolved = bootstrap::resolve(project);
    let pending = pending_for(project, &resolved, &plan, &observed);
    on_plan(&plan, &pending);
    if plan.is_empty() {
        let bootstraps = run_bootstraps(
            project,
            &resolved,
            &pending,
            &observed,
            bootstrap_wait,
            reporter,
        );
        return Ok(ApplyOutcome {
            remaining: plan.clone(),
            plan,
            results: Vec::new(),
            bootstraps,
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
    let bootstraps = run_bootstraps(
        project,
        &resolved,
        &pending,
        &again,
        bootstrap_wait,
        reporter,
    );
    Ok(ApplyOutcome {
        plan,
        results,
        remaining,
        bootstraps,
        elapsed: t0.elapsed(),
    })
}

/// Run the pending bootstraps of VMs that run now; a VM that does not run
/// gets a failed outcome instead (its bootstrap stays due).
fn run_bootstraps(
    project: &Project,
    resolved: &[bootstrap::Resolved],
    pending: &[Pending],
    observed: &Observed,
    wait: Option<Duration>,
    reporter: &Reporter,
) -> Vec<RunOutcome> {
    let mut launches = BTreeMap::new();
    let mut runnable = Vec::new();
    let mut out = Vec::new();
    for p in pending {
        let launched = observed
            .get(&p.vm)
            .filter(|o| matches!(o.state, VmState::Running { .. }))
            .and_then(|o| o.record.as_ref())
            .map(|r| r.launched_at_ms);
        match launched {
            Some(ms) => {
                launches.insert(p.vm.clone(), ms);
                runnable.push(p.clone());
            }
            None => out.push(RunOutcome {
                vm: p.vm.clone(),
                run: String::new(),
                ok: false,
                detail: "the VM is not running, so its bootstrap did not run".into(),
                elapsed: Duration::ZERO,
                log: Default::default(),
            }),
        }
    }
    out.extend(bootstrap::run_all(
        project, resolved, &runnable, &launches, wait, reporter,
    ));
    out
}

/// Stop the named VMs (all when empty), cooperatively first.
pub fn down(
    project: &Project,
    reporter: &Reporter,
    only: &[String],
) -> Result<Vec<StepResult>, ApplyError> {
    let _lock = lock_project(project)?;
    let observed = observe_with(project, Depth::Quick, Depth::Deep);
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
            // Its host does not answer: nothing can be stopped there now.
            VmState::Unknown { .. } => false,
        })
        .map(|o| plan::Step::Stop { vm: o.name.clone() })
        .collect();
    let hosts = steps
        .iter()
        .filter_map(|s| {
            let host = observed.get(s.vm())?.host.clone()?;
            Some((s.vm().to_owned(), host))
        })
        .collect();
    let plan = Plan {
        steps,
        hosts,
        ..Plan::default()
    };
    let exec = Executor::new(project, reporter);
    let mut results = exec.run(&plan, &[], &observed);
    // VMs whose host does not answer cannot be stopped now: say so (down is not done).
    for o in observed.vms.values() {
        if let (true, VmState::Unknown { why }) =
            (only.is_empty() || only.contains(&o.name), &o.state)
        {
            results.push(StepResult {
                vm: o.name.clone(),
                action: "stop",
                ok: false,
                detail: format!("not stopped: {why}"),
                elapsed: Duration::ZERO,
            });
        }
    }
    // The broker goes when no VM of the project runs any more.
    let after = observe_with(project, Depth::Quick, Depth::Deep);
    let any_running = after
        .vms
        .values()
        .any(|o| !matches!(o.state, VmState::Stopped { .. }));
    if !any_running && matches!(after.broker, BrokerState::Running { .. }) {
        results.push(exec.stop_broker());
    }
    Ok(results)
}
