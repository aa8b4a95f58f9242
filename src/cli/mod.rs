//! Command-line interface: clap definitions, dispatch, and the mapping of
//! errors to exit codes. Each command's rendering lives in its own module;
//! the work itself lives in the library (reconcile, status, logs, clean).

mod apply;
pub mod broker;
pub mod bus;
mod clean;
mod completions;
mod cp;
mod drive;
mod exec;
pub mod exit;
pub mod image;
mod init;
mod logs;
mod man;
pub(crate) mod out;
pub mod project;
mod shell;
mod status;
pub mod stream;
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

use crate::config::ConfigError;
use exit::{EXIT_CODES, EXIT_ERROR};
pub use project::load_project;

#[derive(Parser, Debug)]
#[command(
    name = "castra",
    version,
    about = "Declare a project's QEMU VMs in castra.toml and converge them.",
    long_about = "Declare a project's QEMU VMs in castra.toml and converge them.\n\n\
        `castra init` writes an example, `castra image build` builds the default guest image,\n\
        `castra plan` shows what would change, `castra apply` makes it so, `castra status`\n\
        tells what runs, `castra down` stops VMs cooperatively.",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Path of castra.toml (default: search upward from the current directory).
    #[arg(short, long, global = true, env = "CASTRA_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a commented example castra.toml into the current directory.
    Init(init::InitArgs),
    /// Show what `apply` would change. Exit 0: nothing; 2: changes pending; 1: error.
    Plan(apply::PlanArgs),
    /// Converge the VMs to castra.toml: start, restart (on drift) and stop.
    Apply(apply::ApplyArgs),
    /// Show every VM's state at once, without waiting on any VM.
    #[command(after_help = crate::status::render::LEGEND)]
    Status(status::StatusArgs),
    /// Stop VMs (all, or those named): ACPI powerdown, then SIGTERM, then SIGKILL.
    Down(apply::DownArgs),
    /// Show (or follow) VM serial consoles and QEMU logs.
    Logs(logs::LogsArgs),
    /// Remove overlays, logs and stale state of stopped VMs.
    Clean(clean::CleanArgs),
    /// Build or locate the default guest image.
    Image(image::ImageArgs),
    /// Publish to the bus (durable ack), subscribe as a host consumer, or tail its log.
    Bus(bus::BusArgs),
    /// Run a command in guests over the broker (no SSH): `castra exec web -- uname -a`.
    Exec(exec::ExecArgs),
    /// An interactive shell (a terminal) in a guest.
    Shell(shell::ShellArgs),
    /// Copy files or directories into or out of a guest: `castra cp [-r] SRC web:/path`.
    Cp(cp::CpArgs),
    /// Wait until VMs are reachable (or their bootstrap finished).
    Wait(wait::WaitArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions(completions::CompletionsArgs),
    /// Print castra's manual page, or write every command's page into a directory.
    Man(man::ManArgs),
    /// Run the host broker in the foreground (started by `apply`; not for direct use).
    #[command(hide = true)]
    Broker(broker::BrokerArgs),
    /// The original castra's `up`: says to use `apply`.
    #[command(hide = true)]
    Up {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Entry point used by `src/main.rs`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            // `--help` and `--version` come here too, and are no error.
            if !err.use_stderr() {
                return ExitCode::SUCCESS;
            }
            let args: Vec<_> = std::env::args_os().skip(1).collect();
            return ExitCode::from(exit::usage_error_code(&args));
        }
    };
    match run(cli) {
        Ok(code) => code,
        // The reader of our output went away (`castra plan | head -1`): done.
        Err(err) if out::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            match err.downcast_ref::<ConfigError>() {
                // Rendered as diagnostics, with their own `error:` lines.
                Some(config) => eprintln!("{config}"),
                None => eprintln!("error: {err:#}"),
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let config = cli.config.as_deref();
    match &cli.command {
        Command::Init(args) => init::run(args, config),
        Command::Plan(args) => apply::plan(args, &load_project(config)?),
        Command::Apply(args) => apply::apply(args, &load_project(config)?),
        Command::Status(args) => status::run(args, &load_project(config)?),
        Command::Down(args) => apply::down(args, &load_project(config)?),
        Command::Logs(args) => logs::run(args, &load_project(config)?),
        Command::Clean(args) => clean::run(args, &load_project(config)?),
        Command::Image(args) => image::run(args),
        Command::Bus(args) => bus::run(args, &load_project(config)?),
        Command::Exec(args) => exec::run(args, &load_project(config)?),
        Command::Shell(args) => shell::run(args, &load_project(config)?),
        Command::Cp(args) => cp::run(args, &load_project(config)?),
        Command::Wait(args) => wait::run(args, &load_project(config)?),
        Command::Completions(args) => completions::run(args, Cli::command()),
        Command::Man(args) => man::run(args, Cli::command()),
        Command::Broker(args) => broker::run(args),
        Command::Up { .. } => anyhow::bail!(
            "`castra up` is the original castra's command: run `castra apply` (it starts what castra.toml declares and stops what it no longer does; `castra plan` first shows what it would do)"
        ),
    }
}
