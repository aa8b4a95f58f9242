//! `castra clean [--dry-run] [--json]`: remove stopped VMs' state and say how much was reclaimed.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use crate::clean;
use crate::cli::out::outln;
use crate::config::Project;
use crate::layout::StateLayout;
use crate::reconcile::apply::{lock_project, observe_project};
use crate::reconcile::observe::Depth;

#[derive(clap::Args, Debug)]
pub struct CleanArgs {
    /// Only list what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &CleanArgs, project: &Project) -> Result<ExitCode> {
    let _lock = lock_project(project)?;
    let layout = StateLayout::new(&project.state_root);
    let observed = observe_project(project, Depth::Quick);
    let (items, skipped) = clean::candidates(&layout, &observed);
    let (reclaimed, errors) = if args.dry_run {
        (items.iter().map(|i| i.bytes).sum(), Vec::new())
    } else {
        clean::remove(&items)
    };
    if args.json {
        outln!(
            "{}",
            json!({ "dry_run": args.dry_run, "removed": items, "skipped": skipped,
                    "reclaimed_bytes": reclaimed, "errors": errors })
        )?;
    } else {
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for i in &items {
            outln!("{verb} {} ({})", i.path.display(), human_bytes(i.bytes))?;
        }
        for s in &skipped {
            outln!(
                "kept {} ({}; run `castra down {}` first)",
                s.vm,
                s.state,
                s.vm
            )?;
        }
        for e in &errors {
            eprintln!("error: {e}");
        }
        let verb = if args.dry_run {
            "would reclaim"
        } else {
            "reclaimed"
        };
        outln!("{verb} {}", human_bytes(reclaimed))?;
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::exit::EXIT_ERROR)
    })
}

pub(super) fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
