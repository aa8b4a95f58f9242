//! The socket under a bus connection: the [`Stream`] a session runs on (TCP
//! for guests, a Unix socket for host sessions) and the [`Reader`] that
//! reads it without trying an empty socket first. What is read is the
//! connection task's (`mod.rs`); what is written, the outbound writer's
//! (`outbound.rs`).

use std::io;
use std::sync::Arc;

use async_io::Async;
use async_net::TcpStream;
use async_net::unix::UnixStream;
use futures_lite::{AsyncRead, AsyncWrite, future};

/// A connected socket a session runs on.
pub(super) trait Stream:
    AsyncRead + AsyncWrite + Clone + Unpin + Send + Sync + 'static
{
    /// The socket under the async wrapper.
    type Raw: ReadNow;

    /// Shut down one or both directions.
    fn end(&self, how: std::net::Shutdown) -> io::Result<()>;

    /// The socket with its readiness, for reads that wait for an event
    /// instead of trying the socket first.
    fn source(&self) -> Arc<Async<Self::Raw>>;
}

impl Stream for TcpStream {
    type Raw = std::net::TcpStream;

    fn end(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }

    fn source(&self) -> Arc<Async<Self::Raw>> {
        self.clone().into()
    }
}

impl Stream for UnixStream {
    type Raw = std::os::unix::net::UnixStream;

    fn end(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }

    fn source(&self) -> Arc<Async<Self::Raw>> {
        self.clone().into()
    }
}

/// A non-blocking read and write on the socket under an async wrapper.
pub(super) trait ReadNow: Send + Sync + 'static {
    fn read_now(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn write_now(&self, buf: &[u8]) -> io::Result<usize>;
}

impl ReadNow for std::net::TcpStream {
    fn read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &*self, buf)
    }
    fn write_now(&self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut &*self, buf)
    }
}

impl ReadNow for std::os::unix::net::UnixStream {
    fn read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &*self, buf)
    }
    fn write_now(&self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut &*self, buf)
    }
}

/// Reads from a socket without the read that only learns it is empty:
/// after a read that drained it (fewer bytes than the buffer holds) or came
/// back empty, the next read first waits for the reactor's readiness event.
/// A session waits on its socket after every frame and every completion,
/// so trying the socket first would cost one failed `recv` each time.
pub(super) struct Reader<R: ReadNow> {
    source: Arc<Async<R>>,
    maybe_more: bool,
}

impl<R: ReadNow> Reader<R> {
    pub(super) fn new(source: Arc<Async<R>>) -> Reader<R> {
        Reader {
            source,
            maybe_more: true,
        }
    }

    /// Write what the socket takes now, without waiting (`WouldBlock` when
    /// it takes nothing). Only while the session's writer task is idle.
    pub(super) fn write_now(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.source.get_ref().write_now(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    pub(super) async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.maybe_more {
                // The socket's single waker slot, which stays registered
                // when this future is dropped (`readable()` would
                // unregister and re-arm epoll on every wait).
                future::poll_fn(|cx| self.source.poll_readable(cx)).await?;
            }
            match self.source.get_ref().read_now(buf) {
                Ok(n) => {
                    self.maybe_more = n == buf.len();
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.maybe_more = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
