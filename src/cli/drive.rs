//! Driving one open stream from the host: where its output goes (a [`Sink`]: straight
//! to our stdout/stderr, prefixed with `vm | ` for several VMs, or NDJSON), stdin pumped
//! in until EOF, signals forwarded to the guest's process group, and the exit code it
//! ends with. `exec` and `shell` both drive their streams through here.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use super::stream::{self, EXIT_CASTRA, Opened};
use crate::broker::stream::blocking::Shared;
use crate::broker::stream::wire::{Channel, Control};

/// Where one VM's output goes.
pub(super) trait Sink: Send {
    fn out(&mut self, channel: Channel, bytes: &[u8]) -> io::Result<()>;
    /// A message of castra's or the agent's (not the command's output),
    /// already prefixed with who says it.
    fn note(&mut self, message: &str);
    fn finish(&mut self, _code: i32) {}
}

/// Straight to castra's stdout and stderr, unchanged.
pub(super) struct Direct;

impl Sink for Direct {
    fn out(&mut self, channel: Channel, bytes: &[u8]) -> io::Result<()> {
        if channel == Channel::Stderr {
            let mut e = io::stderr().lock();
            e.write_all(bytes)?;
            e.flush()
        } else {
            let mut o = io::stdout().lock();
            o.write_all(bytes)?;
            o.flush()
        }
    }

    fn note(&mut self, message: &str) {
        eprintln!("{message}");
    }
}

/// Whole lines, each prefixed `vm | ` (the rest at the end).
pub(super) struct Prefixed {
    pub(super) vm: String,
    pub(super) width: usize,
    pub(super) partial: [Vec<u8>; 2],
}

impl Prefixed {
    fn emit(&self, channel: Channel, line: &[u8]) -> io::Result<()> {
        let mut text = format!("{:w$} | ", self.vm, w = self.width).into_bytes();
        text.extend_from_slice(line);
        if text.last() != Some(&b'\n') {
            text.push(b'\n');
        }
        Direct.out(channel, &text)
    }
}

impl Sink for Prefixed {
    fn out(&mut self, channel: Channel, bytes: &[u8]) -> io::Result<()> {
        let i = usize::from(channel == Channel::Stderr);
        self.partial[i].extend_from_slice(bytes);
        while let Some(at) = self.partial[i].iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial[i].drain(..=at).collect();
            self.emit(channel, &line)?;
        }
        Ok(())
    }

    fn note(&mut self, message: &str) {
        eprintln!("{:w$} | {message}", self.vm, w = self.width);
    }

    fn finish(&mut self, _code: i32) {
        for (i, ch) in [(0, Channel::Stdout), (1, Channel::Stderr)] {
            let rest = std::mem::take(&mut self.partial[i]);
            if !rest.is_empty() {
                let _ = self.emit(ch, &rest);
            }
        }
    }
}

/// NDJSON lines on stdout.
pub(super) struct Json {
    pub(super) vm: String,
}

impl Json {
    fn line(&self, value: serde_json::Value) -> io::Result<()> {
        Direct.out(Channel::Stdout, format!("{value}\n").as_bytes())
    }
}

impl Sink for Json {
    fn out(&mut self, channel: Channel, bytes: &[u8]) -> io::Result<()> {
        let name = if channel == Channel::Stderr {
            "stderr"
        } else {
            "stdout"
        };
        let value = match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::json!({"vm": self.vm, "stream": name, "data": text}),
            Err(_) => serde_json::json!({"vm": self.vm, "stream": name, "data_b64": base64(bytes)}),
        };
        self.line(value)
    }

    fn note(&mut self, message: &str) {
        let _ = self.line(serde_json::json!({"vm": self.vm, "error": message}));
    }

    fn finish(&mut self, code: i32) {
        let _ = self.line(serde_json::json!({"vm": self.vm, "exit": code}));
    }
}

/// Standard base64 with padding.
pub(super) fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Streams whose guests get castra's signals.
pub(super) type Live = Arc<Mutex<Vec<Shared<UnixStream>>>>;

/// Forward SIGINT/SIGTERM/SIGHUP to every live stream's process group.
pub(super) fn forward_signals() -> Live {
    let live: Live = Arc::default();
    let to = live.clone();
    stream::handle_signals(stream::forwarded_signals(false), move |sig| {
        let word = stream::signal_word(sig).to_owned();
        for w in to.lock().map(|l| l.clone()).unwrap_or_default() {
            let _ = w.control(&Control::Signal {
                signal: word.clone(),
            });
        }
    });
    live
}

/// How stdin reaches the guest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Stdin {
    /// Copied until EOF, then the guest's stdin closes.
    Pass,
    /// The guest's stdin is closed at once.
    Closed,
}

/// Run one opened stream to its end: the exit code to report.
pub(super) fn drive(opened: Opened, sink: &mut dyn Sink, stdin: Stdin) -> i32 {
    let Opened {
        vm,
        mut reader,
        writer,
        socket,
    } = opened;
    if stdin == Stdin::Pass {
        let w = writer.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut input = io::stdin().lock();
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if w.send(Channel::Input, &buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = w.send(Channel::Input, &[]);
        });
    } else {
        let _ = writer.send(Channel::Input, &[]);
    }
    let mut buf = Vec::new();
    let code = loop {
        match reader.next(&mut buf) {
            Ok(Some(ch @ (Channel::Stdout | Channel::Stderr))) => {
                if sink.out(ch, &buf).is_err() {
                    // Our stdout's reader went away (`| head`): end the
                    // command (the agent kills its group) as SIGPIPE would.
                    let _ = socket.shutdown(std::net::Shutdown::Both);
                    break 128 + nix::sys::signal::Signal::SIGPIPE as i32;
                }
            }
            Ok(Some(Channel::Control)) => match Control::parse(&buf) {
                Some(Control::Exit { code, .. }) => break code,
                Some(Control::Error { code, message }) => {
                    sink.note(&message);
                    break code;
                }
                _ => {}
            },
            Ok(Some(Channel::Input)) => {}
            Ok(None) | Err(_) => {
                sink.note(&format!(
                    "castra: the stream to vm {vm:?} ended before the command did (guest reset, agent restarted, or broker stopped)"
                ));
                break EXIT_CASTRA;
            }
        }
    };
    sink.finish(code);
    code
}

/// Whether `fd` is a terminal.
pub(super) fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { nix::libc::isatty(fd) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (input, want) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"\xff\x00\xfe", "/wD+"),
        ] {
            assert_eq!(base64(input), want);
        }
    }
}
