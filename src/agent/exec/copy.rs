//! `castra cp` in the guest: a `put` stream receives a copy into a guest
//! path, a `get` stream sends one out; both with `crate::cp` (the same code
//! as the host's end). The outcome is an `exit` (0) or an `error` frame
//! with the message the host prints.

use std::io;
use std::path::Path;

use super::stream::Stream;
use crate::broker::stream::wire::{Channel, Control};
use crate::cp::{self, Receiver};

fn outcome(stream: &Stream, result: Result<(), String>) -> io::Result<()> {
    let msg = match result {
        Ok(()) => Control::Exit {
            code: 0,
            signal: None,
        },
        Err(message) => Control::Error { code: 1, message },
    };
    stream.writer.control(&msg)?;
    let _ = stream.socket.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// Receive a copy into `path`.
pub(crate) fn put(path: &str, stream: &mut Stream) -> io::Result<()> {
    let mut receiver = Receiver::new(Path::new(path));
    let mut buf = Vec::new();
    let result = loop {
        match stream.reader.next(&mut buf) {
            Ok(Some(Channel::Control)) => match Control::parse(&buf) {
                Some(msg) => match receiver.control(msg) {
                    Ok(true) => break Ok(()),
                    Ok(false) => {}
                    Err(e) => break Err(e),
                },
                None => break Err("bad control frame in a copy".into()),
            },
            Ok(Some(Channel::Input)) => {
                if let Err(e) = receiver.data(&buf) {
                    break Err(e);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break Err("the host ended the copy early".into()),
            Err(e) => break Err(format!("reading the copy: {e}")),
        }
    };
    outcome(stream, result)
}

/// Send `path` (a tree with `recursive`) to the host.
pub(crate) fn get(path: &str, recursive: bool, stream: &mut Stream) -> io::Result<()> {
    let src = Path::new(path);
    stream.writer.control(&Control::Total {
        bytes: cp::total_bytes(src),
    })?;
    let writer = stream.writer.clone();
    let result = cp::send(
        src,
        recursive,
        Channel::Stdout,
        &mut |ch, bytes| writer.send(ch, bytes),
        &mut |_| {},
    );
    outcome(stream, result.map(|_| ()))
}
