//! Broker frames read from a blocking socket with a timeout, for the clients
//! that run on plain threads: the guest agent (TCP) and the host tools (the
//! broker's Unix socket). The wire format itself is `frame.rs` (pure); this
//! only adds the reads around it.

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::wire::frame::{self, BrokerFrame, Decoder};

/// A blocking stream whose reads can be bounded in time.
pub trait TimedRead: Read {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl TimedRead for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

impl TimedRead for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }
}

/// Decodes broker frames from what a stream delivers, keeping partial ones.
pub struct FrameReader {
    decoder: Decoder,
    pending: Vec<u8>,
    buf: Vec<u8>,
}

impl FrameReader {
    /// `already_read`: bytes that followed the handshake line.
    pub fn new(already_read: Vec<u8>) -> FrameReader {
        FrameReader {
            decoder: Decoder::new(frame::DEFAULT_FRAME_LIMIT),
            pending: already_read,
            buf: vec![0; 16 * 1024],
        }
    }

    /// The next broker frame, or `None` when `timeout` passed first. Frame
    /// types this build does not know are skipped. The broker closing the
    /// connection is `UnexpectedEof`, a malformed frame `InvalidData`.
    pub fn next(
        &mut self,
        stream: &mut impl TimedRead,
        timeout: Duration,
    ) -> io::Result<Option<BrokerFrame>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut input = &self.pending[..];
            let decoded = self.decoder.decode(&mut input).map_err(|r| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad frame from the broker: {r}"),
                )
            })?;
            let used = self.pending.len() - input.len();
            self.pending.drain(..used);
            if let Some(body) = decoded {
                if let Ok(f) = BrokerFrame::parse(&body) {
                    return Ok(Some(f));
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            stream.set_read_timeout(Some(left))?;
            match stream.read(&mut self.buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the broker closed the connection",
                    ));
                }
                Ok(n) => self.pending.extend_from_slice(&self.buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::wire::frame::AckKind;
    use std::io::Write;

    #[test]
    fn frames_split_across_reads_unknown_types_skipped_then_timeout_and_eof() {
        let (mut broker, mut client) = UnixStream::pair().unwrap();
        let ack = frame::encode(&BrokerFrame::ack_ok(AckKind::Heartbeat));
        let unknown = frame::encode(&serde_json::json!({"type": "from_the_future"}));
        // Half of the first frame came with the handshake, the rest later.
        let (head, tail) = ack.split_at(3);
        let mut reader = FrameReader::new(head.to_vec());
        broker.write_all(tail).unwrap();
        broker.write_all(&unknown).unwrap();
        broker.write_all(&ack).unwrap();
        let second = Duration::from_secs(5);
        for _ in 0..2 {
            let f = reader.next(&mut client, second).unwrap();
            assert!(
                matches!(
                    f,
                    Some(BrokerFrame::Ack {
                        ack: AckKind::Heartbeat,
                        ..
                    })
                ),
                "{f:?}"
            );
        }
        let t0 = Instant::now();
        assert!(
            reader
                .next(&mut client, Duration::from_millis(50))
                .unwrap()
                .is_none()
        );
        assert!(t0.elapsed() >= Duration::from_millis(50));
        drop(broker);
        let e = reader.next(&mut client, second).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
