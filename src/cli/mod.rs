//! Command-line interface.
//!
//! In this branch only the hidden `castra broker` subcommand is wired; the
//! lead's CLI on main carries the other commands.

pub mod broker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "castra", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the host broker in the foreground (started by `apply`).
    #[command(hide = true)]
    Broker(broker::BrokerArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Broker(args) => broker::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
