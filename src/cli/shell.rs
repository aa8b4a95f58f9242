//! `castra shell VM [CMD...]` (and `castra exec -t`): an interactive
//! terminal in a guest. The guest side is a PTY (`agent/exec/pty.rs`); here
//! the local terminal goes raw (keys, Ctrl-C/Ctrl-Z/Ctrl-D included, go to
//! the guest), the window size is sent at start and on every SIGWINCH, and
//! the terminal is restored on every way out: the shell's exit, an error,
//! the stream lost (guest reset), SIGTERM/SIGHUP to castra (then castra
//! exits 128+N and the guest's shell is killed with the stream).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use nix::sys::signal::Signal;
use nix::sys::termios::{self, SetArg, Termios};

use super::drive::{Direct, Stdin, drive, is_tty};
use super::stream::{self, EXIT_CASTRA};
use crate::broker::stream::wire::Control;
use crate::config::Project;

#[derive(clap::Args, Debug)]
pub struct ShellArgs {
    /// The VM.
    vm: String,
    /// Run this instead of the guest's login shell (bash if it has one, else sh).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<String>,
}

/// The guest's login shell: bash when it has one, else sh.
const LOGIN_SHELL: &str =
    "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";

pub fn run(args: &ShellArgs, project: &Project) -> Result<ExitCode> {
    let mut argv = args.command.clone();
    if argv.first().map(String::as_str) == Some("--") {
        argv.remove(0);
    }
    if argv.is_empty() {
        argv = vec!["/bin/sh".into(), "-c".into(), LOGIN_SHELL.into()];
    }
    let code = interactive(project, &args.vm, |(rows, cols)| {
        let mut env = std::collections::BTreeMap::new();
        env.insert(
            "TERM".to_owned(),
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
        );
        Ok(Control::Exec {
            argv,
            env,
            cwd: None,
            tty: true,
            rows: Some(rows),
            cols: Some(cols),
            timeout_ms: None,
        })
    });
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// The terminal's size (rows, columns) on stdout.
fn window_size() -> (u16, u16) {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into a valid pointer.
    let ok = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 && ws.ws_col > 0 {
        (ws.ws_row, ws.ws_col)
    } else {
        (24, 80)
    }
}

fn restore(saved: &Termios) {
    let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
}

/// Puts the terminal back as it was when dropped.
struct Raw(Termios);

impl Drop for Raw {
    fn drop(&mut self) {
        restore(&self.0);
    }
}

/// Run a PTY command in `vm` with the local terminal raw; its exit code.
pub(super) fn interactive(
    project: &Project,
    vm: &str,
    make: impl FnOnce((u16, u16)) -> Result<Control, String>,
) -> i32 {
    if !is_tty(0) || !is_tty(1) {
        eprintln!(
            "castra: a shell needs a terminal, and stdin or stdout is not one; in scripts use `castra exec {vm} -- CMD`"
        );
        return EXIT_CASTRA;
    }
    let request = match make(window_size()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("castra: {e}");
            return EXIT_CASTRA;
        }
    };
    let saved = match termios::tcgetattr(std::io::stdin()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("castra: cannot read the terminal's settings: {e}");
            return EXIT_CASTRA;
        }
    };
    let writer: Arc<Mutex<Option<crate::broker::stream::blocking::Shared<_>>>> = Arc::default();
    let (to, on_exit) = (writer.clone(), saved.clone());
    stream::handle_signals(stream::forwarded_signals(true), move |sig| {
        let w = to.lock().ok().and_then(|w| w.clone());
        match sig {
            Signal::SIGWINCH => {
                if let Some(w) = w {
                    let (rows, cols) = window_size();
                    let _ = w.control(&Control::Resize { rows, cols });
                }
            }
            Signal::SIGINT => {
                if let Some(w) = w {
                    let _ = w.control(&Control::Signal {
                        signal: "INT".into(),
                    });
                }
            }
            // TERM, HUP: put the terminal back and go; the stream closes
            // with the process, and the agent kills the guest's shell.
            other => {
                restore(&on_exit);
                std::process::exit(128 + other as i32);
            }
        }
    });
    let opened = match stream::open(project, vm, &request) {
        Ok(o) => o,
        Err(stream::Failed(msg)) => {
            eprintln!("castra: {msg}");
            return EXIT_CASTRA;
        }
    };
    if let Ok(mut w) = writer.lock() {
        *w = Some(opened.writer.clone());
    }
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    if let Err(e) = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw) {
        eprintln!("castra: cannot put the terminal in raw mode: {e}");
        return EXIT_CASTRA;
    }
    let guard = Raw(saved);
    let code = drive(opened, &mut Direct, Stdin::Pass);
    drop(guard);
    code
}
