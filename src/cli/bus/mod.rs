//! `castra bus`: the host's side of the bus. `publish` goes through the
//! broker's Unix socket and succeeds only on the durable ack; `subscribe`
//! holds a live host session on that socket (`subscribe.rs`); `tail` reads
//! and follows the bus log files directly, never waiting on the broker
//! (`tail.rs`, with `--since` parsed in `since.rs`, through the crate's one
//! follower, `broker::buslog::follow`). Both print messages as `broker::consumer` renders
//! them.

mod since;
mod subscribe;
mod tail;

use std::io::{self, Read};
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::broker::host_client;
use crate::broker::wire::frame::DEFAULT_FRAME_LIMIT;
use crate::cli::out::outln;
use crate::config::Project;
use crate::layout::StateLayout;

#[derive(clap::Args, Debug)]
pub struct BusArgs {
    #[command(subcommand)]
    command: BusCommand,
}

#[derive(clap::Subcommand, Debug)]
enum BusCommand {
    /// Publish one message; exit 0 only once the broker has made it durable (prints its seq).
    Publish(PublishArgs),
    /// Receive messages live as a host consumer (a bus session on the broker's socket).
    #[command(after_help = subscribe::AFTER_HELP)]
    Subscribe(subscribe::SubscribeArgs),
    /// Print (and follow) the bus log; reads files only, never waits on the broker.
    #[command(after_help = tail::AFTER_HELP)]
    Tail(tail::TailArgs),
}

#[derive(clap::Args, Debug)]
struct PublishArgs {
    /// Topic: `broadcast`, `vm:<name>` (that VM's subscribers) or any name.
    #[arg(long, default_value = crate::broker::wire::topic::BROADCAST)]
    topic: String,
    /// The payload as JSON; `-` or nothing reads it from stdin.
    payload: Option<String>,
    /// Send the payload as a JSON string instead of parsing it as JSON.
    #[arg(long)]
    text: bool,
    /// An id echoed in the ack and stored in the log (a string).
    #[arg(long)]
    id: Option<String>,
}

pub fn run(args: &BusArgs, project: &Project) -> Result<ExitCode> {
    let layout = StateLayout::new(&project.state_root);
    match &args.command {
        BusCommand::Publish(p) => publish(p, &layout),
        BusCommand::Subscribe(s) => subscribe::run(s, &layout),
        BusCommand::Tail(t) => tail::run(t, &layout),
    }
}

fn publish(args: &PublishArgs, layout: &StateLayout) -> Result<ExitCode> {
    let raw = match args.payload.as_deref() {
        Some("-") | None => {
            let mut s = String::new();
            io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the payload from stdin")?;
            s
        }
        Some(p) => p.to_owned(),
    };
    let payload = if args.text {
        Value::String(raw.strip_suffix('\n').unwrap_or(&raw).to_owned())
    } else {
        serde_json::from_str(&raw)
            .map_err(|e| host_client::PublishError::InvalidJson(e.to_string()))?
    };
    let seq = host_client::publish(
        &layout.broker_socket(),
        &args.topic,
        payload,
        args.id.clone().map(Value::String),
        DEFAULT_FRAME_LIMIT as usize,
    )?;
    outln!("{seq}")?;
    Ok(ExitCode::SUCCESS)
}
