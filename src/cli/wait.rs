//! `castra wait VM... [--for reachable|bootstrap] [--timeout DUR]` and
//! `castra apply --wait`: block until guests can be used, instead of every
//! script polling `status --json`. Reads the same non-blocking status as
//! `castra status` until each VM is reachable (its agent holds a session
//! with the broker, so `castra exec` works) or, with `bootstrap`, its
//! bootstrap finished ok (VMs without one: reachable). A stopped VM or a
//! failed bootstrap ends the wait at once.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::config::Project;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum For {
    /// The guest's agent holds a session with the broker.
    Reachable,
    /// Reachable, and its bootstrap (if it has one) finished ok.
    Bootstrap,
}

#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// VMs to wait for (default: every VM of castra.toml).
    vms: Vec<String>,
    /// What to wait for.
    #[arg(long = "for", value_enum, default_value = "reachable")]
    what: For,
    /// Give up after DUR (exit 1).
    #[arg(long, default_value = "5m", value_parser = crate::config::parse_duration, value_name = "DUR")]
    timeout: Duration,
}

pub fn run(args: &WaitArgs, project: &Project) -> Result<ExitCode> {
    let names = if args.vms.is_empty() {
        project.vms.iter().map(|v| v.name.clone()).collect()
    } else {
        args.vms.clone()
    };
    match wait_for(project, &names, args.what, args.timeout) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(super::exit::EXIT_ERROR))
        }
    }
}

/// What one VM's status says: ready, not yet (why), or never (why).
enum Check {
    Ready,
    NotYet(String),
    Never(String),
}

fn check(v: &crate::status::VmStatus, what: For) -> Check {
    if v.state != "running" {
        return Check::Never(format!(
            "vm {:?} is {} ({}); `castra apply` starts it",
            v.name,
            v.state,
            v.reasons.join("; ")
        ));
    }
    if !v.reachable {
        return Check::NotYet(format!("vm {:?} is not reachable yet", v.name));
    }
    match (what, &v.bootstrap) {
        (For::Reachable, _) | (For::Bootstrap, None) => Check::Ready,
        (For::Bootstrap, Some(b)) => match b.state.as_str() {
            "ok" => Check::Ready,
            "failed" => Check::Never(format!(
                "the bootstrap of vm {:?} failed: {}",
                v.name,
                b.error.as_deref().unwrap_or("see its log")
            )),
            other => Check::NotYet(format!("the bootstrap of vm {:?} is {other}", v.name)),
        },
    }
}

/// Wait until every VM in `names` is ready; how long it took.
pub(super) fn wait_for(
    project: &Project,
    names: &[String],
    what: For,
    timeout: Duration,
) -> Result<Duration, String> {
    for name in names {
        if !project.vms.iter().any(|v| &v.name == name) {
            return Err(format!("no VM named {name:?} in castra.toml"));
        }
    }
    let start = Instant::now();
    loop {
        let report = crate::status::collect(project);
        let mut waiting = Vec::new();
        for name in names {
            let Some(v) = report.vms.iter().find(|v| &v.name == name) else {
                waiting.push(format!("vm {name:?} has no status yet"));
                continue;
            };
            match check(v, what) {
                Check::Ready => {}
                Check::NotYet(why) => waiting.push(why),
                Check::Never(why) => return Err(why),
            }
        }
        if waiting.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "timed out after {} s: {}",
                timeout.as_secs(),
                waiting.join("; ")
            ));
        }
        // Status is files (state.json, records): polling it is cheap.
        std::thread::sleep(Duration::from_millis(100));
    }
}
