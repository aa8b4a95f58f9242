//! `castra plan`, `castra apply [--dry-run] [--watch]` and `castra down`: render
//! what the reconcile layer computed and did.

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
    Ok(if show_plan(project, args.json)? {
        ExitCode::from(EXIT_CHANGES_PENDING)
    } else {
        ExitCode::SUCCESS
    })
}

/// Print the plan (VM steps and pending bootstraps); true when it has any.
fn show_plan(project: &Project, json: bool) -> Result<bool> {
    let (plan, _, observed) = reconcile::plan_only(project)?;
    let pending = reconcile::bootstrap_plan(project, &plan, &observed);
    if json {
        println!("{}", plan_json(&plan, &pending));
    } else {
        print_plan(&plan, &pending);
    }
    Ok(!plan.is_empty() || !pending.is_empty())
}

pub fn apply(args: &ApplyArgs, project: &Project) -> Result<ExitCode> {
    if args.dry_run {
        show_plan(project, args.json)?;
        return Ok(ExitCode::SUCCESS);
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
            if !json && !plan.is_empty() {
                println!("{plan}");
            }
            if !json {
                for p in pending {
                    println!("{p}");
                }
            }
        },
    )?;
    if args.json {
        println!("{}", outcome_json(&outcome));
    } else {
        print_outcome(&outcome);
    }
    Ok(if outcome.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ERROR)
    })
}

fn print_plan(plan: &Plan, pending: &[Pending]) {
    println!("{plan}");
    for p in pending {
        println!("{p}");
    }
}

fn print_outcome(outcome: &ApplyOutcome) {
    for b in &outcome.bootstraps {
        if b.ok {
            println!(
                "bootstrap {}: ok in {}",
                b.vm,
                fmt_ms(b.elapsed.as_millis() as u64)
            );
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
            println!(
                "nothing to do: {} VM(s) already as declared (no-op)",
                outcome.plan.unchanged.len()
            );
        } else {
            println!(
                "no VM changes: {} VM(s) already as declared",
                outcome.plan.unchanged.len()
            );
        }
        return;
    }
    for r in outcome.results.iter().filter(|r| !r.ok) {
        eprintln!("{}: {} failed: {}", r.vm, r.action, r.detail);
    }
    if outcome.converged() {
        println!(
            "applied in {}: converged",
            fmt_ms(outcome.elapsed.as_millis() as u64)
        );
    } else {
        println!(
            "applied in {}: NOT converged; still pending:",
            fmt_ms(outcome.elapsed.as_millis() as u64)
        );
        for s in &outcome.remaining.steps {
            println!("  {s}");
        }
    }
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
        eprintln!(
            "watching {} and {} VM(s); Ctrl-C to stop watching (VMs keep running)",
            config_path.display(),
            running.len()
        );
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
        println!(
            "{}",
            json!({ "results": results.iter().map(result_json).collect::<Vec<_>>(), "ok": ok })
        );
    } else if results.is_empty() {
        println!("nothing to stop: no VM of {} is running", project.name);
    } else {
        for r in &results {
            let verdict = if r.ok { "" } else { "FAILED: " };
            println!(
                "{}: {verdict}{} in {}",
                r.vm,
                r.detail,
                fmt_ms(r.elapsed.as_millis() as u64)
            );
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
            "text": s.to_string(),
        })).collect::<Vec<_>>(),
        "unchanged": plan.unchanged,
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
