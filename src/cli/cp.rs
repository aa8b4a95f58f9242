//! `castra cp [-r] SRC DST` with `VM:PATH` on one side (as `docker cp`):
//! files, symlinks and (with -r) directory trees into or out of a guest,
//! over a stream (no SSH). The copy format and both ends' file handling are
//! `crate::cp`'s (streamed in constant memory, tmp+rename, sha256 checked,
//! modes and mtimes kept); this module parses the locations, drives the
//! stream, and draws a progress line on a terminal. Exit 0 copied, 1 the
//! copy failed (message names the path), 125 castra failed (VM not running...).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::drive::is_tty;
use super::stream::{self, EXIT_CASTRA, Opened};
use crate::broker::stream::wire::{Channel, Control};
use crate::broker::wire::hello::valid_vm_name;
use crate::config::Project;
use crate::cp::{self, Receiver};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  castra cp ./build.tar web:/tmp/\n  castra cp -r web:/var/log ./logs\n\nExit codes: 0 copied, 1 the copy failed, 125 castra failed (VM not running, ...)."
)]
pub struct CpArgs {
    /// Copy directories recursively.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// Source: a local path or VM:PATH.
    src: String,
    /// Destination: a local path or VM:PATH (an existing directory receives SRC under its name).
    dst: String,
}

#[derive(Debug, PartialEq, Eq)]
enum Loc {
    Local(PathBuf),
    Guest { vm: String, path: String },
}

/// `VM:PATH` (a VM name before the first colon, no `/` in it) or a local path.
fn parse_loc(s: &str) -> Result<Loc, String> {
    if let Some((name, path)) = s.split_once(':')
        && valid_vm_name(name)
    {
        if path.is_empty() {
            return Err(format!(
                "{s:?}: no path after \"{name}:\" (write {name}:/path; ./{s} for a local file)"
            ));
        }
        return Ok(Loc::Guest {
            vm: name.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(Loc::Local(PathBuf::from(s)))
}

pub fn run(args: &CpArgs, project: &Project) -> Result<ExitCode> {
    let fail = |msg: String, code: i32| {
        eprintln!("castra cp: {msg}");
        Ok(ExitCode::from(code as u8))
    };
    let (src, dst) = match (parse_loc(&args.src), parse_loc(&args.dst)) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => return fail(e, EXIT_CASTRA),
    };
    let result = match (src, dst) {
        (Loc::Local(src), Loc::Guest { vm, path }) => {
            put(project, &src, &vm, &path, args.recursive)
        }
        (Loc::Guest { vm, path }, Loc::Local(dst)) => {
            get(project, &vm, &path, &dst, args.recursive)
        }
        (Loc::Local(_), Loc::Local(_)) => {
            return fail(
                "neither side is VM:PATH; use cp(1) for local copies".into(),
                EXIT_CASTRA,
            );
        }
        (Loc::Guest { .. }, Loc::Guest { .. }) => {
            return fail(
                "both sides are in guests; copy out to the host, then in".into(),
                EXIT_CASTRA,
            );
        }
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err((msg, code)) => fail(msg, code),
    }
}

type Failure = (String, i32);

fn open(project: &Project, vm: &str, request: &Control) -> Result<Opened, Failure> {
    stream::open(project, vm, request).map_err(|stream::Failed(m)| (m, EXIT_CASTRA))
}

/// Host -> guest.
fn put(
    project: &Project,
    src: &Path,
    vm: &str,
    path: &str,
    recursive: bool,
) -> Result<(), Failure> {
    // Local problems first, before a stream is opened.
    let meta = std::fs::symlink_metadata(src).map_err(|e| (cp::describe(src, &e), 1))?;
    if meta.is_dir() && !recursive {
        return Err((format!("{}: is a directory (use -r)", src.display()), 1));
    }
    let Opened {
        mut reader,
        writer,
        socket,
        ..
    } = open(project, vm, &Control::Put { path: path.into() })?;
    // The guest's verdict, read while we send (it may fail early: no space).
    let verdict = std::thread::spawn(move || {
        let mut buf = Vec::new();
        loop {
            match reader.next(&mut buf) {
                Ok(Some(Channel::Control)) => match Control::parse(&buf) {
                    Some(Control::Exit { code: 0, .. }) => return Ok(()),
                    Some(Control::Error { message, .. }) => return Err(message),
                    _ => {}
                },
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err("the stream ended before the guest confirmed the copy".into());
                }
            }
        }
    });
    let mut progress = Progress::new(
        cp::total_bytes(src),
        format!("{} -> {vm}:{path}", src.display()),
    );
    let sent = cp::send(
        src,
        recursive,
        Channel::Input,
        &mut |ch, bytes| writer.send(ch, bytes),
        &mut |n| progress.update(n),
    );
    progress.finish();
    if let Err(local) = &sent
        && !local.starts_with("sending")
    {
        let _ = socket.shutdown(std::net::Shutdown::Both);
        return Err((local.clone(), 1));
    }
    let remote = verdict
        .join()
        .unwrap_or_else(|_| Err("internal error".into()));
    remote.map_err(|m| (format!("vm {vm}: {m}"), 1))
}

/// Guest -> host.
fn get(
    project: &Project,
    vm: &str,
    path: &str,
    dst: &Path,
    recursive: bool,
) -> Result<(), Failure> {
    let Opened { mut reader, .. } = open(
        project,
        vm,
        &Control::Get {
            path: path.into(),
            recursive,
        },
    )?;
    let mut receiver = Receiver::new(dst);
    let mut progress = Progress::new(0, format!("{vm}:{path} -> {}", dst.display()));
    let mut buf = Vec::new();
    let mut complete = false;
    let result = loop {
        match reader.next(&mut buf) {
            Ok(Some(Channel::Stdout)) => {
                if let Err(e) = receiver.data(&buf) {
                    break Err((e, 1));
                }
                progress.update(receiver.bytes);
            }
            Ok(Some(Channel::Control)) => match Control::parse(&buf) {
                Some(Control::Total { bytes }) => progress.total = bytes,
                Some(Control::Exit { code: 0, .. }) if complete => break Ok(()),
                Some(Control::Error { message, .. }) => {
                    break Err((format!("vm {vm}: {message}"), 1));
                }
                Some(msg) => match receiver.control(msg) {
                    Ok(done) => complete |= done,
                    Err(e) => break Err((e, 1)),
                },
                None => break Err(("bad control frame in the copy".into(), 1)),
            },
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                break Err((
                    "the stream ended before the copy was complete".into(),
                    EXIT_CASTRA,
                ));
            }
        }
    };
    progress.finish();
    result
}

/// A one-line progress display on stderr when it is a terminal and the
/// copy is large enough to be worth watching.
struct Progress {
    total: u64,
    label: String,
    start: Instant,
    last: Option<Instant>,
    done: u64,
    shown: bool,
}

impl Progress {
    fn new(total: u64, label: String) -> Progress {
        Progress {
            total,
            label,
            start: Instant::now(),
            last: None,
            done: 0,
            shown: false,
        }
    }

    fn draw(&mut self) {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let pct = (self.done * 100)
            .checked_div(self.total)
            .map(|p| format!("{p:3}% "))
            .unwrap_or_default();
        eprint!(
            "\r{}  {pct}{:.1} MiB  {:.1} MiB/s   ",
            self.label,
            mib(self.done),
            mib(self.done) / secs
        );
        let _ = std::io::stderr().flush();
        self.shown = true;
    }

    fn update(&mut self, done: u64) {
        self.done = done;
        if self.total < 4 * 1024 * 1024 || !is_tty(2) {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(200))
        {
            self.last = Some(now);
            self.draw();
        }
    }

    fn finish(&mut self) {
        if self.shown {
            self.draw();
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            parse_loc("web:/tmp/x"),
            Ok(Loc::Guest {
                vm: "web".into(),
                path: "/tmp/x".into()
            })
        );
        assert_eq!(parse_loc("./web:x"), Ok(Loc::Local("./web:x".into())));
        assert_eq!(parse_loc("/a:b"), Ok(Loc::Local("/a:b".into())));
        assert_eq!(parse_loc("file"), Ok(Loc::Local("file".into())));
        let err = parse_loc("web:").unwrap_err();
        assert!(err.contains("no path after"), "{err}");
    }
}
