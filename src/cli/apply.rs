//! `castra plan`, `castra apply [--dry-run] [--watch]` and `castra down`: render
//! what the reconcile layer computed and did.

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::bootstrap::decide::Pending;
use crate::bootstrap::host::RunOutcome;
use crate::config::Project;
use crate::events::{Event, Reporter, fmt_ms};
use crate::layout::StateLayout;
use crate::reconcile::apply::{self as reconcile, ApplyOutcome, observe_project};
use crate::reconcile::execute::StepResult;
use crate::reconcile::plan::Plan;
use crate::reconcile::watch::{self, WATCH_DEPTH};

use super::exit::{EXIT_CHANGES_PENDING, EXIT_ERROR};
use super::out::outln;
use super::project::load_project;

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// Only show the plan (same as `castra plan`, but exits 0 when changes are pending).
    #[arg(long)]
    dry_run: bool,
    /// Keep running: reconcile again when castra.toml changes or a VM dies.
    #[arg(long, conflicts_with = "dry_run")]
    watch: bool,
    /// Print the outcome as JSON (events still go to <state_root>/events.jsonl).
    #[arg(long)]
    json: bool,
    /// How long to wait for each bootstrap, e.g. `90s` or `10m` (default: its
    /// `timeout` plus a minute). apply exits 1 when a bootstrap fails or times out.
    #[arg(long, value_parser = parse_wait)]
    bootstrap_timeout: Option<Duration>,
    /// Once converged, wait until every VM is reachable (and its bootstrap,
    /// if it has one, finished), so `castra exec` works at once.
    #[arg(long, conflicts_with_all = ["dry_run", "watch"])]
    wait: bool,
    /// How long `--wait` waits (default 5m).
    #[arg(long, value_parser = parse_wait, requires = "wait", value_name = "DUR")]
    wait_timeout: Option<Duration>,
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}

#[derive(clap::Args, Debug)]
pub struct DownArgs {
    /// VMs to stop (default: every VM of the project).
    vms: Vec<String>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

pub fn plan(args: &PlanArgs, project: &Project) -> Result<ExitCode> {
    Ok(match show_plan(project, args.json)? {
        Shown::Problems => ExitCode::from(EXIT_ERROR),
        Shown::Changes => ExitCode::from(EXIT_CHANGES_PENDING),
        Shown::NoChanges => ExitCode::SUCCESS,
    })
}

enum Shown {
    NoChanges,
    Changes,
    /// Launch inputs are missing or ports taken: apply would refuse.
    Problems,
}

/// Print the plan (VM steps and pending bootstraps) and any preflight problem.
fn show_plan(project: &Project, json: bool) -> io::Result<Shown> {
    let planned = reconcile::plan_only(project);
    let plan = &planned.plan;
    let pending = reconcile::bootstrap_plan(project, plan, &planned.observed);
    if json {
        let mut v = plan_json(plan, &pending);
        v["problems"] = planned
            .preflight
            .problems
            .iter()
            .map(problem_json)
            .collect();
        outln!("{v}")?;
    } else {
        print_plan(plan, &pending)?;
    }
    if !plan.unplanned.is_empty() {
        eprintln!(
            "error: {} VM(s) could not be planned: their host did not answer (the others are planned above)",
            plan.unplanned.len()
        );
    }
    if !planned.preflight.is_empty() || !plan.unplanned.is_empty() {
        if planned.preflight.is_empty() {
            return Ok(Shown::Problems);
        }
        eprintln!(
            "{}\n\napply would refuse: it changes nothing until these are fixed",
            planned.preflight
        );
        Ok(Shown::Problems)
    } else if !plan.is_empty() || !pending.is_empty() {
        Ok(Shown::Changes)
    } else {
        Ok(Shown::NoChanges)
    }
}

fn problem_json(d: &crate::config::Diagnostic) -> serde_json::Value {
    json!({
        "message": d.message,
        "line": d.location.as_ref().map(|l| l.line),
        "column": d.location.as_ref().map(|l| l.column),
        "help": d.help,
        "notes": d.notes,
    })
}

pub fn apply(args: &ApplyArgs, project: &Project) -> Result<ExitCode> {
    if args.dry_run {
        return Ok(match show_plan(project, args.json)? {
            Shown::Problems => ExitCode::from(EXIT_ERROR),
            Shown::Changes | Shown::NoChanges => ExitCode::SUCCESS,
        });
    }
    if args.watch {
        return watch_loop(args, project);
    }
    apply_once(args, project)
}

fn reporter(project: &Project, json: bool) -> Reporter {
    let layout = StateLayout::new(&project.state_root);
    let _ = std::fs::create_dir_all(layout.root());
    Reporter::new(Some(layout.events_file()), !json, false)
}

fn apply_once(args: &ApplyArgs, project: &Project) -> Result<ExitCode> {
    let reporter = reporter(project, args.json);
    let json = args.json;
    let outcome = reconcile::apply(
        project,
        &reporter,
        args.bootstrap_timeout,
        &mut |plan, pending| {
            // A reader gone mid-apply does not stop the apply; the summary
            // below meets the closed pipe and ends quietly.
            if !json && !plan.is_empty() {
                let _ = outln!("{plan}");
            }
            if !json {
                for p in pending {
                    let _ = outln!("{p}");
                }
            }
        },
    )?;
    let unreachable = not_reachable(project);
    if args.json {
        let mut v = outcome_json(&outcome);
        v["not_reachable"] = json!(unreachable);
        outln!("{v}")?;
    } else {
        print_outcome(&outcome, &unreachable)?;
    }
    if !outcome.ok() {
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    if args.wait {
        let names: Vec<String> = project.vms.iter().map(|v| v.name.clone()).collect();
        let timeout = args.wait_timeout.unwrap_or(Duration::from_secs(300));
        match super::wait::wait_for(project, &names, super::wait::For::Bootstrap, timeout) {
            Ok(took) => {
                if !json {
                    println!(
                        "ready: {} ({})",
                        names.join(", "),
                        fmt_ms(took.as_millis() as u64)
                    );
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(EXIT_ERROR));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_plan(plan: &Plan, pending: &[Pending]) -> io::Result<()> {
    outln!("{plan}")?;
    for p in pending {
        outln!("{p}")?;
    }
    Ok(())
}

/// Running VMs whose guest has not proved it is up (from the broker's state file).
fn not_reachable(project: &Project) -> Vec<String> {
    crate::status::collect(project)
        .vms
        .into_iter()
        .filter(|v| v.state == "running" && !v.reachable)
        .map(|v| v.name)
        .collect()
}

/// What a finished apply reports: QEMU runs every VM as declared; whether
/// the guests answer yet is a separate fact, said separately.
fn converged_words(outcome: &ApplyOutcome, unreachable: &[String]) -> String {
    let launched = outcome.plan.unchanged.len()
        + outcome
            .plan
            .steps
            .iter()
            .filter(|s| s.action() != "stop")
            .count();
    let guests = if unreachable.is_empty() {
        "every guest is reachable".to_string()
    } else {
        format!(
            "guests not reachable yet: {} (still booting; `castra status` shows REACHABLE when they answer)",
            unreachable.join(", ")
        )
    };
    format!("{launched} VM(s) running in QEMU as declared; {guests}")
}

fn print_outcome(outcome: &ApplyOutcome, unreachable: &[String]) -> io::Result<()> {
    for b in &outcome.bootstraps {
        if b.ok {
            outln!(
                "bootstrap {}: ok in {}",
                b.vm,
                fmt_ms(b.elapsed.as_millis() as u64)
            )?;
        } else if b.log.as_os_str().is_empty() {
            eprintln!("bootstrap {}: FAILED: {}", b.vm, b.detail);
        } else {
            eprintln!(
                "bootstrap {}: FAILED: {} (log: {})",
                b.vm,
                b.detail,
                b.log.display()
            );
        }
    }
    if outcome.plan.is_empty() {
        if outcome.bootstraps.is_empty() {
            outln!(
                "nothing to do: {} VM(s) already as declared (no-op)",
                outcome.plan.unchanged.len()
            )?;
        } else {
            outln!(
                "no VM changes: {} VM(s) already as declared",
                outcome.plan.unchanged.len()
            )?;
        }
        return Ok(());
    }
    for r in outcome.results.iter().filter(|r| !r.ok) {
        eprintln!("{}: {} failed: {}", r.vm, r.action, r.detail);
    }
    if outcome.converged() {
        outln!(
            "applied in {}: {}",
            fmt_ms(outcome.elapsed.as_millis() as u64),
            converged_words(outcome, unreachable)
        )?;
    } else {
        outln!(
            "applied in {}: NOT converged; still pending:",
            fmt_ms(outcome.elapsed.as_millis() as u64)
        )?;
        for s in &outcome.remaining.steps {
            outln!("  {}", outcome.remaining.step_line(s))?;
        }
        for u in &outcome.remaining.unplanned {
            outln!("  {u}")?;
        }
    }
    Ok(())
}

fn watch_loop(args: &ApplyArgs, first: &Project) -> Result<ExitCode> {
    let mut project = first.clone();
    let config_path = project.config_path.clone();
    loop {
        if let Err(e) = apply_once(args, &project) {
            eprintln!("error: {e:#}");
        }
        let running: Vec<String> = observe_project(&project, WATCH_DEPTH)
            .vms
            .values()
            .filter(|o| o.state.word() == "running")
            .map(|o| o.name.clone())
            .collect();
        reporter(&project, args.json).emit(Event::Watching {
            config: config_path.display().to_string(),
            vms: running.clone(),
        });
        let p = project.clone();
        let trigger = watch::wait_for_trigger(&config_path, &running, &mut || {
            observe_project(&p, WATCH_DEPTH)
                .vms
                .into_values()
                .map(|o| (o.name, o.state))
                .collect()
        })?;
        let reporter = reporter(&project, args.json);
        reporter.emit(Event::WatchTriggered {
            cause: trigger.words(),
        });
        match load_project(Some(&config_path)) {
            Ok(p) => project = p,
            Err(e) => eprintln!("{e:#}\n(keeping the last good castra.toml until this is fixed)"),
        }
    }
}

pub fn down(args: &DownArgs, project: &Project) -> Result<ExitCode> {
    let reporter = reporter(project, args.json).results_on_stdout();
    let results = reconcile::down(project, &reporter, &args.vms)?;
    let ok = results.iter().all(|r| r.ok);
    if args.json {
        outln!(
            "{}",
            json!({ "results": results.iter().map(result_json).collect::<Vec<_>>(), "ok": ok })
        )?;
    } else if results.is_empty() {
        outln!("nothing to stop: no VM of {} is running", project.name)?;
    } else {
        for r in &results {
            let verdict = if r.ok { "" } else { "FAILED: " };
            outln!(
                "{}: {verdict}{} in {}",
                r.vm,
                r.detail,
                fmt_ms(r.elapsed.as_millis() as u64)
            )?;
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ERROR)
    })
}

fn plan_json(plan: &Plan, pending: &[Pending]) -> serde_json::Value {
    json!({
        "changes": !plan.is_empty(),
        "bootstraps": pending.iter().map(|p| json!({
            "vm": p.vm,
            "kind": p.kind,
            "reason": p.why.to_string(),
            "fingerprint": p.fingerprint,
            "text": p.to_string(),
        })).collect::<Vec<_>>(),
        "steps": plan.steps.iter().map(|s| json!({
            "action": s.action(),
            "vm": s.vm(),
            "reason": s.reason(),
            "host": plan.host_of(s.vm()).unwrap_or(crate::config::LOCAL_HOST),
            "text": plan.step_line(s),
        })).collect::<Vec<_>>(),
        "unchanged": plan.unchanged,
        "unplanned": plan.unplanned.iter().map(|u| json!({
            "vm": u.vm,
            "reason": u.why,
        })).collect::<Vec<_>>(),
    })
}

fn result_json(r: &StepResult) -> serde_json::Value {
    json!({
        "vm": r.vm,
        "action": r.action,
        "ok": r.ok,
        "detail": r.detail,
        "elapsed_ms": r.elapsed.as_millis() as u64,
    })
}

fn bootstrap_json(b: &RunOutcome) -> serde_json::Value {
    json!({
        "vm": b.vm,
        "run": b.run,
        "ok": b.ok,
        "detail": b.detail,
        "elapsed_ms": b.elapsed.as_millis() as u64,
        "log": b.log,
    })
}

fn outcome_json(o: &ApplyOutcome) -> serde_json::Value {
    json!({
        "plan": plan_json(&o.plan, &[]),
        "results": o.results.iter().map(result_json).collect::<Vec<_>>(),
        "bootstraps": o.bootstraps.iter().map(bootstrap_json).collect::<Vec<_>>(),
        "converged": o.converged(),
        "ok": o.ok(),
        "noop": o.plan.is_empty() && o.bootstraps.is_empty(),
        "remaining": plan_json(&o.remaining, &[]),
        "elapsed_ms": o.elapsed.as_millis() as u64,
    })
}
