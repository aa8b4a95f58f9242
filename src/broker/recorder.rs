//! The recorder thread: the one owner of the broker's state snapshot. It
//! applies session records, appends events to events.jsonl and readable
//! lines to the broker log (stderr), writes state.json by atomic rename
//! (tmp, fsync, rename) at most every [`MIN_WRITE_INTERVAL`], and answers
//! `status` requests from the host socket. It never touches a socket, so a
//! slow disk delays files, never sessions.
//!
//! Heartbeats and publishes only refresh times and counters, and they come
//! at the bus's rate: they wait in a shared list, stamped with their time,
//! and are applied when the snapshot is next written or rendered. Only the
//! first of them since the last write wakes the thread, so a busy bus costs
//! the recorder a wake-up per write, not one per publish.

use crate::fsutil::write_atomic;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::events::Event;
use super::session::Record;
use super::stamp::{log, unix_ms};
use super::state::BrokerSnapshot;
use super::wire::reason::Reason;
use crate::layout::StateLayout;

/// state.json is rewritten at most this often (changes in between coalesce).
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_millis(200);

enum Msg {
    Record(Record, SocketAddr),
    /// Refreshes are waiting in the shared list.
    Refreshes,
    Event(Event),
    Status(smol::channel::Sender<String>),
    BusStats {
        dropped_total: u64,
        queue_depth: u64,
    },
    Stop(Reason),
}

/// Handle to the recorder thread.
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    refreshes: Arc<Refreshes>,
    handle: Option<JoinHandle<()>>,
}

/// Records that only refresh times and counters (heartbeats, publishes),
/// each with the time it happened, waiting to be applied.
#[derive(Default)]
struct Refreshes {
    list: Mutex<Vec<(Record, u64)>>,
    /// Set by the first refresh after a drain (which sends the one wake-up),
    /// cleared by the drain.
    pending: AtomicBool,
}

impl Refreshes {
    /// Queue a refresh; true when the recorder must be woken for it.
    fn push(&self, record: Record, at_ms: u64) -> bool {
        if let Ok(mut list) = self.list.lock() {
            list.push((record, at_ms));
        }
        !self.pending.swap(true, Ordering::SeqCst)
    }

    /// Everything queued so far. Clearing `pending` before taking the list
    /// means a refresh pushed after the take always sends a new wake-up.
    fn drain(&self) -> Vec<(Record, u64)> {
        self.pending.store(false, Ordering::SeqCst);
        self.list
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
}

/// A cloneable sender for connection tasks.
#[derive(Clone)]
pub struct RecorderHandle {
    tx: mpsc::Sender<Msg>,
    refreshes: Arc<Refreshes>,
}

impl RecorderHandle {
    pub fn record(&self, record: Record, peer: SocketAddr) {
        match record {
            Record::Heartbeat { .. } | Record::Published { .. } => {
                if self.refreshes.push(record, unix_ms()) {
                    let _ = self.tx.send(Msg::Refreshes);
                }
            }
            _ => {
                let _ = self.tx.send(Msg::Record(record, peer));
            }
        }
    }

    /// An event that comes from no session record (streams).
    pub fn event(&self, event: Event) {
        let _ = self.tx.send(Msg::Event(event));
    }

    /// The hub's counters (`bus_overflow_dropped_total`, `bus_queue_depth`).
    pub fn bus_stats(&self, dropped_total: u64, queue_depth: u64) {
        let _ = self.tx.send(Msg::BusStats {
            dropped_total,
            queue_depth,
        });
    }

    /// The current snapshot as JSON (what state.json would hold now).
    pub async fn status(&self) -> Option<String> {
        let (tx, rx) = smol::channel::bounded(1);
        self.tx.send(Msg::Status(tx)).ok()?;
        rx.recv().await.ok()
    }
}

impl Recorder {
    /// Start the thread. `connections` is read when the snapshot is written.
    pub fn spawn(
        layout: &StateLayout,
        snapshot: BrokerSnapshot,
        connections: Arc<AtomicUsize>,
    ) -> io::Result<Recorder> {
        let events = OpenOptions::new()
            .create(true)
            .append(true)
            .open(layout.broker_events())?;
        let refreshes = Arc::new(Refreshes::default());
        let mut worker = Worker {
            refreshes: refreshes.clone(),
            state_path: layout.broker_state(),
            events,
            snapshot,
            connections,
            dirty: true,
            last_write: None,
        };
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("castra-recorder".into())
            .spawn(move || worker.run(rx))?;
        Ok(Recorder {
            tx,
            refreshes,
            handle: Some(handle),
        })
    }

    pub fn handle(&self) -> RecorderHandle {
        RecorderHandle {
            tx: self.tx.clone(),
            refreshes: self.refreshes.clone(),
        }
    }

    pub fn event(&self, event: Event) {
        let _ = self.tx.send(Msg::Event(event));
    }

    /// Record `broker_stopped`, write the final snapshot and join the thread.
    pub fn stop(mut self, reason: Reason) {
        let _ = self.tx.send(Msg::Stop(reason));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Worker {
    refreshes: Arc<Refreshes>,
    state_path: PathBuf,
    events: File,
    snapshot: BrokerSnapshot,
    connections: Arc<AtomicUsize>,
    dirty: bool,
    last_write: Option<Instant>,
}

impl Worker {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let wait = match (self.dirty, self.last_write) {
                (true, Some(at)) => {
                    (at + MIN_WRITE_INTERVAL).saturating_duration_since(Instant::now())
                }
                (true, None) => Duration::ZERO,
                (false, _) => Duration::from_secs(3600),
            };
            match rx.recv_timeout(wait) {
                Ok(Msg::Record(record, peer)) => {
                    let now = unix_ms();
                    if let Some(event) = Event::from_record(&record, peer) {
                        self.emit(&event, now);
                    }
                    self.snapshot.apply(&record, now);
                    self.dirty = true;
                }
                Ok(Msg::Refreshes) => self.dirty = true,
                Ok(Msg::Event(event)) => self.emit(&event, unix_ms()),
                Ok(Msg::BusStats {
                    dropped_total,
                    queue_depth,
                }) => {
                    self.snapshot.set_bus_stats(dropped_total, queue_depth);
                    self.dirty = true;
                }
                Ok(Msg::Status(reply)) => {
                    // The host socket answers one line: compact JSON.
                    let _ = reply.try_send(self.render(unix_ms(), false));
                }
                Ok(Msg::Stop(reason)) => {
                    self.emit(&Event::BrokerStopped { reason }, unix_ms());
                    self.write_state();
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.write_state();
                    return;
                }
            }
            let due = self
                .last_write
                .is_none_or(|at| at.elapsed() >= MIN_WRITE_INTERVAL);
            if self.dirty && due {
                self.write_state();
            }
        }
    }

    fn emit(&mut self, event: &Event, now: u64) {
        let mut line = event.json_line(now);
        line.push('\n');
        let before = self.events.metadata().map(|m| m.len());
        if let Err(e) = self.events.write_all(line.as_bytes()) {
            // A full disk may have taken part of the line: cut it off, or
            // the next event would be glued to it.
            if let Ok(len) = before {
                let _ = self.events.set_len(len);
            }
            log(&format!("cannot append to events.jsonl: {e}"));
        }
        let mut text = event.log_line(now);
        text.push('\n');
        let _ = io::stderr().lock().write_all(text.as_bytes());
    }

    /// The snapshot as JSON: pretty for state.json, one line for the socket.
    fn render(&mut self, now: u64, pretty: bool) -> String {
        for (record, at_ms) in self.refreshes.drain() {
            self.snapshot.apply(&record, at_ms);
        }
        self.snapshot.written_ms = now;
        self.snapshot.connections = self.connections.load(Ordering::Relaxed) as u32;
        let text = if pretty {
            serde_json::to_string_pretty(&self.snapshot)
        } else {
            serde_json::to_string(&self.snapshot)
        };
        text.unwrap_or_default()
    }

    fn write_state(&mut self) {
        let json = self.render(unix_ms(), true);
        self.last_write = Some(Instant::now());
        match write_atomic(&self.state_path, format!("{json}\n").as_bytes()) {
            Ok(()) => self.dirty = false,
            Err(e) => log(&format!(
                "cannot write broker state {}: {e} (retrying on the next change)",
                self.state_path.display()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(vm: &str, seq: u64) -> Record {
        Record::Published {
            vm: Some(vm.to_owned()),
            seq,
        }
    }

    #[test]
    fn refreshes_wake_the_recorder_once_per_drain_and_lose_none() {
        let r = Refreshes::default();
        assert!(r.push(published("a", 1), 10), "the first one wakes");
        assert!(
            !r.push(published("a", 2), 11),
            "the rest wait for the drain"
        );
        assert!(!r.push(published("b", 3), 12));
        let got: Vec<u64> = r.drain().iter().map(|(_, at)| *at).collect();
        assert_eq!(got, [10, 11, 12]);
        assert!(r.drain().is_empty());
        assert!(r.push(published("a", 4), 13), "after a drain, a new wake");
    }

    /// The real thread: publishes recorded without a wake each still count,
    /// with the time they happened, in what `status` renders and in the
    /// state.json written when the recorder stops.
    #[test]
    fn a_burst_of_publishes_is_counted_in_status_and_state_json() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StateLayout::new(dir.path());
        std::fs::create_dir_all(layout.broker_dir()).unwrap();
        let snapshot = BrokerSnapshot::starting(None, 1, 7000, 15_000, unix_ms());
        let recorder = Recorder::spawn(&layout, snapshot, Arc::new(AtomicUsize::new(0))).unwrap();
        let handle = recorder.handle();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let before = unix_ms();
        for seq in 1..=500 {
            handle.record(published("web", seq), peer);
        }
        handle.record(
            Record::Heartbeat {
                vm: "db".into(),
                session: "s1".into(),
            },
            peer,
        );
        let status: BrokerSnapshot =
            serde_json::from_str(&smol::block_on(handle.status()).unwrap()).unwrap();
        assert_eq!(status.vms["web"].publishes, 500);
        assert_eq!(status.bus_last_seq, Some(500));
        let at = status.vms["web"].last_publish_ms.unwrap();
        assert!(
            at >= before && at <= unix_ms(),
            "{at} not in [{before}, now]"
        );
        assert!(status.vms["db"].last_heartbeat_ms.is_some());

        handle.record(published("web", 501), peer);
        recorder.stop(Reason::Shutdown);
        let written: BrokerSnapshot =
            serde_json::from_str(&std::fs::read_to_string(layout.broker_state()).unwrap()).unwrap();
        assert_eq!(written.vms["web"].publishes, 501);
    }
}
