//! `castra status [--json]`: render the non-blocking status report.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::out::outln;
use crate::config::Project;
use crate::status;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the report as JSON (stable field names; see the legend below).
    #[arg(long)]
    json: bool,
}

pub fn run(args: &StatusArgs, project: &Project) -> Result<ExitCode> {
    let report = status::collect(project);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        super::out::text(&status::render::table(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}
