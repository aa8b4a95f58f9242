//! The client side of every peer: one TCP connection to a loopback server
//! (no Nagle, a read timeout so a lost ack or delivery fails its cell instead
//! of hanging the run) with the reads the hand-written protocol clients share
//! (a line, exactly n bytes, one byte). It knows no protocol; each peer module
//! frames its own messages.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A connection: writes go straight to the socket, reads through a buffer.
pub struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(port: u16) -> io::Result<Conn> {
        let w = TcpStream::connect(("127.0.0.1", port))?;
        w.set_nodelay(true)?;
        w.set_read_timeout(Some(Duration::from_secs(5)))?;
        let r = BufReader::new(w.try_clone()?);
        Ok(Conn { w, r })
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)
    }

    /// One line with its terminator; end of stream is an error.
    pub fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line)
    }

    pub fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0; n];
        self.r.read_exact(&mut v)?;
        Ok(v)
    }

    pub fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.r.read_exact(&mut b)?;
        Ok(b[0])
    }
}
