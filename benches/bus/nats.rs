//! The NATS peer (non-durable): `nats-server` core (no JetStream), and a
//! text-protocol client. A publisher connects `verbose` and a publish returns
//! on its `+OK`; a subscriber connects quiet, `SUB`s, and takes `MSG`s. Every
//! read goes through one loop that answers the server's `PING`s.

use std::io;

use crate::conn::Conn;
use crate::server::Server;
use crate::{Peer, Publisher, Subscriber};

pub struct Nats(Server);

impl Nats {
    pub fn start() -> Option<Nats> {
        let s = Server::spawn(
            "nats-server",
            |port, _| {
                Ok(vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                ])
            },
            None,
        )?;
        Some(Nats(s))
    }
}

impl Peer for Nats {
    fn server(&self) -> &Server {
        &self.0
    }
    fn publisher(&self, _: usize) -> io::Result<Box<dyn Publisher>> {
        Ok(Box::new(NatsConn::open(self.0.port, true)?))
    }
    fn subscriber(&self, topic: &str) -> io::Result<Box<dyn Subscriber>> {
        let mut c = NatsConn::open(self.0.port, false)?;
        c.0.send(format!("SUB {topic} 1\r\nPING\r\n").as_bytes())?;
        c.until("PONG")?;
        Ok(Box::new(c))
    }
}

struct NatsConn(Conn);

impl NatsConn {
    fn open(port: u16, verbose: bool) -> io::Result<NatsConn> {
        let mut c = NatsConn(Conn::open(port)?);
        c.0.line()?; // INFO
        c.0.send(
            format!("CONNECT {{\"verbose\":{verbose},\"pedantic\":false}}\r\nPING\r\n").as_bytes(),
        )?;
        c.until("PONG")?;
        Ok(c)
    }

    /// Reads up to the first line starting with `want` and returns it,
    /// answering `PING`s on the way; `-ERR` is an error.
    fn until(&mut self, want: &str) -> io::Result<String> {
        loop {
            let line = self.0.line()?;
            if line.starts_with(want) {
                return Ok(line);
            }
            if line.starts_with("-ERR") {
                return Err(io::Error::other(line));
            }
            if line.starts_with("PING") {
                self.0.send(b"PONG\r\n")?;
            }
        }
    }
}

impl Publisher for NatsConn {
    fn send(&mut self, topic: &str, payload: &[u8]) -> io::Result<()> {
        let mut b = format!("PUB {topic} {}\r\n", payload.len()).into_bytes();
        b.extend_from_slice(payload);
        b.extend_from_slice(b"\r\n");
        self.0.send(&b)
    }

    fn acked(&mut self) -> io::Result<()> {
        self.until("+OK").map(drop)
    }
}

impl Subscriber for NatsConn {
    fn next(&mut self) -> io::Result<Vec<u8>> {
        let line = self.until("MSG ")?;
        let len: usize = line
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let v = self.0.exact(len + 2)?;
        Ok(v[..len].to_vec())
    }
}
