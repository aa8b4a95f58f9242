//! One command of an exec or shell stream: spawn it in a process group of
//! its own (signal dispositions and mask reset: the default image starts the
//! agent in the background, where the shell ignores SIGINT), pump its
//! stdout/stderr into the stream as it produces them (a write blocks while
//! the host does not read: flow control end to end), feed it the host's
//! stdin, deliver the host's signals to its group, and report its exit as a
//! shell does (127 not found, 126 not executable, 128+N killed by signal N,
//! 124 after `--timeout`). If the host goes away first, the whole group is
//! killed: nothing is left running. The PTY variant is `pty.rs`.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, killpg, pthread_sigmask, signal};
use nix::unistd::Pid;

use super::stream::Stream;
use crate::broker::stream::wire::{Channel, Control};

/// Exit code after `--timeout` killed the command (as `timeout(1)`).
pub const EXIT_TIMEOUT: i32 = 124;

/// What to run.
pub(crate) struct Spec {
    pub(crate) argv: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) cwd: Option<String>,
    pub(crate) timeout: Option<Duration>,
    /// Rows and columns of a PTY, or pipes when `None`.
    pub(crate) tty: Option<(u16, u16)>,
}

/// The signal word of a `signal` control message.
pub(crate) fn signal_named(name: &str) -> Option<Signal> {
    Some(match name {
        "INT" => Signal::SIGINT,
        "TERM" => Signal::SIGTERM,
        "HUP" => Signal::SIGHUP,
        "QUIT" => Signal::SIGQUIT,
        "KILL" => Signal::SIGKILL,
        "WINCH" => Signal::SIGWINCH,
        _ => return None,
    })
}

/// For the child, between fork and exec: default dispositions, empty mask.
/// Only async-signal-safe calls (sigaction, sigprocmask).
pub(crate) fn reset_signals() -> io::Result<()> {
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing the default disposition runs no handler code.
            let _ = unsafe { signal(sig, SigHandler::SigDfl) };
        }
    }
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).map_err(io::Error::from)
}

/// The command, configured but not spawned (argv, env, cwd); the caller
/// sets stdio and `pre_exec`.
pub(crate) fn command(spec: &Spec) -> Result<Command, Control> {
    let Some(program) = spec.argv.first() else {
        return Err(Control::Error {
            code: 125,
            message: "castra-agent: empty command".into(),
        });
    };
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..]);
    if std::env::var_os("PATH").is_none() && !spec.env.contains_key("PATH") {
        cmd.env(
            "PATH",
            "/run/current-system/sw/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        );
    }
    cmd.envs(&spec.env);
    if let Some(dir) = &spec.cwd {
        if !std::path::Path::new(dir).is_dir() {
            return Err(Control::Error {
                code: 126,
                message: format!("castra-agent: -w {dir}: no such directory"),
            });
        }
        cmd.current_dir(dir);
    }
    Ok(cmd)
}

/// Why a spawn failed, as a shell reports it.
pub(crate) fn spawn_error(program: &str, e: &io::Error) -> Control {
    let (code, what) = match e.kind() {
        io::ErrorKind::NotFound => (127, "command not found".to_owned()),
        io::ErrorKind::PermissionDenied => (126, "permission denied".to_owned()),
        _ => (126, e.to_string()),
    };
    Control::Error {
        code,
        message: format!("castra-agent: {program}: {what}"),
    }
}

/// A shell's exit code for a wait status; the signal when killed by one.
pub(crate) fn exit_of(status: std::process::ExitStatus) -> (i32, Option<i32>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (125, None),
    }
}

/// What the stream's reader learned, shared with the waiter.
#[derive(Default)]
pub(crate) struct Flags {
    /// The host delivered a signal: the group is cleaned up after the exit.
    pub(crate) signalled: AtomicBool,
    /// The command was reported: a disconnect no longer kills anything.
    pub(crate) finished: AtomicBool,
    pub(crate) timed_out: AtomicBool,
}

/// Kill `pgid` after `timeout` unless the command finished first.
pub(crate) fn arm_timeout(timeout: Option<Duration>, pgid: Pid, flags: &Arc<Flags>) {
    let Some(after) = timeout else { return };
    let flags = flags.clone();
    let _ = std::thread::Builder::new()
        .name("castra-timeout".into())
        .spawn(move || {
            std::thread::sleep(after);
            if !flags.finished.load(Ordering::SeqCst) {
                flags.timed_out.store(true, Ordering::SeqCst);
                let _ = killpg(pgid, Signal::SIGKILL);
            }
        });
}

/// Run a command on pipes (`pty.rs` runs it when `spec.tty`).
pub(crate) fn run(spec: Spec, stream: &mut Stream) -> io::Result<()> {
    let mut cmd = match command(&spec) {
        Ok(c) => c,
        Err(e) => return stream.writer.control(&e),
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only calls async-signal-safe functions.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(io::Error::from)?;
            reset_signals()
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return stream.writer.control(&spawn_error(&spec.argv[0], &e)),
    };
    let pgid = Pid::from_raw(child.id() as i32);
    let flags = Arc::new(Flags::default());
    arm_timeout(spec.timeout, pgid, &flags);
    stream
        .writer
        .control(&Control::Started { pid: child.id() })?;
    let pumps: Vec<_> = [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            Channel::Stdout,
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            Channel::Stderr,
        ),
    ]
    .into_iter()
    .filter_map(|(from, ch)| from.map(|f| pump(f, ch, stream.writer.clone())))
    .collect();
    let stdin = child.stdin.take().map(feeder);
    let waiter = waiter(child, pumps, pgid, &flags, stream)?;
    read_host(stream, pgid, &flags, stdin, |_| {});
    let _ = waiter.join();
    Ok(())
}

/// A thread that waits for the command, then for its output to be sent,
/// and reports its exit; then ends the guest's side of the stream.
pub(crate) fn waiter(
    mut child: std::process::Child,
    pumps: Vec<std::thread::JoinHandle<()>>,
    pgid: Pid,
    flags: &Arc<Flags>,
    stream: &Stream,
) -> io::Result<std::thread::JoinHandle<()>> {
    let (writer, flags) = (stream.writer.clone(), flags.clone());
    let socket = stream.socket.try_clone()?;
    Ok(std::thread::spawn(move || {
        let status = child.wait();
        // After a forwarded signal, what is left of the group goes too (a
        // background child of a shell ignores SIGINT, and would hold the
        // output pipes open).
        if flags.signalled.load(Ordering::SeqCst) {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        for p in pumps {
            let _ = p.join();
        }
        flags.finished.store(true, Ordering::SeqCst);
        let msg = match status {
            Ok(_) if flags.timed_out.load(Ordering::SeqCst) => Control::Exit {
                code: EXIT_TIMEOUT,
                signal: Some(Signal::SIGKILL as i32),
            },
            Ok(s) => {
                let (code, signal) = exit_of(s);
                Control::Exit { code, signal }
            }
            Err(e) => Control::Error {
                code: 125,
                message: format!("castra-agent: wait: {e}"),
            },
        };
        let _ = writer.control(&msg);
        // The end of the guest's side: the broker ends the stream, and the
        // stream's reader sees EOF.
        let _ = socket.shutdown(std::net::Shutdown::Write);
    }))
}

/// Read the host's frames until the stream ends: stdin to `stdin`, signals
/// to the group, `on_resize` for a PTY. A host that goes away kills the group.
pub(crate) fn read_host(
    stream: &mut Stream,
    pgid: Pid,
    flags: &Flags,
    mut stdin: Option<mpsc::SyncSender<Vec<u8>>>,
    mut on_resize: impl FnMut((u16, u16)),
) {
    let mut buf = Vec::new();
    loop {
        match stream.reader.next(&mut buf) {
            Ok(Some(Channel::Input)) if buf.is_empty() => stdin = None,
            Ok(Some(Channel::Input)) => {
                if let Some(tx) = &stdin
                    && tx.send(std::mem::take(&mut buf)).is_err()
                {
                    stdin = None;
                }
            }
            Ok(Some(Channel::Control)) => match Control::parse(&buf) {
                Some(Control::Signal { signal }) => {
                    if let Some(sig) = signal_named(&signal) {
                        flags.signalled.store(true, Ordering::SeqCst);
                        let _ = killpg(pgid, sig);
                    }
                }
                Some(Control::Resize { rows, cols }) => on_resize((rows, cols)),
                _ => {}
            },
            Ok(Some(Channel::Stdout | Channel::Stderr)) => {}
            Ok(None) | Err(_) => {
                if !flags.finished.load(Ordering::SeqCst) {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                return;
            }
        }
    }
}

/// A thread that copies `from` into the stream on `channel` until EOF.
pub(crate) fn pump(
    mut from: Box<dyn Read + Send>,
    channel: Channel,
    writer: crate::broker::stream::blocking::Shared<std::net::TcpStream>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if writer.send(channel, &buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EIO: a PTY whose other side closed.
                Err(_) => return,
            }
        }
    })
}

/// A thread that writes what the host sends into the command's stdin; a
/// bounded queue, so a command that does not read stops the stream's reader
/// (and so the host) instead of growing memory.
pub(crate) fn feeder(mut to: impl Write + Send + 'static) -> mpsc::SyncSender<Vec<u8>> {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        for chunk in rx {
            if to.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    tx
}
