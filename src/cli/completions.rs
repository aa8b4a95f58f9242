//! `castra completions SHELL`: the shell completion script for castra's
//! command line, printed to stdout (generated from the clap definitions, so
//! it never falls behind them).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use clap_complete::Shell;

#[derive(Args, Debug)]
#[command(after_help = "Install, for example:\n  \
    castra completions bash > ~/.local/share/bash-completion/completions/castra\n  \
    castra completions zsh > ~/.zfunc/_castra    (with fpath+=~/.zfunc in ~/.zshrc)\n  \
    castra completions fish > ~/.config/fish/completions/castra.fish")]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Writes `shell`'s completion script for `cmd` to stdout.
pub fn run(args: &CompletionsArgs, cmd: clap::Command) -> Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut without_hidden(&cmd), "castra", &mut script);
    std::io::stdout().lock().write_all(&script)?;
    Ok(ExitCode::SUCCESS)
}

/// `cmd` without its hidden commands (`broker`, `up`): clap_complete offers
/// hidden subcommands like any other, and they are not for users to type.
fn without_hidden(cmd: &clap::Command) -> clap::Command {
    let visible: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    clap::Command::new("castra")
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned())
        .subcommands(visible)
}
