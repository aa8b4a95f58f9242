//! A command in a PTY (`castra shell`, `exec -t`): the guest side of an
//! interactive terminal. The command becomes a session leader with the PTY
//! as its controlling terminal (so Ctrl-C, Ctrl-Z and job control work in
//! the guest); the master's output goes to the host as stdout, the host's
//! keys into the master, and `resize` sets the window size (the kernel
//! sends SIGWINCH). Exit and disconnect as in `process.rs`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::sync::Arc;

use nix::libc;
use nix::pty::{Winsize, openpty};
use nix::unistd::Pid;

use super::process::{self, Flags, Spec};
use super::stream::Stream;
use crate::broker::stream::wire::{Channel, Control};

fn winsize((rows, cols): (u16, u16)) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

pub(crate) fn run(spec: Spec, stream: &mut Stream) -> io::Result<()> {
    let size = spec.tty.unwrap_or((24, 80));
    let pty = openpty(Some(&winsize(size)), None).map_err(io::Error::from)?;
    let mut cmd = match process::command(&spec) {
        Ok(c) => c,
        Err(e) => return stream.writer.control(&e),
    };
    if !spec.env.contains_key("TERM") {
        cmd.env("TERM", "xterm");
    }
    cmd.stdin(File::from(pty.slave.try_clone()?))
        .stdout(File::from(pty.slave.try_clone()?))
        .stderr(File::from(pty.slave.try_clone()?));
    // SAFETY: the closure only calls async-signal-safe functions.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            process::reset_signals()
        });
    }
    let spawned = cmd.spawn();
    // Our copies of the slave: the master reads EIO once the command's close.
    drop(cmd);
    drop(pty.slave);
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return stream
                .writer
                .control(&process::spawn_error(&spec.argv[0], &e));
        }
    };
    let pgid = Pid::from_raw(child.id() as i32);
    let flags = Arc::new(Flags::default());
    process::arm_timeout(spec.timeout, pgid, &flags);
    stream
        .writer
        .control(&Control::Started { pid: child.id() })?;
    let master = File::from(pty.master);
    let fd = master.as_raw_fd();
    let out = process::pump(
        Box::new(master.try_clone()?),
        Channel::Stdout,
        stream.writer.clone(),
    );
    let keys = process::feeder(master.try_clone()?);
    let waiter = process::waiter(child, vec![out], pgid, &flags, stream)?;
    process::read_host(stream, pgid, &flags, Some(keys), |size| {
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        unsafe {
            libc::ioctl(fd, libc::TIOCSWINSZ, &winsize(size));
        }
    });
    let _ = waiter.join();
    drop(master);
    Ok(())
}
