//! `castra broker` (hidden): run the host broker in the foreground until
//! SIGTERM/SIGINT. `apply` starts it detached with stdout/stderr redirected
//! to `<state_root>/broker/broker.log`; the broker itself lives in
//! `crate::broker`. This module only maps flags to `BrokerOptions`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::broker::wire::frame;
use crate::broker::{self, BrokerOptions};
use crate::broker::{buslog, context, hub, session};
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
    #[arg(long, default_value_t = context::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Let a handshake-only hello without a token mark its VM reachable.
    #[arg(long)]
    pub allow_tokenless_handshake: bool,
    /// Capacity of each bus session's outbound queue, in frames.
    #[arg(long, value_name = "FRAMES", default_value_t = hub::DEFAULT_QUEUE_FRAMES)]
    pub bus_queue_frames: usize,
    /// Messages a bus session may hold delivered but not acked; then delivery
    /// pauses (further messages wait in its queue) until acks come.
    #[arg(long, value_name = "N", default_value_t = session::DEFAULT_UNACKED_WINDOW)]
    pub bus_unacked_window: u32,
    /// Retries of a full queue before `bye slow_consumer`.
    #[arg(long, default_value_t = hub::DEFAULT_MAX_RETRIES)]
    pub slow_consumer_retries: u32,
    /// Time between those retries.
    #[arg(long, value_name = "MS", default_value_t = hub::DEFAULT_RETRY_INTERVAL.as_millis() as u64)]
    pub slow_consumer_retry_ms: u64,
    /// Size at which a bus log file (`logs/bus/*.log`) rotates to `.1`.
    #[arg(long, value_name = "BYTES", default_value_t = buslog::DEFAULT_ROTATE_BYTES)]
    pub bus_log_max_bytes: u64,
    /// Rotated bus log files kept per log (`.1` newest .. `.N` oldest).
    #[arg(long, value_name = "N", default_value_t = buslog::DEFAULT_ROTATE_KEEP)]
    pub bus_log_keep: u32,
}

pub fn run(args: &BrokerArgs) -> Result<ExitCode> {
    let mut opts = BrokerOptions::new(args.state_root.clone(), args.port);
    opts.session.hello_timeout_ms = args.hello_timeout_ms;
    opts.session.heartbeat_timeout_ms = args.heartbeat_timeout_ms;
    opts.session.allow_tokenless_handshake = args.allow_tokenless_handshake;
    opts.session.unacked_window = args.bus_unacked_window.max(1);
    opts.frame_limit = args.frame_limit;
    opts.max_connections = args.max_connections;
    opts.hub = hub::HubConfig {
        queue_frames: args.bus_queue_frames.max(1),
        max_retries: args.slow_consumer_retries,
        retry_interval: std::time::Duration::from_millis(args.slow_consumer_retry_ms.max(1)),
    };
    opts.bus_log_rotation = buslog::Rotation {
        max_bytes: args.bus_log_max_bytes.max(1),
        keep: args.bus_log_keep.max(1),
    };
    broker::run(opts)?;
    Ok(ExitCode::SUCCESS)
}
