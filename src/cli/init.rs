//! `castra init`: write the commented example castra.toml.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cli::out::outln;
use crate::config::{CONFIG_FILE_NAME, INIT_TEMPLATE};

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Directory to write castra.toml into (default: the current directory).
    dir: Option<PathBuf>,
    /// Overwrite an existing castra.toml.
    #[arg(long)]
    force: bool,
}

pub fn run(args: &InitArgs, config: Option<&Path>) -> Result<ExitCode> {
    let path = match (config, &args.dir) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(d)) => d.join(CONFIG_FILE_NAME),
        (None, None) => std::env::current_dir()?.join(CONFIG_FILE_NAME),
    };
    if path.exists() && !args.force {
        bail!(
            "{} already exists; edit it, or pass --force to overwrite it",
            path.display()
        );
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, INIT_TEMPLATE)?;
    outln!("wrote {}", path.display())?;
    outln!("next: `castra image build` (once), then `castra plan` and `castra apply`")?;
    Ok(ExitCode::SUCCESS)
}
