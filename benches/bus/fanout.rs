//! The in-process hub measurement: deliveries per second from the broker's
//! hub to 4 drained subscriber queues, against plain `try_send` to 4 queues
//! as the baseline. No sockets, no disk, no peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use ::castra::broker::hub::{Delivery, Frame, Hub, HubConfig, HubMsg};
use ::castra::broker::wire::reason::Reason;

/// Deliveries per second through the hub to 4 drained subscriber queues,
/// and through plain `try_send` to 4 queues (the baseline).
pub fn fanout(through_hub: bool) -> f64 {
    const EVENTS: u64 = 500_000;
    const SUBS: usize = 4;
    let mut hub = Hub::new(HubConfig {
        queue_frames: 4096,
        // The bench drains as fast as it can; no subscriber is ever evicted.
        max_retries: u32::MAX,
        ..HubConfig::default()
    });
    let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
    let mut queues = Vec::new();
    let drains: Vec<_> = (0..SUBS)
        .map(|k| {
            let (tx, rx) = smol::channel::bounded::<Delivery>(4096);
            let (etx, _erx) = smol::channel::bounded::<Reason>(1);
            hub.handle(HubMsg::Register {
                key: k as u64,
                vm: format!("s{k}"),
                session: format!("{k}"),
                peer,
                queue: tx.clone(),
                evict: etx,
            });
            hub.handle(HubMsg::Subscribe {
                key: k as u64,
                topic: "t".into(),
            });
            queues.push(tx);
            thread::spawn(move || {
                let mut n = 0u64;
                while rx.recv_blocking().is_ok() {
                    n += 1;
                }
                n
            })
        })
        .collect();
    let frame: Frame =
        Arc::from(&b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"[..]);
    let t0 = Instant::now();
    for seq in 0..EVENTS {
        if through_hub {
            hub.handle(HubMsg::Deliver {
                seq,
                topic: "t".into(),
                frame: frame.clone(),
            });
            // Keep order and bounded memory as the hub's retry timer would.
            while hub.has_pending() {
                thread::yield_now();
                hub.retry();
            }
        } else {
            for q in &queues {
                let d = Delivery {
                    seq,
                    frame: frame.clone(),
                };
                while q.try_send(d.clone()).is_err() {
                    thread::yield_now();
                }
            }
        }
    }
    drop(hub);
    drop(queues);
    let delivered: u64 = drains.into_iter().map(|d| d.join().unwrap_or(0)).sum();
    delivered as f64 / t0.elapsed().as_secs_f64()
}
