//! castra: declare a project's QEMU virtual machines in `castra.toml` and
//! converge them with `castra apply`.
//!
//! The crate is a library with a thin binary (`src/main.rs`). See
//! `docs/ARCHITECTURE.md` for the code map.

pub mod agent;
pub mod bootstrap;
pub mod broker;
pub mod cache;
pub mod clean;
pub mod cli;
pub mod config;
pub mod cp;
pub mod events;
pub mod fsutil;
pub mod image;
pub mod layout;
pub mod libvirt;
pub mod logs;
pub mod qemu;
pub mod reconcile;
pub mod status;
