//! The bus hub (protocol v1, steps 7 and 9): the one owner of the
//! subscription map. Sessions (guests and host consumers alike) register
//! their bounded delivery queue, subscribe and unsubscribe through messages;
//! the bus log hands it every committed record, which it fans out with
//! `try_send` only, so a publisher or another subscriber never waits on a
//! slow one. A session takes from its queue only while its unacked window is
//! open (`session.rs`), so a consumer that stops acking fills its queue too.
//!
//! Back-pressure, per session: when its bounded queue is full the message is
//! kept in a bounded pending list and retried every `retry_interval`
//! (decision `queue_full`/`retry`, attempt n); after `max_retries` failed
//! retries the session is evicted (`slow_consumer`/`disconnect`): its
//! subscriptions are cleared here at once and its connection task is told to
//! send `bye slow_consumer`. Deliveries beyond the pending bound, and what is
//! pending at eviction, are dropped and counted (`bus_overflow_dropped_total`).
//!
//! [`Hub`] is synchronous and deterministic (sessions in key order); the
//! async loop [`run`] feeds it messages and retry deadlines.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use smol::Timer;
use smol::channel::{Receiver, Sender, TrySendError};

use super::buslog::Committed;
use super::recorder::RecorderHandle;
use super::session::{Action, Record};
use super::wire::reason::Reason;

/// Default capacity of a session's outbound queue, in frames.
pub const DEFAULT_QUEUE_FRAMES: usize = 1024;
/// Default number of retries before a full queue means `slow_consumer`.
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// Default time between retries.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// How often counters are handed to the recorder (when they changed).
pub const STATS_INTERVAL: Duration = Duration::from_millis(250);

/// An encoded frame shared by every subscriber it goes to.
pub type Frame = Arc<[u8]>;

/// One message for one session: its `seq` (for the unacked window) and its
/// encoded `message` frame.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub seq: u64,
    pub frame: Frame,
}

/// Back-pressure policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubConfig {
    pub queue_frames: usize,
    pub max_retries: u32,
    pub retry_interval: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            queue_frames: DEFAULT_QUEUE_FRAMES,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }
}

/// What the hub is told.
pub enum HubMsg {
    Register {
        key: u64,
        vm: String,
        session: String,
        peer: SocketAddr,
        queue: Sender<Delivery>,
        evict: Sender<Reason>,
    },
    Subscribe {
        key: u64,
        topic: String,
    },
    Unsubscribe {
        key: u64,
        topic: String,
    },
    /// The session is gone: forget it and all its subscriptions.
    Unregister {
        key: u64,
    },
    /// A committed record to deliver.
    Deliver {
        seq: u64,
        topic: String,
        frame: Frame,
    },
    /// The records of one commit, in sequence order (one message per
    /// commit, not one per record; frames are encoded here, for the
    /// records whose topic has subscribers).
    DeliverAll(Vec<Committed>),
}

struct Sub {
    vm: String,
    session: String,
    peer: SocketAddr,
    queue: Sender<Delivery>,
    evict: Sender<Reason>,
    topics: BTreeSet<String>,
    pending: VecDeque<Delivery>,
    attempt: u32,
}

/// A record for the recorder, with the peer it concerns.
pub type Noted = (Record, SocketAddr);

/// The subscription map and per-session back-pressure state.
pub struct Hub {
    config: HubConfig,
    sessions: BTreeMap<u64, Sub>,
    topics: HashMap<String, BTreeSet<u64>>,
    dropped_total: u64,
    delivered_total: u64,
}

impl Hub {
    pub fn new(config: HubConfig) -> Self {
        Hub {
            config,
            sessions: BTreeMap::new(),
            topics: HashMap::new(),
            dropped_total: 0,
            delivered_total: 0,
        }
    }

    /// Deliveries dropped (pending bound reached, or pending at eviction).
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Frames handed to session queues.
    pub fn delivered_total(&self) -> u64 {
        self.delivered_total
    }

    /// Frames waiting in every session's queue plus those pending a retry.
    pub fn queue_depth(&self) -> u64 {
        self.sessions
            .values()
            .map(|s| (s.queue.len() + s.pending.len()) as u64)
            .sum()
    }

    /// Whether some session waits for a retry.
    pub fn has_pending(&self) -> bool {
        self.sessions.values().any(|s| !s.pending.is_empty())
    }

    /// Subscribers of `topic`, in key order.
    pub fn subscribers(&self, topic: &str) -> Vec<u64> {
        self.topics
            .get(topic)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn handle(&mut self, msg: HubMsg) -> Vec<Noted> {
        match msg {
            HubMsg::Register {
                key,
                vm,
                session,
                peer,
                queue,
                evict,
            } => {
                self.sessions.insert(
                    key,
                    Sub {
                        vm,
                        session,
                        peer,
                        queue,
                        evict,
                        topics: BTreeSet::new(),
                        pending: VecDeque::new(),
                        attempt: 0,
                    },
                );
                vec![]
            }
            HubMsg::Subscribe { key, topic } => {
                if let Some(sub) = self.sessions.get_mut(&key) {
                    sub.topics.insert(topic.clone());
                    self.topics.entry(topic).or_default().insert(key);
                }
                vec![]
            }
            HubMsg::Unsubscribe { key, topic } => {
                if let Some(sub) = self.sessions.get_mut(&key) {
                    sub.topics.remove(&topic);
                    self.unlink(key, &topic);
                }
                vec![]
            }
            HubMsg::Unregister { key } => {
                self.remove(key);
                vec![]
            }
            HubMsg::Deliver { seq, topic, frame } => self.deliver(&topic, Delivery { seq, frame }),
            HubMsg::DeliverAll(batch) => {
                let mut noted = Vec::new();
                for rec in batch {
                    // Encoded only for a topic someone receives.
                    if self.topics.contains_key(&rec.topic) {
                        let frame = rec.message_frame();
                        noted.extend(self.deliver(
                            &rec.topic,
                            Delivery {
                                seq: rec.seq,
                                frame,
                            },
                        ));
                    }
                }
                noted
            }
        }
    }

    fn deliver(&mut self, topic: &str, delivery: Delivery) -> Vec<Noted> {
        let mut noted = Vec::new();
        let Some(keys) = self.topics.get(topic) else {
            return noted;
        };
        let cap = self.config.queue_frames;
        for key in keys {
            let Some(sub) = self.sessions.get_mut(key) else {
                continue;
            };
            if !sub.pending.is_empty() {
                // Keep order: nothing overtakes what waits for a retry.
                if sub.pending.len() >= cap {
                    self.dropped_total += 1;
                } else {
                    sub.pending.push_back(delivery.clone());
                }
                continue;
            }
            match sub.queue.try_send(delivery.clone()) {
                Ok(()) => self.delivered_total += 1,
                Err(TrySendError::Full(f)) => {
                    sub.pending.push_back(f);
                    sub.attempt = 1;
                    noted.push(decision(sub, Reason::QueueFull, Action::Retry, 1));
                }
                // The session is closing; it unregisters itself.
                Err(TrySendError::Closed(_)) => {}
            }
        }
        noted
    }

    /// Retry every session with pending frames; evict those out of retries.
    pub fn retry(&mut self) -> Vec<Noted> {
        let mut noted = Vec::new();
        let mut evicted = Vec::new();
        for (key, sub) in &mut self.sessions {
            if sub.pending.is_empty() {
                continue;
            }
            while let Some(f) = sub.pending.pop_front() {
                match sub.queue.try_send(f) {
                    Ok(()) => self.delivered_total += 1,
                    Err(TrySendError::Full(f)) | Err(TrySendError::Closed(f)) => {
                        sub.pending.push_front(f);
                        break;
                    }
                }
            }
            if sub.pending.is_empty() {
                sub.attempt = 0;
                continue;
            }
            if sub.attempt >= self.config.max_retries {
                noted.push(decision(
                    sub,
                    Reason::SlowConsumer,
                    Action::Disconnect,
                    sub.attempt,
                ));
                evicted.push(*key);
            } else {
                sub.attempt += 1;
                noted.push(decision(sub, Reason::QueueFull, Action::Retry, sub.attempt));
            }
        }
        for key in evicted {
            if let Some(sub) = self.remove(key) {
                self.dropped_total += sub.pending.len() as u64;
                let _ = sub.evict.try_send(Reason::SlowConsumer);
            }
        }
        noted
    }

    fn remove(&mut self, key: u64) -> Option<Sub> {
        let sub = self.sessions.remove(&key)?;
        for topic in &sub.topics {
            self.unlink(key, topic);
        }
        Some(sub)
    }

    fn unlink(&mut self, key: u64, topic: &str) {
        if let Some(set) = self.topics.get_mut(topic) {
            set.remove(&key);
            if set.is_empty() {
                self.topics.remove(topic);
            }
        }
    }
}

fn decision(sub: &Sub, reason: Reason, action: Action, attempt: u32) -> Noted {
    (
        Record::Decision {
            vm: sub.vm.clone(),
            session: sub.session.clone(),
            reason,
            action,
            attempt,
        },
        sub.peer,
    )
}

/// Drive a hub until every sender of `rx` is dropped.
pub async fn run(mut hub: Hub, rx: Receiver<HubMsg>, recorder: RecorderHandle) {
    let retry_interval = hub.config.retry_interval;
    let mut next_retry: Option<Instant> = None;
    let mut next_stats = Instant::now() + STATS_INTERVAL;
    let mut reported = (u64::MAX, u64::MAX);
    loop {
        let wake = next_retry.map_or(next_stats, |r| r.min(next_stats));
        let msg = async { Some(rx.recv().await) }
            .or(async {
                Timer::at(wake).await;
                None
            })
            .await;
        let mut noted = match msg {
            Some(Ok(m)) => hub.handle(m),
            Some(Err(_)) => return,
            None => Vec::new(),
        };
        let now = Instant::now();
        if next_retry.is_some_and(|at| now >= at) {
            noted.extend(hub.retry());
            next_retry = None;
        }
        if next_retry.is_none() && hub.has_pending() {
            next_retry = Some(now + retry_interval);
        }
        for (record, peer) in noted {
            recorder.record(record, peer);
        }
        if now >= next_stats {
            next_stats = now + STATS_INTERVAL;
            let stats = (hub.dropped_total(), hub.queue_depth());
            if stats != reported {
                reported = stats;
                recorder.bus_stats(stats.0, stats.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Peer {
        rx: Receiver<Delivery>,
        evicted: Receiver<Reason>,
    }

    fn register(hub: &mut Hub, key: u64, vm: &str, cap: usize) -> Peer {
        let (queue, rx) = smol::channel::bounded(cap);
        let (evict, evicted) = smol::channel::bounded(1);
        hub.handle(HubMsg::Register {
            key,
            vm: vm.into(),
            session: format!("s{key}"),
            peer: "127.0.0.1:4000".parse().unwrap(),
            queue,
            evict,
        });
        Peer { rx, evicted }
    }

    fn sub(hub: &mut Hub, key: u64, topic: &str) {
        hub.handle(HubMsg::Subscribe {
            key,
            topic: topic.into(),
        });
    }

    fn deliver(hub: &mut Hub, topic: &str, n: u8) -> Vec<String> {
        show(hub.handle(HubMsg::Deliver {
            seq: u64::from(n),
            topic: topic.into(),
            frame: vec![n].into(),
        }))
    }

    fn show(noted: Vec<Noted>) -> Vec<String> {
        noted.into_iter().map(|(r, _)| format!("{r:?}")).collect()
    }

    fn drain(p: &Peer) -> Vec<u8> {
        std::iter::from_fn(|| p.rx.try_recv().ok().map(|d| d.frame[0])).collect()
    }

    #[test]
    fn fan_out_by_topic_and_unsubscribe() {
        let mut hub = Hub::new(HubConfig::default());
        let a = register(&mut hub, 1, "a", 8);
        let b = register(&mut hub, 2, "b", 8);
        sub(&mut hub, 1, "broadcast");
        sub(&mut hub, 2, "broadcast");
        sub(&mut hub, 2, "vm:b");
        deliver(&mut hub, "broadcast", 1);
        deliver(&mut hub, "vm:b", 2);
        deliver(&mut hub, "nobody", 3);
        hub.handle(HubMsg::Unsubscribe {
            key: 2,
            topic: "broadcast".into(),
        });
        deliver(&mut hub, "broadcast", 4);
        assert_eq!((drain(&a), drain(&b)), (vec![1, 4], vec![1, 2]));
        // A whole commit in one message: each record to its topic's
        // subscribers, in order, as its `message` frame.
        let commit = [
            (5, "broadcast"),
            (6, "vm:b"),
            (7, "nobody"),
            (8, "broadcast"),
        ]
        .map(|(seq, topic): (u64, &str)| Committed {
            seq,
            vm: "web".into(),
            topic: topic.into(),
            ts_ms: 1,
            payload: serde_json::json!({ "n": seq }),
            id: None,
        });
        assert!(hub.handle(HubMsg::DeliverAll(commit.to_vec())).is_empty());
        let got =
            |p: &Peer| -> Vec<Delivery> { std::iter::from_fn(|| p.rx.try_recv().ok()).collect() };
        let (to_a, to_b) = (got(&a), got(&b));
        let seqs = |d: &[Delivery]| -> Vec<u64> { d.iter().map(|d| d.seq).collect() };
        assert_eq!((seqs(&to_a), seqs(&to_b)), (vec![5, 8], vec![6]));
        assert_eq!(&to_b[0].frame[..], &commit[1].message_frame()[..]);
        hub.handle(HubMsg::Unregister { key: 2 });
        assert_eq!(hub.subscribers("vm:b"), Vec::<u64>::new());
        assert_eq!(hub.subscribers("broadcast"), vec![1]);
        assert_eq!(hub.delivered_total(), 7);
    }

    #[test]
    fn a_full_queue_is_retried_then_evicted_and_others_keep_flowing() {
        let mut hub = Hub::new(HubConfig {
            queue_frames: 2,
            max_retries: 2,
            retry_interval: Duration::from_millis(1),
        });
        let slow = register(&mut hub, 1, "slow", 2);
        let fast = register(&mut hub, 2, "fast", 2);
        sub(&mut hub, 1, "t");
        sub(&mut hub, 2, "t");
        let mut log = Vec::new();
        for n in 1..=5 {
            log.extend(deliver(&mut hub, "t", n));
            assert_eq!(
                drain(&fast),
                vec![n],
                "the healthy subscriber gets every message at once"
            );
        }
        assert_eq!(hub.queue_depth(), 2 + 2);
        assert_eq!(
            hub.dropped_total(),
            1,
            "pending holds 2, the 5th is dropped"
        );
        // The slow one reads one frame: the retry moves one pending frame in.
        assert_eq!(slow.rx.try_recv().unwrap().seq, 1);
        log.extend(show(hub.retry()));
        log.extend(show(hub.retry()));
        log.extend(show(hub.retry()));
        insta::assert_snapshot!(log.join("\n"), @r#"
            Decision { vm: "slow", session: "s1", reason: QueueFull, action: Retry, attempt: 1 }
            Decision { vm: "slow", session: "s1", reason: QueueFull, action: Retry, attempt: 2 }
            Decision { vm: "slow", session: "s1", reason: SlowConsumer, action: Disconnect, attempt: 2 }
            "#);
        assert_eq!(slow.evicted.try_recv(), Ok(Reason::SlowConsumer));
        assert_eq!(hub.subscribers("t"), vec![2]);
        assert_eq!(hub.dropped_total(), 2);
        assert!(!hub.has_pending());
        // Order was kept for what did arrive.
        assert_eq!(drain(&slow), vec![2, 3]);
    }

    #[test]
    fn a_drained_queue_resets_the_retry_count() {
        let mut hub = Hub::new(HubConfig {
            queue_frames: 1,
            max_retries: 1,
            retry_interval: Duration::from_millis(1),
        });
        let p = register(&mut hub, 1, "a", 1);
        sub(&mut hub, 1, "t");
        for round in 0..3u8 {
            assert!(deliver(&mut hub, "t", 2 * round).is_empty());
            assert_eq!(deliver(&mut hub, "t", 2 * round + 1).len(), 1);
            assert_eq!(drain(&p), vec![2 * round]);
            assert!(hub.retry().is_empty());
            assert_eq!(drain(&p), vec![2 * round + 1]);
        }
        assert!(p.evicted.try_recv().is_err());
    }
}
