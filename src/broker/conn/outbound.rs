//! A session's outbound writer task: drains the session's bounded queue into
//! the socket, the frames waiting together in one write, and hands the
//! session's last frames (a `bye`) past a full queue within a grace period.
//! While it holds nothing (its `writing` flag is clear and the queue is
//! empty) the connection task writes a frame to the socket itself; else
//! only this task writes to an open session's socket.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_lite::{AsyncWriteExt, FutureExt, future};
use smol::Timer;

use super::socket::{ReadNow, Reader, Stream};
use crate::broker::context::{FINAL_GRACE, WRITE_TIMEOUT};
use crate::broker::hub::Frame;

/// What the writer task does next.
enum Next {
    Frame(Frame),
    Last(Vec<u8>),
    Done,
}

/// Most bytes the writer gathers from its queue into one socket write.
const WRITE_BATCH: usize = 64 * 1024;

/// A session's writer: drain the outbound queue into the socket, the frames
/// waiting together in one write. When the session's last frames arrive
/// past a full queue, finish the write in flight and write them within
/// [`FINAL_GRACE`], dropping what is queued. A write stalled for
/// [`WRITE_TIMEOUT`] ends the connection (the timer is set only once a
/// write would block: setting it is a round trip through the reactor).
pub(super) async fn write_frames<S: Stream>(
    mut stream: S,
    queue: smol::channel::Receiver<Frame>,
    last: smol::channel::Receiver<Vec<u8>>,
    writing: Arc<AtomicBool>,
) {
    let last_frames = || async {
        match last.recv().await {
            Ok(bytes) => Next::Last(bytes),
            Err(_) => std::future::pending().await,
        }
    };
    let mut stalled = Timer::never();
    let mut batch: Vec<u8> = Vec::new();
    let ok = loop {
        let next = last_frames()
            .or(async {
                match queue.recv().await {
                    Ok(f) => Next::Frame(f),
                    Err(_) => Next::Done,
                }
            })
            .await;
        // The connection task writes to the socket itself only while this
        // task holds nothing (`conn::send`).
        writing.store(true, Ordering::Release);
        let (frame, interrupted) = match next {
            Next::Done => break true,
            Next::Last(bytes) => (Frame::from(bytes), None),
            Next::Frame(first) => {
                let f = gather(first, &queue, &mut batch);
                let mut off = 0;
                let mut interrupted = None;
                while off < f.len() {
                    let step = match future::poll_once(stream.write(&f[off..])).await {
                        Some(written) => Ok(written),
                        None => {
                            stalled.set_after(WRITE_TIMEOUT);
                            async { Ok(stream.write(&f[off..]).await) }
                                .or(async {
                                    match last_frames().await {
                                        Next::Last(b) => Err(b),
                                        Next::Frame(_) | Next::Done => std::future::pending().await,
                                    }
                                })
                                .or(async {
                                    (&mut stalled).await;
                                    Ok(Err(io::Error::new(
                                        io::ErrorKind::TimedOut,
                                        "write timed out",
                                    )))
                                })
                                .await
                        }
                    };
                    match step {
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            let _ = stream.end(std::net::Shutdown::Both);
                            return;
                        }
                        Ok(Ok(n)) => off += n,
                        Err(bytes) => {
                            interrupted = Some(bytes);
                            break;
                        }
                    }
                }
                match interrupted {
                    None => {
                        writing.store(false, Ordering::Release);
                        continue;
                    }
                    Some(bytes) => (f, Some((off, bytes))),
                }
            }
        };
        // The last frames: finish the interrupted frame first, then them.
        let mut tail = Vec::new();
        match interrupted {
            Some((off, bytes)) => {
                tail.extend_from_slice(&frame[off..]);
                tail.extend_from_slice(&bytes);
            }
            None => tail.extend_from_slice(&frame),
        }
        let done = async { stream.write_all(&tail).await.is_ok() }
            .or(async {
                Timer::after(FINAL_GRACE).await;
                false
            })
            .await;
        break done;
    };
    let how = if ok {
        std::net::Shutdown::Write
    } else {
        std::net::Shutdown::Both
    };
    let _ = stream.end(how);
}

/// The frames a connection task produced in one turn (the acks of one
/// commit, a run of deliveries), written together at the end of the turn:
/// one `send` per session per commit instead of one per frame. Straight to
/// the socket while the writer task holds nothing; else, and for what the
/// socket does not take, through the writer's queue, behind what is there.
#[derive(Default)]
pub(super) struct Cork {
    buf: Vec<u8>,
}

impl Cork {
    /// Add a frame; true once a batch's worth waits (flush it now).
    pub(super) fn push(&mut self, frame: &[u8]) -> bool {
        self.buf.extend_from_slice(frame);
        self.buf.len() >= WRITE_BATCH
    }

    /// What waits, taken out (the session's last frames go another way).
    pub(super) fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Write what waits. `Err` once the peer or the writer task is gone.
    pub(super) async fn flush<R: ReadNow>(
        &mut self,
        socket: &Reader<R>,
        queue: &smol::channel::Sender<Frame>,
        writing: &AtomicBool,
    ) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut off = 0;
        if queue.is_empty() && !writing.load(Ordering::Acquire) {
            match socket.write_now(&self.buf) {
                Ok(n) => off = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.buf.clear();
                    return Err(e);
                }
            }
        }
        let rest: Option<Frame> = (off < self.buf.len()).then(|| self.buf[off..].into());
        self.buf.clear();
        match rest {
            Some(frame) => queue
                .send(frame)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "writer stopped")),
            None => Ok(()),
        }
    }
}

/// `first` and the frames already waiting behind it, up to [`WRITE_BATCH`]
/// bytes, as one buffer (`first` alone when nothing waits).
fn gather(first: Frame, queue: &smol::channel::Receiver<Frame>, batch: &mut Vec<u8>) -> Frame {
    let Ok(second) = queue.try_recv() else {
        return first;
    };
    batch.clear();
    batch.extend_from_slice(&first);
    batch.extend_from_slice(&second);
    while batch.len() < WRITE_BATCH {
        match queue.try_recv() {
            Ok(f) => batch.extend_from_slice(&f),
            Err(_) => break,
        }
    }
    Frame::from(batch.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(byte: u8, len: usize) -> Frame {
        vec![byte; len].into()
    }

    #[test]
    fn the_writer_gathers_waiting_frames_in_order_up_to_a_batch() {
        let (tx, rx) = smol::channel::unbounded();
        let mut batch = Vec::new();
        // Nothing waits: the frame goes alone, as it is.
        let alone = gather(frame(1, 3), &rx, &mut batch);
        assert_eq!(&alone[..], [1, 1, 1]);

        for b in 2..=4 {
            tx.try_send(frame(b, 2)).unwrap();
        }
        let joined = gather(frame(1, 1), &rx, &mut batch);
        assert_eq!(&joined[..], [1, 2, 2, 3, 3, 4, 4]);
        assert!(rx.is_empty());

        // Past WRITE_BATCH bytes the rest stays queued, whole frames only.
        for b in 0..4 {
            tx.try_send(frame(b, WRITE_BATCH / 2)).unwrap();
        }
        let big = gather(frame(9, 1), &rx, &mut batch);
        assert_eq!(big.len(), 1 + 2 * (WRITE_BATCH / 2));
        assert_eq!(rx.len(), 2);
        assert_eq!(big[1], 0);
        assert_eq!(big[big.len() - 1], 1);
    }
}
