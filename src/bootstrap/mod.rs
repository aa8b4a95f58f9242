//! Bootstrap: after `apply` converges, run each VM's bootstrap plan inside
//! the guest over the bus (no SSH) and keep a durable record of it.
//!
//! - `decide`: the fingerprint and the mode decision table (pure).
//! - `wire`: the request and report messages, and secret sealing (pure,
//!   shared with the agent).
//! - `redact`: masking secret values (pure).
//! - `runner`: the guest side, running `/bin/sh -c` with bounded output.
//! - `record`: `vms/<vm>/bootstrap.json` and the run logs.
//! - `host`: resolving plans (reads script files), planning against the
//!   records, and running a request to completion through the broker.
//!
//! **Invariant:** secret env values appear in no file and no output of
//! castra: they are sealed on the bus and masked in logs.

pub mod decide;
pub mod host;
pub mod record;
pub mod redact;
pub mod runner;
pub mod wire;
