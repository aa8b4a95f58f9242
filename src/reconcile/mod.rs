//! Reconcile: `observe` what runs -> `plan` (pure) -> `execute` idempotent
//! steps -> observe again. Only a fresh observe with an empty plan counts as
//! converged.
//!
//! **Invariant:** `plan` does no I/O; `observe` never fails as a whole (each VM
//! is running, stopped or broken-with-reasons); `execute` assumes the last run
//! may have died half-way and checks every property on its own.

pub mod apply;
pub mod desired;
pub mod execute;
mod execute_host;
pub mod holder;
pub mod hosts;
mod launch_prep;
pub mod lock;
pub mod observe;
mod overlay;
pub mod plan;
pub mod ports;
pub mod preflight;
pub mod record;
pub mod secret;
pub mod step_error;
mod stop_words;
pub mod watch;
