//! Command-line interface: clap definitions, dispatch, and the mapping of
//! errors to exit codes. Each command's rendering lives in its own module;
//! the work itself lives in the library (reconcile, status, logs, clean).

mod apply;
pub mod broker;
pub mod bus;
mod clean;
pub mod exit;
pub mod image;
mod init;
mod logs;
pub mod project;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    /// Run the host broker in the foreground (started by `apply`; not for direct use).
    #[command(hide = true)]
    Broker(broker::BrokerArgs),
}

/// Entry point used by `src/main.rs`.
pub fn main() -> ExitCode {
    quiet_when_stdout_closes();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Status(_) | Command::Logs(_)) {
        // Output-only commands often piped into `head`: end quietly there.
        // Never for commands that write to sockets or pipes (QMP, the broker,
        // xz): with the default disposition a peer closing early would kill us.
        reset_sigpipe();
    }
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            let msg = format!("{err:#}");
            if msg.starts_with("error") {
                eprintln!("{msg}");
            } else {
                eprintln!("error: {msg}");
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
        Command::Broker(args) => broker::run(args),
    }
}

/// Every command: output cut short by its reader (`castra plan | head -1`)
/// ends the process quietly with status 0, instead of the standard library's
/// "failed printing to stdout" panic. SIGPIPE stays ignored for commands that
/// talk over sockets and pipes, so only stdout's own EPIPE gets here.
fn quiet_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if stdout_closed(msg) {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// The panic `println!` raises when stdout's reader went away.
fn stdout_closed(panic_message: &str) -> bool {
    panic_message.starts_with("failed printing to stdout") && panic_message.contains("os error 32")
}

/// Writing into a closed pipe (`castra status | head`) ends quietly.
fn reset_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: restoring the default disposition installs no handler code.
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
}
