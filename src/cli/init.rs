//! `castra init`: write the commented example castra.toml.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cli::out::outln;
use crate::config::{CONFIG_FILE_NAME, PortBlock, block_for, init_template};

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
    let dir = std::path::absolute(path.parent().unwrap_or(Path::new(".")))?;
    let block = free_block(block_for(&dir));
    std::fs::write(&path, init_template(block))?;
    outln!("wrote {}", path.display())?;
    outln!(
        "ports: broker {}, forwards from {} (block {}..{} of this project)",
        block.broker(),
        block.port(0),
        block.base(),
        block.base() + crate::config::project_ports::BLOCK_SIZE - 1
    )?;
    if crate::image::locate().is_ok() {
        outln!("next: `castra plan`, then `castra apply` (the default image is built)")?;
    } else {
        outln!("next: `castra image build` (once), then `castra plan` and `castra apply`")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The project's block, or the next one whose every port is free now
/// (another project, or any program, may hold ports of the first).
fn free_block(first: PortBlock) -> PortBlock {
    let mut block = first;
    for _ in 0..crate::config::project_ports::BLOCKS {
        let free = block
            .ports()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return block;
        }
        block = block.next();
    }
    first
}
