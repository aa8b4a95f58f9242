//! Guest connections still in their hello phase, oldest first. When the
//! connection cap is reached, the oldest of them is told to close
//! (`error: too_many_connections`) to make room for the new one, so clients
//! that connect and never finish a hello cannot keep real guests out; only
//! when every connection is past its hello is a new one refused.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The registry ([`Ctx`](super::context::Ctx) holds one).
#[derive(Default)]
pub(super) struct Pending {
    inner: Mutex<(u64, BTreeMap<u64, smol::channel::Sender<()>>)>,
}

/// A connection's place in the registry; leaving it (drop) ends the wait.
pub(super) struct Ticket {
    pending: Arc<Pending>,
    key: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.pending.inner.lock() {
            inner.1.remove(&self.key);
        }
    }
}

impl Pending {
    /// Register a connection that starts its hello; the receiver gets `()`
    /// when it must close to make room.
    pub(super) fn enter(self: &Arc<Self>) -> (Ticket, smol::channel::Receiver<()>) {
        let (tx, rx) = smol::channel::bounded(1);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0 += 1;
        let key = inner.0;
        inner.1.insert(key, tx);
        let ticket = Ticket {
            pending: self.clone(),
            key,
        };
        (ticket, rx)
    }

    /// Tell the oldest connection still in its hello to close; false when
    /// there is none.
    pub(super) fn evict_oldest(&self) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.1.pop_first() {
            Some((_, tx)) => {
                let _ = tx.try_send(());
                true
            }
            None => false,
        }
    }
}

/// `fut`'s output, or `None` once `evicted` says the connection must close.
pub(super) async fn unless_evicted<T>(
    evicted: &smol::channel::Receiver<()>,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    use futures_lite::FutureExt;
    async { Some(fut.await) }
        .or(async {
            match evicted.recv().await {
                Ok(()) => None,
                Err(_) => std::future::pending().await,
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_connection_is_evicted_and_finished_ones_leave() {
        let p = Arc::new(Pending::default());
        let (first, first_rx) = p.enter();
        let (second, second_rx) = p.enter();
        let (_third, third_rx) = p.enter();
        drop(second);
        assert!(p.evict_oldest());
        assert_eq!(first_rx.try_recv(), Ok(()));
        drop(first);
        // The second left after its hello: the third is next.
        assert!(second_rx.try_recv().is_err());
        assert!(p.evict_oldest());
        assert_eq!(third_rx.try_recv(), Ok(()));
        assert!(!p.evict_oldest());
    }
}
