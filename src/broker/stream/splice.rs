//! The splice of one stream: bytes from the host tool's Unix socket to the
//! agent's TCP connection and back, through one fixed buffer each way (a
//! side that stops reading stops the other side's writes: TCP's flow control
//! end to end, memory bounded whatever the volume). A [`Scanner`] watches
//! each direction for the events log (the request, the exit code, byte
//! counts); the bytes themselves are never kept. Yields to the executor
//! after every chunk, so a stream at full speed never starves bus sessions.

use std::net::Shutdown;
use std::time::Instant;

use async_net::TcpStream;
use async_net::unix::UnixStream;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use smol::Timer;

use super::super::context::FINAL_GRACE;
use super::wire::{Control, Scanner};

const CHUNK: usize = 64 * 1024;

/// What went through a finished splice.
pub(super) struct Done {
    pub(super) to_guest: Scanner,
    pub(super) to_host: Scanner,
    /// When the agent's side ended (the grace after it is not the stream's).
    pub(super) ended: Instant,
}

impl Done {
    /// The request's kind, argv (exec) and path (cp), for the events log.
    /// Never the environment or any data.
    pub(super) fn request(&self) -> (Option<String>, Option<Vec<String>>, Option<String>) {
        match self.to_guest.controls.first() {
            Some(c @ Control::Exec { argv, .. }) => {
                (c.kind().map(str::to_owned), Some(argv.clone()), None)
            }
            Some(c @ (Control::Put { path } | Control::Get { path, .. })) => {
                (c.kind().map(str::to_owned), None, Some(path.clone()))
            }
            _ => (None, None, None),
        }
    }
}

async fn pump<R, W>(
    mut from: R,
    mut to: W,
    first: Vec<u8>,
    scanner: &mut Scanner,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !first.is_empty() {
        scanner.observe(&first);
        to.write_all(&first).await?;
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        scanner.observe(&buf[..n]);
        to.write_all(&buf[..n]).await?;
        futures_lite::future::yield_now().await;
    }
}

/// Splice until the agent's side ends (then the host gets a moment to
/// finish) or either side fails; both sockets are shut down on return.
pub(super) async fn run(
    host: UnixStream,
    host_rest: Vec<u8>,
    agent: TcpStream,
    agent_rest: Vec<u8>,
) -> Done {
    let mut to_guest = Scanner::default();
    let mut to_host = Scanner::default();
    let mut ended = None;
    {
        let up = async {
            let r = pump(host.clone(), agent.clone(), host_rest, &mut to_guest).await;
            // The host finished sending (or went away): the agent reads EOF.
            let _ = agent.shutdown(Shutdown::Write);
            r
        };
        let down = async {
            let r = pump(agent.clone(), host.clone(), agent_rest, &mut to_host).await;
            let _ = host.shutdown(Shutdown::Write);
            r
        };
        // Up ending first is normal (stdin done, or the host died: then the
        // agent sees EOF and ends the command); down ending ends the stream.
        let up_then_wait = async {
            if up.await.is_err() {
                return;
            }
            std::future::pending::<()>().await
        };
        let down_then_grace = async {
            let _ = down.await;
            ended = Some(Instant::now());
            Timer::after(FINAL_GRACE).await;
        };
        up_then_wait.or(down_then_grace).await;
    }
    let _ = agent.shutdown(Shutdown::Both);
    let _ = host.shutdown(Shutdown::Both);
    Done {
        to_guest,
        to_host,
        ended: ended.unwrap_or_else(Instant::now),
    }
}
