//! The bus log writer thread: group commit into all.log, the publishers'
//! logs kept in step, checkpoints, rotation.
//!
//! A commit takes every publish waiting in the queue, assigns consecutive
//! sequence numbers, appends the lines to all.log and to each publisher's
//! `<vm>.log`, `fdatasync`s all.log (the write-ahead log), and only then
//! completes the batch (the whole batch to the hub at once, then the acks). A failed write or sync completes
//! the batch with `storage_error`, cuts every file back, and never acks it.
//! So does a commit that would leave less than `faults::SPACE_RESERVE` free
//! (one `statvfs` per commit; nothing is written). Every write and sync goes
//! through `faults.rs`, where the tests inject I/O errors.
//! The publishers' logs are synced at checkpoints (`checkpoint.rs`): at most
//! [`CHECKPOINT_EVERY`] after they were written, before any file rotates, and
//! when the writer stops.
//!
//! Files rotate by size: once a file reaches `max_bytes` after a commit,
//! `X.log.{keep-1}` becomes `X.log.{keep}` (the oldest is replaced), ...,
//! `X.log` becomes `X.log.1`, and the next commit creates a fresh `X.log`.
//! Rotation happens only between commits and right after a checkpoint, so a
//! rotated file ends with a whole line and every record in a rotated all.log
//! is already durable in its publisher's log.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::checkpoint::{self, Checkpoint};
use super::faults;
use super::prealloc;
use super::record::{Append, Committed, HOST, LogRecord, MAX_BATCH, Rotation, rotated_path};
use crate::broker::stamp::{log, unix_ms};
use crate::broker::wire::reason::Reason;
use crate::layout::StateLayout;

/// Longest time a publisher's log holds lines that are not yet synced (they
/// are in all.log, which is, and in the page cache).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Longest a commit waits for publishes that are about to join it.
pub const GROUP_WAIT_MAX: Duration = Duration::from_micros(500);

/// all.log's key in the open-file map (publishers are VM names or `host`).
const ALL: &str = "";

struct OpenLog {
    file: File,
    /// Where its records end.
    len: u64,
    /// Its size: for all.log, the records and the zeros written ahead of
    /// them (`prealloc.rs`); for the others, `len`.
    alloc: u64,
    /// The filesystem holding it, when it is a regular file (a symlink to a
    /// device or another filesystem makes `syncfs` of the log directory's
    /// filesystem miss it).
    fs: Option<u64>,
}

pub(super) struct Writer {
    layout: StateLayout,
    files: BTreeMap<String, OpenLog>,
    next_seq: u64,
    deliver: Box<dyn Fn(Vec<Committed>) + Send>,
    rotation: Rotation,
    /// What the last checkpoint says, plus the current length of every
    /// publisher's live log.
    checkpoint: Checkpoint,
    /// Publishers' logs written since the last checkpoint.
    dirty: BTreeSet<String>,
    last_checkpoint: Instant,
    /// Sizes of the last two commits and how long the last sync took: what
    /// the group-commit wait expects ([`group_wait`]).
    recent: [usize; 2],
    last_sync: Duration,
    /// The last commit's timestamp: stamps never go back in a run.
    last_ts_ms: u64,
    /// Whether the last commit was refused for want of space (logged once).
    full: bool,
    /// all.log's zeros written ahead of its records.
    ahead: prealloc::Ahead,
}

impl Writer {
    pub(super) fn new(
        layout: &StateLayout,
        rotation: Rotation,
        deliver: Box<dyn Fn(Vec<Committed>) + Send>,
        next_seq: u64,
        checkpoint: Checkpoint,
    ) -> Writer {
        Writer {
            layout: layout.clone(),
            files: BTreeMap::new(),
            next_seq,
            deliver,
            rotation: Rotation {
                max_bytes: rotation.max_bytes.max(1),
                keep: rotation.keep.max(1),
            },
            checkpoint,
            dirty: BTreeSet::new(),
            last_checkpoint: Instant::now(),
            recent: [0; 2],
            last_sync: Duration::ZERO,
            last_ts_ms: 0,
            full: false,
            ahead: prealloc::Ahead::new(rotation.max_bytes.max(1)),
        }
    }

    pub(super) fn run(&mut self, rx: smol::channel::Receiver<Append>) {
        loop {
            // Wake for the checkpoint if no publish comes first.
            let checkpoint_due =
                (!self.dirty.is_empty()).then(|| self.last_checkpoint + CHECKPOINT_EVERY);
            let first = match next_publish(&rx, checkpoint_due) {
                Next::Publish(a) => a,
                Next::Timeout => {
                    self.checkpoint();
                    continue;
                }
                Next::Closed => break,
            };
            let mut batch = vec![first];
            drain(&rx, &mut batch);
            let (expected, wait) = group_wait(self.recent, self.last_sync, batch.len());
            let deadline = Instant::now() + wait;
            while batch.len() < expected && Instant::now() < deadline {
                match next_publish(&rx, Some(deadline)) {
                    Next::Publish(a) => {
                        batch.push(a);
                        drain(&rx, &mut batch);
                    }
                    Next::Timeout | Next::Closed => break,
                }
            }
            self.recent = [self.recent[1], batch.len()];
            self.commit(batch);
            if let Some(all) = self.files.get_mut(ALL).filter(|l| l.fs.is_some()) {
                let path = self.layout.bus_all_log();
                self.ahead.refill(&all.file, all.len, &mut all.alloc, &path);
            }
            if !self.dirty.is_empty() && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                self.checkpoint();
            }
        }
        // Every sender is gone: the broker stops. Leave nothing to replay,
        // and all.log without the zeros past its records.
        if !self.dirty.is_empty() {
            self.checkpoint();
        }
        if let Some(all) = self.files.get_mut(ALL).filter(|l| l.fs.is_some()) {
            prealloc::cut_to(&all.file, all.len, &mut all.alloc);
        }
    }

    fn commit(&mut self, batch: Vec<Append>) {
        let ts_ms = next_stamp(unix_ms(), self.last_ts_ms);
        self.last_ts_ms = ts_ms;
        let mut records = Vec::with_capacity(batch.len());
        let mut dones = Vec::with_capacity(batch.len());
        let mut bufs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (i, a) in batch.into_iter().enumerate() {
            let rec = LogRecord {
                seq: self.next_seq + i as u64,
                vm: a.vm.unwrap_or_else(|| HOST.to_owned()),
                topic: a.topic,
                ts_ms,
                payload: a.payload,
                id: a.id,
            };
            let mut line = serde_json::to_vec(&rec).unwrap_or_default();
            line.push(b'\n');
            bufs.entry(ALL.to_owned())
                .or_default()
                .extend_from_slice(&line);
            bufs.entry(rec.vm.clone())
                .or_default()
                .extend_from_slice(&line);
            records.push(rec);
            dones.push(a.done);
        }
        let need = bufs.values().map(|b| b.len() as u64).sum();
        if let Err(why) = faults::check_space(&self.layout.bus_log_dir(), need) {
            if !self.full {
                log(&format!("bus log: refusing publishes: {why}"));
            }
            self.full = true;
            for done in dones {
                done(Err(Reason::StorageError));
            }
            return;
        }
        if self.full {
            self.full = false;
            log("bus log: space was freed; publishing again");
        }
        match self.write_all(&bufs) {
            Ok(()) => {
                self.next_seq += records.len() as u64;
                // One hand-over to the hub per commit, then the acks.
                let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
                (self.deliver)(records);
                for (seq, done) in seqs.into_iter().zip(dones) {
                    done(Ok(seq));
                }
                self.rotate_full();
            }
            Err(why) => {
                log(&format!(
                    "bus log: cannot append {} publishes ({why}); they were not acknowledged",
                    records.len()
                ));
                for done in dones {
                    done(Err(Reason::StorageError));
                }
            }
        }
    }

    /// Append each buffer to its file and fdatasync all.log; on any error,
    /// cut every file back to where it was.
    fn write_all(&mut self, bufs: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
        let mut before = Vec::new();
        let mut result = Ok(());
        for (key, buf) in bufs {
            let log = match self.open(key) {
                Ok(l) => l,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            before.push((key.clone(), log.len));
            let written = if key == ALL && log.fs.is_some() {
                prealloc::write_records(&log.file, log.len, &mut log.alloc, buf)
            } else {
                faults::write_all(&mut log.file, buf)
            };
            if let Err(e) = written {
                result = Err(format!("write: {e}"));
                break;
            }
            log.len += buf.len() as u64;
            log.alloc = log.alloc.max(log.len);
        }
        let synced = Instant::now();
        if result.is_ok()
            && let Some(all) = self.files.get(ALL)
            && let Err(e) = faults::sync_data(&all.file)
        {
            result = Err(format!(
                "fdatasync {}: {e}",
                self.layout.bus_all_log().display()
            ));
        }
        self.last_sync = synced.elapsed();
        for (key, len) in before {
            if result.is_err() {
                // After a failed write or sync the file's state is unknown:
                // cut it back and reopen it next time.
                if let Some(log) = self.files.remove(&key) {
                    let _ = log.file.set_len(len);
                }
            } else if key != ALL {
                let len = self.files.get(&key).map_or(len, |l| l.len);
                self.checkpoint.files.insert(key.clone(), len);
                self.dirty.insert(key);
            }
        }
        result
    }

    /// Sync every publisher's log written since the last checkpoint, then
    /// record the state. On failure nothing is recorded: recovery cuts the
    /// files back to the previous checkpoint and replays all.log.
    fn checkpoint(&mut self) -> bool {
        // A file cut back after a failed commit was closed; its earlier
        // lines still need the sync.
        let closed: Vec<String> = self
            .dirty
            .iter()
            .filter(|vm| !self.files.contains_key(*vm))
            .cloned()
            .collect();
        for vm in closed {
            if let Err(e) = self.open(&vm) {
                log(&format!("bus log: checkpoint failed ({e})"));
                self.last_checkpoint = Instant::now();
                return false;
            }
        }
        let dirty: Vec<&OpenLog> = self
            .dirty
            .iter()
            .filter_map(|vm| self.files.get(vm))
            .collect();
        let through_seq = self.next_seq - 1;
        let synced = sync_all_data(&dirty).and_then(|()| {
            self.checkpoint.through_seq = through_seq;
            checkpoint::write(&self.layout.bus_log_dir(), &self.checkpoint)
        });
        self.last_checkpoint = Instant::now();
        match synced {
            Ok(()) => {
                self.dirty.clear();
                true
            }
            Err(e) => {
                log(&format!(
                    "bus log: checkpoint failed ({e}); the publishers' logs will be \
                     rebuilt from all.log at the next start"
                ));
                false
            }
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        if key == ALL {
            self.layout.bus_all_log()
        } else {
            self.layout.bus_vm_log(key)
        }
    }

    /// Rotate every open file that reached the size limit, right after a
    /// checkpoint. A failure is logged and the file kept open (it is retried
    /// after the next commit).
    fn rotate_full(&mut self) {
        let full: Vec<String> = self
            .files
            .iter()
            .filter(|(_, l)| l.len >= self.rotation.max_bytes)
            .map(|(k, _)| k.clone())
            .collect();
        if full.is_empty() {
            return;
        }
        if !self.checkpoint() {
            log("bus log: not rotating until a checkpoint succeeds");
            return;
        }
        for key in full {
            let live = self.path(&key);
            if let Some(log) = self.files.get_mut(&key).filter(|l| l.fs.is_some()) {
                // A rotated file ends with its last record.
                prealloc::cut_to(&log.file, log.len, &mut log.alloc);
            }
            match rotate(&live, self.rotation.keep) {
                Ok(()) => {
                    self.files.remove(&key);
                    if key != ALL {
                        self.checkpoint.files.insert(key, 0);
                    }
                }
                Err(e) => log(&format!(
                    "bus log {}: cannot rotate ({e}); it keeps growing",
                    live.display()
                )),
            }
        }
        // The renames and the new lengths, durable together (the atomic
        // write fsyncs the directory).
        if let Err(e) = checkpoint::write(&self.layout.bus_log_dir(), &self.checkpoint) {
            log(&format!("bus log: checkpoint after rotation failed ({e})"));
        }
    }

    fn open(&mut self, key: &str) -> Result<&mut OpenLog, String> {
        if !self.files.contains_key(key) {
            let path = self.path(key);
            let existed = path.exists();
            // all.log is written at the end of its records, over the zeros
            // written ahead (`prealloc.rs`); the others are appended to.
            let file = if key == ALL {
                prealloc::open(&path)
            } else {
                OpenOptions::new().create(true).append(true).open(&path)
            }
            .map_err(|e| format!("open {}: {e}", path.display()))?;
            if !existed && key == ALL {
                // all.log's name (and any rotation renames) must be durable
                // before a record in it is acknowledged. Publishers' new
                // names become durable with the next checkpoint.
                sync_dir(&self.layout.bus_log_dir())
                    .map_err(|e| format!("fsync {}: {e}", self.layout.bus_log_dir().display()))?;
            }
            let meta = file
                .metadata()
                .map_err(|e| format!("stat {}: {e}", path.display()))?;
            let fs = meta.is_file().then(|| meta.dev());
            let alloc = meta.len();
            let len = if key == ALL && fs.is_some() {
                prealloc::content_end(&file).map_err(|e| format!("read {}: {e}", path.display()))?
            } else {
                alloc
            };
            self.files.insert(
                key.to_owned(),
                OpenLog {
                    file,
                    len,
                    alloc,
                    fs,
                },
            );
        }
        self.files
            .get_mut(key)
            .ok_or_else(|| "bus log vanished".to_owned())
    }
}

/// What waiting for a publish gave.
enum Next {
    Publish(Append),
    Timeout,
    /// Every sender is gone.
    Closed,
}

/// The next publish, waiting until `deadline` at most (`None`: no bound).
/// The thread parks on its own: it never drives the sockets' reactor, whose
/// events belong to the broker's task thread.
fn next_publish(rx: &smol::channel::Receiver<Append>, deadline: Option<Instant>) -> Next {
    let (parker, unparker) = parking::pair();
    let waker = std::task::Waker::from(unparker);
    let mut cx = std::task::Context::from_waker(&waker);
    let mut recv = std::pin::pin!(rx.recv());
    loop {
        if let std::task::Poll::Ready(r) = recv.as_mut().poll(&mut cx) {
            return r.map_or(Next::Closed, Next::Publish);
        }
        match deadline {
            None => parker.park(),
            Some(at) => {
                if !parker.park_deadline(at) && Instant::now() >= at {
                    return Next::Timeout;
                }
            }
        }
    }
}

/// Take what else is waiting, up to a full batch.
fn drain(rx: &smol::channel::Receiver<Append>, batch: &mut Vec<Append>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(a) => batch.push(a),
            Err(_) => break,
        }
    }
}

/// Group commit: with one publish in flight per publisher, a commit acks
/// every publisher at once and they publish again together, but the first
/// to arrive starts the next commit alone: commits alternate between a few
/// records and the rest, two syncs where one would do. So when the last two
/// commits were bigger than what is waiting now (`have`), wait for that
/// many, at most half a sync (the wait must cost less than the sync it
/// saves) and [`GROUP_WAIT_MAX`]. A lone publisher (commits of one) never
/// waits. Returns (how many to wait for, how long at most).
fn group_wait(recent: [usize; 2], last_sync: Duration, have: usize) -> (usize, Duration) {
    let expected = recent[0].max(recent[1]).min(MAX_BATCH);
    if expected <= 1 || have >= expected {
        return (have, Duration::ZERO);
    }
    (expected, (last_sync / 2).min(GROUP_WAIT_MAX))
}

/// A commit's timestamp: the wall clock, but never before the last commit's,
/// so records stay in `ts_ms` order (what `bus tail --since` relies on to
/// pass over old files) when the host's clock is set back.
fn next_stamp(now_ms: u64, last_ms: u64) -> u64 {
    now_ms.max(last_ms)
}

/// Shift `live`'s generations up by one (dropping the one beyond `keep`)
/// and rename `live` to `live.1`.
pub(super) fn rotate(live: &Path, keep: u32) -> io::Result<()> {
    for n in (1..keep).rev() {
        let from = rotated_path(live, n);
        if from.exists() {
            std::fs::rename(&from, rotated_path(live, n + 1))?;
        }
    }
    std::fs::rename(live, rotated_path(live, 1))
}

/// A checkpoint touching more files than this syncs them with one `syncfs`
/// instead of one `fdatasync` per file.
const FDATASYNC_MAX_FILES: usize = 2;

/// Make every file's appended data durable:
/// - one or two files: `fdatasync` each, which flushes only these files;
/// - more, all regular files on one filesystem (the log directory's, unless
///   someone links a log elsewhere): one `syncfs`, which writes back every
///   dirty page there and flushes the disk once. Measured on this machine's
///   ext4: 65 files 0.7 ms against 6.6 ms one after another (3.5 ms on 8
///   threads), 2 files 0.20 against 0.37 ms. It also writes back other
///   programs' dirty data on that filesystem, which is why small sets keep
///   per-file `fdatasync`. Since Linux 5.8 `syncfs` reports writeback errors
///   of any file on the filesystem, so an error is never missed (another
///   file's error may fail a checkpoint: a needless replay, never a loss).
fn sync_all_data(files: &[&OpenLog]) -> io::Result<()> {
    faults::before_checkpoint_sync()?;
    let fs: Vec<Option<u64>> = files.iter().map(|f| f.fs).collect();
    match (sync_plan(&fs), files.first()) {
        (SyncPlan::OneSyncfs, Some(first)) => {
            nix::unistd::syncfs(&first.file).map_err(io::Error::from)
        }
        _ => files.iter().try_for_each(|f| f.file.sync_data()),
    }
}

/// How a set of files is made durable.
#[derive(Debug, PartialEq, Eq)]
enum SyncPlan {
    FdatasyncEach,
    OneSyncfs,
}

/// `fs`: the filesystem of each file (`None`: not a regular file).
fn sync_plan(fs: &[Option<u64>]) -> SyncPlan {
    match fs.first() {
        Some(Some(first))
            if fs.len() > FDATASYNC_MAX_FILES && fs.iter().all(|f| *f == Some(*first)) =>
        {
            SyncPlan::OneSyncfs
        }
        _ => SyncPlan::FdatasyncEach,
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
#[path = "writer_faults_tests.rs"]
mod faults_tests;

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
