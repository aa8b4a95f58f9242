//! Data-driven tests of the whole loader, one submodule per subject: bad
//! configs -> rendered errors (`errors`), good configs -> the `Project`
//! fields (`keys`), replica expansion and forwards (`forwards`), the
//! `castra init` template and docs/CONFIG.md (`template`), `load` on real
//! files (`files`) and bootstraps (`bootstrap`). The helpers below load
//! text as `castra.toml` expecting an error (`render_err`) or as
//! `/srv/demo/castra.toml` expecting a project (`ok`).

use super::*;
use std::path::Path;

mod bootstrap;
mod errors;
mod files;
mod forwards;
mod hosts;
mod keys;
mod template;

fn render_err(text: &str) -> String {
    match load_str(text, Path::new("castra.toml")) {
        Ok(p) => panic!("expected an error, loaded {p:#?}"),
        Err(e) => e.to_string(),
    }
}

fn ok(text: &str) -> Project {
    load_str(text, Path::new("/srv/demo/castra.toml")).unwrap_or_else(|e| panic!("{e}"))
}
