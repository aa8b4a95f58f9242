//! Stream frames over blocking sockets, for the two ends that run on plain
//! threads: the guest agent and the host CLI. The format is `wire.rs`'s;
//! this adds the reads and writes around it. A reader allocates at most one
//! payload (64 KiB), checked from the header first.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use super::wire::{self, Channel, Control};

/// Reads stream frames one by one.
pub struct Reader<R: Read> {
    inner: io::BufReader<R>,
}

impl<R: Read> Reader<R> {
    /// The next frame into `buf` (its payload); `None` at EOF between frames.
    pub fn next(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<Channel>> {
        let mut h = [0u8; 5];
        let mut got = 0;
        while got < 5 {
            let n = self.inner.read(&mut h[got..])?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a frame",
                ));
            }
            got += n;
        }
        let (channel, len) = wire::check_header(h)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        buf.clear();
        buf.resize(len, 0);
        self.inner.read_exact(buf)?;
        Ok(Some(channel))
    }
}

/// Builds a [`Reader`] that first yields `already` (bytes read past the
/// handshake line), then the socket.
pub fn reader_after<R: Read>(inner: R, already: Vec<u8>) -> Reader<Prefixed<R>> {
    Reader {
        inner: io::BufReader::with_capacity(
            128 * 1024,
            Prefixed {
                first: already,
                at: 0,
                rest: inner,
            },
        ),
    }
}

/// `first`, then `rest`.
pub struct Prefixed<R> {
    first: Vec<u8>,
    at: usize,
    rest: R,
}

impl<R: Read> Read for Prefixed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at < self.first.len() {
            let n = (self.first.len() - self.at).min(buf.len());
            buf[..n].copy_from_slice(&self.first[self.at..self.at + n]);
            self.at += n;
            return Ok(n);
        }
        self.rest.read(buf)
    }
}

/// Write one frame (header and payload in one write).
pub fn write_frame(w: &mut impl Write, channel: Channel, payload: &[u8]) -> io::Result<()> {
    for chunk in payload.chunks(wire::MAX_PAYLOAD) {
        w.write_all(&wire::encode(channel, chunk))?;
    }
    if payload.is_empty() {
        w.write_all(&wire::header(channel, 0))?;
    }
    Ok(())
}

/// Write one control frame.
pub fn write_control(w: &mut impl Write, msg: &Control) -> io::Result<()> {
    w.write_all(&wire::encode_control(msg))
}

/// A socket's write half shared by threads (stdout and stderr pumps, the
/// waiter): each frame is written whole under the lock. A write blocks
/// while the peer does not read, which is the flow control.
pub struct Shared<W: Write> {
    inner: Arc<Mutex<W>>,
}

impl<W: Write> Clone for Shared<W> {
    fn clone(&self) -> Self {
        Shared {
            inner: self.inner.clone(),
        }
    }
}

impl<W: Write> Shared<W> {
    pub fn new(w: W) -> Shared<W> {
        Shared {
            inner: Arc::new(Mutex::new(w)),
        }
    }

    pub fn send(&self, channel: Channel, payload: &[u8]) -> io::Result<()> {
        let mut w = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("stream writer poisoned"))?;
        write_frame(&mut *w, channel, payload)
    }

    pub fn control(&self, msg: &Control) -> io::Result<()> {
        self.send(
            Channel::Control,
            &serde_json::to_vec(msg).unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_after_a_prefix() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, Channel::Stdout, b"a\0b").unwrap();
        write_frame(&mut bytes, Channel::Input, b"").unwrap();
        write_control(&mut bytes, &Control::Done { bytes: 3 }).unwrap();
        let big = vec![7u8; wire::MAX_PAYLOAD + 10];
        write_frame(&mut bytes, Channel::Stderr, &big).unwrap();
        let (first, rest) = bytes.split_at(7);
        let mut r = reader_after(rest, first.to_vec());
        let mut buf = Vec::new();
        assert_eq!(r.next(&mut buf).unwrap(), Some(Channel::Stdout));
        assert_eq!(buf, b"a\0b");
        assert_eq!(r.next(&mut buf).unwrap(), Some(Channel::Input));
        assert!(buf.is_empty());
        assert_eq!(r.next(&mut buf).unwrap(), Some(Channel::Control));
        assert_eq!(Control::parse(&buf), Some(Control::Done { bytes: 3 }));
        assert_eq!(r.next(&mut buf).unwrap(), Some(Channel::Stderr));
        assert_eq!(buf.len(), wire::MAX_PAYLOAD);
        assert_eq!(r.next(&mut buf).unwrap(), Some(Channel::Stderr));
        assert_eq!(buf.len(), 10);
        assert_eq!(r.next(&mut buf).unwrap(), None);
    }

    #[test]
    fn oversized_header_is_refused_before_reading() {
        let bytes = [0xffu8, 0xff, 0xff, 0xff, 2];
        let mut r = reader_after(&bytes[..], Vec::new());
        let err = r.next(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
