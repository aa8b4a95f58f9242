//! `castra broker` (hidden): run the host broker in the foreground until
//! SIGTERM/SIGINT. `apply` starts it detached with stdout/stderr redirected
//! to `<state_root>/broker/broker.log`; the broker itself lives in
//! `crate::broker`. This module only maps flags to `BrokerOptions`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::broker::{self, BrokerOptions};
use crate::broker::{frame, server, session};
use crate::config::DEFAULT_BROKER_PORT;

#[derive(clap::Args, Debug)]
pub struct BrokerArgs {
    /// The project's state root (token files under vms/<vm>/token, broker files under broker/).
    #[arg(long, value_name = "DIR")]
    pub state_root: PathBuf,
    /// Guest port on 127.0.0.1 (`[broker] port`).
    #[arg(long, default_value_t = DEFAULT_BROKER_PORT)]
    pub port: u16,
    /// Time a client has to send its hello line.
    #[arg(long, value_name = "MS", default_value_t = session::DEFAULT_HELLO_TIMEOUT_MS)]
    pub hello_timeout_ms: u64,
    /// Silence after which a bus session is closed with `bye heartbeat_timeout`.
    #[arg(long, value_name = "MS", default_value_t = session::DEFAULT_HEARTBEAT_TIMEOUT_MS)]
    pub heartbeat_timeout_ms: u64,
    /// Largest frame body in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = frame::DEFAULT_FRAME_LIMIT)]
    pub frame_limit: u32,
    /// Most simultaneous guest connections.
    #[arg(long, default_value_t = server::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Let a handshake-only hello without a token mark its VM reachable.
    #[arg(long)]
    pub allow_tokenless_handshake: bool,
}

pub fn run(args: &BrokerArgs) -> Result<ExitCode> {
    let mut opts = BrokerOptions::new(args.state_root.clone(), args.port);
    opts.session.hello_timeout_ms = args.hello_timeout_ms;
    opts.session.heartbeat_timeout_ms = args.heartbeat_timeout_ms;
    opts.session.allow_tokenless_handshake = args.allow_tokenless_handshake;
    opts.frame_limit = args.frame_limit;
    opts.max_connections = args.max_connections;
    broker::run(opts)?;
    Ok(ExitCode::SUCCESS)
}
