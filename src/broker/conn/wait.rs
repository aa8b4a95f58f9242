//! A connection task's wait: for bytes on its socket, the session's next
//! deadline, a publish completion, an eviction, a delivery while the
//! unacked window is open, or the broker's shutdown (`mod.rs` acts on what
//! it returns).

use std::task::Poll;

use futures_lite::{FutureExt, Stream as _, future};

use super::socket::Stream;
use super::{Conn, Wake};
use crate::broker::context::MAX_PUBLISHES_IN_FLIGHT;

impl<S: Stream> Conn<S> {
    /// Wait for bytes (unless [`MAX_PUBLISHES_IN_FLIGHT`] publishes await
    /// the log), the session's next deadline, a publish completion, an
    /// eviction, or shutdown.
    ///
    /// The channels are polled as streams: each receiver keeps its listener
    /// registered across waits (a session waits twice per publish, and a
    /// `recv()` future would register and drop a listener on each of four
    /// channels every time).
    pub(super) async fn wait(&mut self, buf: &mut [u8]) -> Wake {
        let deadline = self.session.deadline_ms().map(|ms| self.ctx.instant_at(ms));
        if let Some(at) = deadline
            && self.tick_at.is_none_or(|set| at < set)
        {
            self.tick.set_at(at);
            self.tick_at = Some(at);
        }
        let can_deliver = self.session.can_deliver();
        let Conn {
            reader,
            bus,
            stop,
            tick: timer,
            tick_at,
            publishing,
            ..
        } = self;
        let (mut link, mut deliveries) = match bus {
            Some(b) => (
                Some((&mut b.evicted, &mut b.commits)),
                Some(&mut b.deliveries),
            ),
            None => (None, None),
        };
        let signals = future::poll_fn(|cx| {
            // Closed or signalled, the broker is stopping.
            if stop.as_mut().poll_next(cx).is_ready() {
                return Poll::Ready(Wake::Shutdown);
            }
            if let Some((evicted, commits)) = link.as_mut() {
                // A closed channel (the hub forgot this session) is never ready.
                if let Poll::Ready(Some(reason)) = evicted.as_mut().poll_next(cx) {
                    return Poll::Ready(Wake::Evicted(reason));
                }
                if let Poll::Ready(Some((id, result))) = commits.as_mut().poll_next(cx) {
                    return Poll::Ready(Wake::Committed(id, result));
                }
            }
            Poll::Pending
        });
        // A publisher far ahead of the log waits for its completions before
        // more of its bytes are read (TCP slows it), so it cannot fill the
        // log's shared queue in front of everyone else's publishes.
        let reading = *publishing < MAX_PUBLISHES_IN_FLIGHT;
        let read = async {
            if !reading {
                std::future::pending::<()>().await
            }
            Wake::Read(reader.read(buf).await)
        };
        let tick = async {
            if deadline.is_none() {
                std::future::pending::<()>().await
            }
            timer.await;
            *tick_at = None;
            Wake::Tick
        };
        let deliver = future::poll_fn(|cx| match deliveries.as_mut() {
            // The hub forgot this session (evicted): its notice follows.
            Some(rx) if can_deliver => match rx.as_mut().poll_next(cx) {
                Poll::Ready(Some(d)) => Poll::Ready(Wake::Deliver(d)),
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            },
            _ => Poll::Pending,
        });
        signals.or(read).or(tick).or(deliver).await
    }
}
