//! `castra exec`: run a command in one or several guests over the broker
//! (no SSH). Output comes back byte-exact on castra's stdout and stderr as
//! it is produced; stdin is passed through until EOF when it is not a
//! terminal; SIGINT, SIGTERM and SIGHUP go to the guest's process group;
//! the exit code is the command's (125: castra itself failed). Several VMs
//! run in parallel with `vm | ` line prefixes and the worst exit code;
//! `--json` prints NDJSON. The stream itself is `stream.rs`'s; the shell's
//! terminal handling is `shell.rs`'s.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use super::drive::{Direct, Json, Prefixed, Sink, Stdin, drive, forward_signals, is_tty};
use super::stream::{self, EXIT_CASTRA};
use crate::broker::stream::wire::Control;
use crate::config::Project;

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = EXEC_HELP)]
pub struct ExecArgs {
    /// Run in every VM of castra.toml (then every word after the options is the command).
    #[arg(long)]
    all: bool,
    /// Set an environment variable in the guest (KEY=VAL, or KEY to pass the host's value).
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    env: Vec<String>,
    /// Working directory in the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// Kill the command after DUR (e.g. 30s, 5m); exit 124, as timeout(1).
    #[arg(long, value_name = "DUR", value_parser = crate::config::parse_duration)]
    timeout: Option<Duration>,
    /// Run in a terminal (a PTY in the guest; needs one here).
    #[arg(short = 't', long)]
    tty: bool,
    /// NDJSON on stdout: output chunks (`data`, or `data_b64` when not UTF-8) and the result.
    #[arg(long, conflicts_with = "tty")]
    json: bool,
    /// VM (or VMs separated by commas: web,db), then the command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "VM CMD"
    )]
    words: Vec<String>,
}

const EXEC_HELP: &str = "\
Examples:
  castra exec web -- uname -a
  castra exec web,db -- systemctl is-active nginx
  castra exec --all -- cat /etc/hostname
  tar c dir | castra exec web -- tar x -C /srv

Exit codes:
  N    the command's exit code (127: not found, 126: not executable,
       128+N: killed by signal N, 124: killed by --timeout)
  125  castra itself failed: unknown VM, VM not running, agent not reachable
       or without exec support, broker down, stream lost
  With several VMs: the highest of their codes.";

/// The exec request of `args` (argv as given: no shell).
fn request(args: &ExecArgs, argv: Vec<String>, tty: Option<(u16, u16)>) -> Result<Control, String> {
    let mut env = BTreeMap::new();
    for kv in &args.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.insert(k.to_owned(), v.to_owned()),
            None if !kv.is_empty() => match std::env::var(kv) {
                Ok(v) => env.insert(kv.clone(), v),
                Err(_) => return Err(format!("-e {kv}: not set in this environment")),
            },
            _ => return Err(format!("-e {kv:?}: expected KEY=VAL")),
        };
    }
    Ok(Control::Exec {
        argv,
        env,
        cwd: args.workdir.clone(),
        tty: tty.is_some(),
        rows: tty.map(|t| t.0),
        cols: tty.map(|t| t.1),
        timeout_ms: args.timeout.map(|d| d.as_millis() as u64),
    })
}

/// Split the words into VM names and the command.
/// Options written after the VM name (`castra exec web -e K=V -- cmd`):
/// clap leaves them in the trailing words; take them until `--` or the
/// first word that is not one of them.
fn late_options(args: &mut ExecArgs, words: &mut Vec<String>) -> Result<(), String> {
    while let Some(word) = words.first().cloned() {
        let value = |words: &mut Vec<String>| -> Result<String, String> {
            words.remove(0);
            if words.is_empty() {
                return Err(format!("{word} needs a value"));
            }
            Ok(words.remove(0))
        };
        match word.as_str() {
            "-e" | "--env" => {
                let v = value(words)?;
                args.env.push(v);
            }
            "-w" | "--workdir" => args.workdir = Some(value(words)?),
            "--timeout" => {
                let v = value(words)?;
                args.timeout = Some(crate::config::parse_duration(&v)?);
            }
            "-t" | "--tty" => {
                words.remove(0);
                args.tty = true;
            }
            "--json" => {
                words.remove(0);
                args.json = true;
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}

fn targets(args: &mut ExecArgs, project: &Project) -> Result<(Vec<String>, Vec<String>), String> {
    let mut words = args.words.clone();
    let vms: Vec<String> = if args.all {
        project.vms.iter().map(|v| v.name.clone()).collect()
    } else {
        let first = words.remove(0);
        first
            .split(',')
            .map(str::to_owned)
            .filter(|s| !s.is_empty())
            .collect()
    };
    late_options(args, &mut words)?;
    if words.first().map(String::as_str) == Some("--") {
        words.remove(0);
    }
    if words.is_empty() {
        return Err("no command given: castra exec VM [--] CMD [ARG...]".into());
    }
    if vms.is_empty() {
        return Err("no VM given (name one, several as web,db, or --all)".into());
    }
    Ok((vms, words))
}

fn code_of(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

pub fn run(args: &ExecArgs, project: &Project) -> Result<ExitCode> {
    let mut args = args.clone();
    let (vms, argv) = match targets(&mut args, project) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("castra exec: {e}");
            return Ok(code_of(EXIT_CASTRA));
        }
    };
    if args.tty {
        if vms.len() != 1 {
            eprintln!("castra exec: -t runs in one VM");
            return Ok(code_of(EXIT_CASTRA));
        }
        return Ok(code_of(super::shell::interactive(
            project,
            &vms[0],
            |size| request(&args, argv, Some(size)),
        )));
    }
    let req = match request(&args, argv, None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("castra exec: {e}");
            return Ok(code_of(EXIT_CASTRA));
        }
    };
    let live = forward_signals();
    let width = vms.iter().map(String::len).max().unwrap_or(0);
    let single = vms.len() == 1;
    let codes: Vec<i32> = std::thread::scope(|s| {
        let handles: Vec<_> = vms
            .iter()
            .map(|vm| {
                let (req, live) = (&req, live.clone());
                s.spawn(move || {
                    let mut sink: Box<dyn Sink> = match (args.json, single) {
                        (true, _) => Box::new(Json { vm: vm.clone() }),
                        (false, true) => Box::new(Direct),
                        (false, false) => Box::new(Prefixed {
                            vm: vm.clone(),
                            width,
                            partial: Default::default(),
                        }),
                    };
                    match stream::open(project, vm, req) {
                        Ok(opened) => {
                            if let Ok(mut l) = live.lock() {
                                l.push(opened.writer.clone());
                            }
                            let stdin = if single && !is_tty(0) {
                                Stdin::Pass
                            } else {
                                Stdin::Closed
                            };
                            drive(opened, sink.as_mut(), stdin)
                        }
                        Err(stream::Failed(msg)) => {
                            sink.note(&format!("castra: {msg}"));
                            sink.finish(EXIT_CASTRA);
                            EXIT_CASTRA
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(EXIT_CASTRA))
            .collect()
    });
    Ok(code_of(codes.into_iter().max().unwrap_or(EXIT_CASTRA)))
}
