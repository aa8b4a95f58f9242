//! Finding and loading the project a command works on: `--config` or the nearest
//! `castra.toml` upwards from the current directory, with the `CASTRA_ACCEL` override.

use std::path::Path;

use anyhow::{Context, Result};

use crate::config::{self, AccelChoice, Project};

/// Find and load castra.toml, then apply `CASTRA_ACCEL`.
pub fn load_project(explicit: Option<&Path>) -> Result<Project> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let cwd = std::env::current_dir().context("cannot read the current directory")?;
            config::discover(&cwd).with_context(|| {
                format!(
                    "no {} in {} or any parent directory; run `castra init` to write one, or pass --config",
                    config::CONFIG_FILE_NAME,
                    cwd.display()
                )
            })?
        }
    };
    // Kept as its type: `main` prints it as the diagnostics it renders.
    let mut project = config::load(&path)?;
    if let Ok(value) = std::env::var("CASTRA_ACCEL") {
        let choice: AccelChoice = value
            .parse()
            .map_err(|e| anyhow::anyhow!("CASTRA_ACCEL={value:?}: {e}"))?;
        for vm in &mut project.vms {
            vm.accel = choice;
        }
    }
    Ok(project)
}
