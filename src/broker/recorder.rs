//! The recorder thread: the one owner of the broker's state snapshot. It
//! applies session records, appends events to events.jsonl and readable
//! lines to the broker log (stderr), writes state.json by atomic rename
//! (tmp, fsync, rename) at most every [`MIN_WRITE_INTERVAL`], and answers
//! `status` requests from the host socket. It never touches a socket, so a
//! slow disk delays files, never sessions.

use crate::fsutil::write_atomic;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::events::{Event, utc};
use super::reason::Reason;
use super::session::Record;
use super::state::BrokerSnapshot;
use crate::layout::StateLayout;

/// state.json is rewritten at most this often (changes in between coalesce).
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_millis(200);

enum Msg {
    Record(Record, SocketAddr),
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
    handle: Option<JoinHandle<()>>,
}

/// A cloneable sender for connection tasks.
#[derive(Clone)]
pub struct RecorderHandle {
    tx: mpsc::Sender<Msg>,
}

impl RecorderHandle {
    pub fn record(&self, record: Record, peer: SocketAddr) {
        let _ = self.tx.send(Msg::Record(record, peer));
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
        let mut worker = Worker {
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
            handle: Some(handle),
        })
    }

    pub fn handle(&self) -> RecorderHandle {
        RecorderHandle {
            tx: self.tx.clone(),
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
                Ok(Msg::Event(event)) => self.emit(&event, unix_ms()),
                Ok(Msg::BusStats {
                    dropped_total,
                    queue_depth,
                }) => {
                    self.snapshot.set_bus_stats(dropped_total, queue_depth);
                    self.dirty = true;
                }
                Ok(Msg::Status(reply)) => {
                    let _ = reply.try_send(self.render(unix_ms()));
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
        if let Err(e) = self.events.write_all(line.as_bytes()) {
            log(&format!("cannot append to events.jsonl: {e}"));
        }
        let mut text = event.log_line(now);
        text.push('\n');
        let _ = io::stderr().lock().write_all(text.as_bytes());
    }

    fn render(&mut self, now: u64) -> String {
        self.snapshot.written_ms = now;
        self.snapshot.connections = self.connections.load(Ordering::Relaxed) as u32;
        serde_json::to_string_pretty(&self.snapshot).unwrap_or_default()
    }

    fn write_state(&mut self) {
        let json = self.render(unix_ms());
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

/// Milliseconds since the unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One readable line on stderr (the broker log).
pub fn log(msg: &str) {
    let line = format!("{} {msg}\n", utc(unix_ms()));
    let _ = io::stderr().lock().write_all(line.as_bytes());
}
