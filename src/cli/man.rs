//! `castra man`: castra's manual pages, roff generated from the clap
//! definitions. Without `--out` it prints castra(1); with `--out DIR` it
//! writes castra.1 and one castra-COMMAND.1 per command (castra-bus-publish.1
//! for nested ones), as packagers install them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  castra man | man -l -\n  castra man --out /usr/local/share/man/man1"
)]
pub struct ManArgs {
    /// Write every page into this directory instead of castra(1) to stdout.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Prints or writes the pages for `cmd`.
pub fn run(args: &ManArgs, cmd: clap::Command) -> Result<ExitCode> {
    let cmd = cmd.name("castra");
    match &args.out {
        None => std::io::stdout().lock().write_all(&render(&cmd)?)?,
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut cmd = cmd;
            cmd.build();
            for (name, page) in pages(&cmd)? {
                write_page(dir, &name, &page)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every visible command's page, named as `man` looks them up (clap's
/// display name of a built command: `castra-bus-publish`).
fn pages(cmd: &clap::Command) -> Result<Vec<(String, Vec<u8>)>> {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
    let mut out = vec![(name, render(cmd)?)];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() != "help" {
            out.extend(pages(sub)?);
        }
    }
    Ok(out)
}

fn render(cmd: &clap::Command) -> Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    Ok(page)
}

fn write_page(dir: &Path, name: &str, page: &[u8]) -> Result<()> {
    let path = dir.join(format!("{name}.1"));
    crate::fsutil::write_atomic(&path, page)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_commands_get_their_own_pages_and_hidden_ones_none() {
        let mut cmd = clap::Command::new("castra")
            .about("top")
            .subcommand(
                clap::Command::new("bus")
                    .about("the bus")
                    .subcommand(clap::Command::new("publish").about("publish one")),
            )
            .subcommand(clap::Command::new("broker").hide(true));
        cmd.build();
        let names: Vec<_> = pages(&cmd)
            .unwrap()
            .into_iter()
            .map(|(n, page)| {
                assert!(String::from_utf8(page).unwrap().starts_with(".ie"));
                n
            })
            .collect();
        assert_eq!(names, ["castra", "castra-bus", "castra-bus-publish"]);
    }
}
