//! The agent's side of streams (`exec-v1`, docs/BUS.md section 11): when the
//! broker sends `stream_open` on the agent's own authenticated bus session,
//! a thread connects a second TCP connection to the broker with
//! `hello vm:<vm> capabilities=stream-v1 token=<secret> stream=<id>`, reads
//! the host's request (the first control frame) and serves it: a command
//! (`process.rs`: pipes, or a PTY for a shell) or a copy in or out
//! (`crate::cp`). Requests arrive only this way: from the broker, which
//! takes them only from the owner-only host socket.

mod copy;
mod process;
mod pty;
mod stream;

pub(crate) use stream::Stream;

use std::io::{self, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::client::{Target, read_line};
use crate::broker::stream::blocking::{self, Shared};
use crate::broker::stream::wire::{self, CAP_STREAM_V1, Channel, Control};
use crate::broker::wire::hello::GREETING_PREFIX;

/// Serve stream `id` on a thread of its own (returns at once).
pub fn open(target: &Target, id: &str) {
    let target = target.clone();
    let id = id.to_owned();
    let spawned = std::thread::Builder::new()
        .name("castra-stream".into())
        .spawn(move || {
            if let Err(e) = serve(&target, &id) {
                eprintln!("castra-agent: stream {id}: {e}");
            }
        });
    if let Err(e) = spawned {
        eprintln!("castra-agent: cannot start a stream thread: {e}");
    }
}

fn connect(target: &Target, id: &str) -> io::Result<Stream> {
    let mut socket = TcpStream::connect_timeout(&target.addr, target.connect_timeout)?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (greeting, _) = read_line(&mut socket)?;
    if !greeting.starts_with(GREETING_PREFIX.as_bytes()) {
        return Err(io::Error::other("not a castra broker"));
    }
    let mut hello = format!("hello vm:{} capabilities={CAP_STREAM_V1}", target.hello.vm);
    if let Some(token) = &target.hello.token {
        hello.push_str(&format!(" token={token}"));
    }
    hello.push_str(&format!(" stream={id}\n"));
    socket.write_all(hello.as_bytes())?;
    let (reply, rest) = read_line(&mut socket)?;
    wire::parse_reply(&String::from_utf8_lossy(&reply)).map_err(|r| {
        io::Error::other(format!(
            "broker refused the stream: {}",
            r.map_or("?", |r| r.as_str())
        ))
    })?;
    socket.set_read_timeout(None)?;
    Ok(Stream {
        reader: blocking::reader_after(socket.try_clone()?, rest),
        writer: Shared::new(socket.try_clone()?),
        socket,
    })
}

fn serve(target: &Target, id: &str) -> io::Result<()> {
    let mut stream = connect(target, id)?;
    let mut buf = Vec::new();
    let request = match stream.reader.next(&mut buf)? {
        Some(Channel::Control) => Control::parse(&buf),
        _ => None,
    };
    let result = match request {
        Some(Control::Exec {
            argv,
            env,
            cwd,
            tty,
            rows,
            cols,
            timeout_ms,
        }) => {
            let spec = process::Spec {
                argv,
                env,
                cwd,
                timeout: timeout_ms.map(Duration::from_millis),
                tty: tty.then_some((rows.unwrap_or(24), cols.unwrap_or(80))),
            };
            if spec.tty.is_some() {
                pty::run(spec, &mut stream)
            } else {
                process::run(spec, &mut stream)
            }
        }
        Some(Control::Put { path }) => copy::put(&path, &mut stream),
        Some(Control::Get { path, recursive }) => copy::get(&path, recursive, &mut stream),
        _ => stream.writer.control(&Control::Error {
            code: 125,
            message: "castra-agent: unknown stream request".into(),
        }),
    };
    let _ = stream.socket.shutdown(std::net::Shutdown::Both);
    result
}
