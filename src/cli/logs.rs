//! `castra logs [VM...] [-f]`: print or follow serial consoles and QEMU logs.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::config::Project;
use crate::layout::StateLayout;
use crate::logs;

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// VMs whose logs to show (default: every VM of castra.toml).
    vms: Vec<String>,
    /// Keep printing new lines as they arrive (survives VM restarts).
    #[arg(short, long)]
    follow: bool,
    /// Also show QEMU's own log (errors from QEMU itself).
    #[arg(long)]
    qemu: bool,
    /// How many lines of each log to print first.
    #[arg(short = 'n', long, default_value_t = 50)]
    lines: usize,
}

pub fn run(args: &LogsArgs, project: &Project) -> Result<ExitCode> {
    let layout = StateLayout::new(&project.state_root);
    let vms: Vec<String> = if args.vms.is_empty() {
        project.vms.iter().map(|v| v.name.clone()).collect()
    } else {
        for vm in &args.vms {
            if !project.vms.iter().any(|v| &v.name == vm) && !layout.vm(vm).dir.exists() {
                let known: Vec<&str> = project.vms.iter().map(|v| v.name.as_str()).collect();
                bail!(
                    "unknown VM {vm:?}; castra.toml declares: {}",
                    known.join(", ")
                );
            }
        }
        args.vms.clone()
    };
    let sources = logs::sources(&layout, &vms, args.qemu);
    let prefix = sources.len() > 1;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    logs::print_tail(&mut out, &sources, args.lines, prefix)?;
    if args.follow {
        logs::follow(&mut out, &sources, prefix)?;
    }
    Ok(ExitCode::SUCCESS)
}
