//! The host end of a stream, shared by `castra exec`, `shell` and `cp`:
//! ask the broker on the owner-only host socket for a stream to a VM's
//! agent, and turn every way that can fail into one clear message (VM
//! unknown, not running, agent not connected, agent without exec support,
//! broker down, timeout). Those failures exit [`EXIT_CASTRA`], which no
//! command's own result is confused with. The frames are `broker::stream`'s.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::broker::stream::blocking::{self, Prefixed, Reader, Shared};
use crate::broker::stream::wire::{self, Control, Refusal, StreamRequest};
use crate::config::Project;
use crate::layout::StateLayout;

/// castra itself failed (VM not running or not reachable, broker down,
/// timeout, bad usage of a stream command); as `docker exec`'s 125.
pub const EXIT_CASTRA: i32 = 125;

/// An open stream to one VM's agent.
pub struct Opened {
    pub vm: String,
    pub reader: Reader<Prefixed<UnixStream>>,
    pub writer: Shared<UnixStream>,
    pub socket: UnixStream,
}

/// Why a stream could not be opened: the message for the user.
#[derive(Debug)]
pub struct Failed(pub String);

fn vm_state(project: &Project, vm: &str) -> Option<String> {
    let report = crate::status::collect(project);
    report
        .vms
        .iter()
        .find(|v| v.name == vm)
        .map(|v| v.state.clone())
}

/// Open a stream to `vm` and send `request` as its first frame.
pub fn open(project: &Project, vm: &str, request: &Control) -> Result<Opened, Failed> {
    if !project.vms.iter().any(|v| v.name == vm) {
        let known: Vec<&str> = project.vms.iter().map(|v| v.name.as_str()).collect();
        return Err(Failed(format!(
            "no VM named {vm:?} in castra.toml (VMs: {})",
            known.join(", ")
        )));
    }
    let state = vm_state(project, vm);
    if state.as_deref() != Some("running") {
        return Err(Failed(format!(
            "vm {vm:?} is not running (state: {}); `castra apply` starts it",
            state.as_deref().unwrap_or("unknown")
        )));
    }
    let path = StateLayout::new(&project.state_root).broker_socket();
    let mut socket = UnixStream::connect(&path).map_err(|e| {
        Failed(format!(
            "the broker is not running ({}: {e}); `castra apply` starts it",
            path.display()
        ))
    })?;
    let user = std::env::var("USER")
        .ok()
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_default();
    let line = StreamRequest {
        vm: vm.to_owned(),
        user,
    }
    .to_line();
    let io_err = |e: io::Error| Failed(format!("talking to the broker: {e}"));
    socket
        .write_all(format!("{line}\n").as_bytes())
        .map_err(io_err)?;
    // The broker answers within its connect timeout (10 s) plus slack.
    socket
        .set_read_timeout(Some(
            crate::broker::stream::CONNECT_TIMEOUT + Duration::from_secs(5),
        ))
        .map_err(io_err)?;
    let (reply, rest) = read_line(&mut socket).map_err(io_err)?;
    socket.set_read_timeout(None).map_err(io_err)?;
    if let Err(refusal) = wire::parse_reply(&reply) {
        return Err(Failed(refused(vm, refusal)));
    }
    let writer = Shared::new(socket.try_clone().map_err(io_err)?);
    writer.control(request).map_err(io_err)?;
    Ok(Opened {
        vm: vm.to_owned(),
        reader: blocking::reader_after(socket.try_clone().map_err(io_err)?, rest),
        writer,
        socket,
    })
}

fn refused(vm: &str, refusal: Option<Refusal>) -> String {
    match refusal {
        Some(Refusal::NotConnected) => format!(
            "vm {vm:?} is not reachable: its agent holds no session with the broker (still booting? try `castra wait {vm}`)"
        ),
        Some(Refusal::Unsupported) => {
            format!("vm {vm:?}: this guest's agent does not support exec (no exec-v1 capability)")
        }
        Some(Refusal::Timeout) => format!(
            "vm {vm:?}: timed out waiting for its agent to open the stream (see broker.log)"
        ),
        Some(Refusal::UnknownVm) => format!("vm {vm:?} is not known to the broker (not launched?)"),
        Some(r @ (Refusal::BadRequest | Refusal::UnknownStream)) => {
            format!("vm {vm:?}: the broker refused the stream ({})", r.as_str())
        }
        None => format!("vm {vm:?}: unexpected reply from the broker"),
    }
}

/// One line (at most 1 KiB) and the bytes after it.
fn read_line(socket: &mut UnixStream) -> io::Result<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = socket.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the broker closed the connection",
            ));
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.iter().position(|&b| b == b'\n') {
            let rest = got.split_off(i + 1);
            return Ok((String::from_utf8_lossy(&got).into_owned(), rest));
        }
        if got.len() > 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"));
        }
    }
}

/// Signals castra forwards to the guest (and, for a shell, SIGWINCH).
pub fn forwarded_signals(winch: bool) -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    if winch {
        set.add(Signal::SIGWINCH);
    }
    set
}

/// Block `set` in this thread (call before any thread starts, so every
/// thread inherits it) and wait for them on a thread of their own, handing
/// each to `on_signal`.
pub fn handle_signals(
    set: nix::sys::signal::SigSet,
    on_signal: impl Fn(nix::sys::signal::Signal) + Send + 'static,
) {
    use nix::sys::signal::{SigmaskHow, pthread_sigmask};
    if pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("castra-signals".into())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                on_signal(sig);
            }
        });
}

/// The signal word of the stream protocol.
pub fn signal_word(sig: nix::sys::signal::Signal) -> &'static str {
    use nix::sys::signal::Signal;
    match sig {
        Signal::SIGINT => "INT",
        Signal::SIGTERM => "TERM",
        Signal::SIGHUP => "HUP",
        Signal::SIGQUIT => "QUIT",
        _ => "KILL",
    }
}
