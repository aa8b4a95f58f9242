//! Startup recovery of the bus log directory, before the writer starts.
//!
//! 1. Each publisher's live `<vm>.log` is cut back to the length the
//!    checkpoint says is durable ([`checkpoint::fix_for`]): anything after it
//!    was written but not yet synced when the broker or the machine stopped.
//! 2. all.log loses the zeros written ahead of its records (`prealloc.rs`);
//!    every live file (all.log included) loses a torn last line (a crash
//!    mid-append); a bad line in the middle is reported and kept.
//! 3. The records all.log holds after the checkpoint's `through_seq` are
//!    appended again to their publishers' logs, byte for byte, and synced.
//!    Without a checkpoint (a new directory, or logs from a castra that
//!    synced every file per commit) each publisher's log gets the records
//!    after its own highest seq.
//! 4. A new checkpoint records the repaired state; sequence numbers continue
//!    after the highest one found (a live file with no record, e.g. just
//!    rotated, falls back to its `.1`).
//!
//! It does not route or deliver anything; it only makes the files agree.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::checkpoint::{self, Checkpoint, Fix};
use super::record::{LogRecord, rotated_path};
use crate::layout::{BUS_ALL_LOG, BUS_LOG_SUFFIX};

/// What [`recover`] found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The next sequence number to assign.
    pub next_seq: u64,
    /// Files whose torn tail was cut, with the bytes removed.
    pub cut: Vec<(PathBuf, u64)>,
    /// Bad lines in the middle of a file (path, 1-based line), kept as they are.
    pub corrupt: Vec<(PathBuf, u64)>,
    /// Per-VM logs cut back to their checkpoint, with the bytes removed.
    pub rewound: Vec<(PathBuf, u64)>,
    /// Records appended again from all.log, per publisher.
    pub replayed: BTreeMap<String, usize>,
    /// Per-VM logs shorter than their checkpoint (path, durable length,
    /// length found): durable bytes were lost. Kept as they are.
    pub short: Vec<(PathBuf, u64, u64)>,
    /// The repaired state the writer starts from.
    pub checkpoint: Checkpoint,
}

/// Repair the bus directory (see the module header) and write a checkpoint.
pub fn recover(dir: &Path) -> io::Result<Recovery> {
    let mut out = Recovery {
        next_seq: 1,
        ..Recovery::default()
    };
    if !dir.is_dir() {
        return Ok(out);
    }
    let previous = checkpoint::read(dir)?;
    let publishers = publishers(dir)?;
    let all = dir.join(BUS_ALL_LOG);

    // 1. Cut each publisher's log back to its durable length.
    if let Some(cp) = &previous {
        let named: BTreeSet<&String> = publishers.iter().chain(cp.files.keys()).collect();
        for vm in named {
            let live = vm_log(dir, vm);
            let rotated = file_len(&rotated_path(&live, 1))?;
            let len = file_len(&live)?.unwrap_or(0);
            match checkpoint::fix_for(cp.files.get(vm).copied(), len, rotated) {
                Fix::Keep => {}
                Fix::CutTo(to) => {
                    if len > to {
                        cut_to(&live, to)?;
                        out.rewound.push((live, len - to));
                    }
                }
                Fix::Short { durable } => out.short.push((live, durable, len)),
            }
        }
    }

    // 2. Zeros the writer wrote ahead in all.log, torn tails, corruption,
    // highest seqs.
    if all.is_file() {
        let file = OpenOptions::new().read(true).write(true).open(&all)?;
        super::prealloc::trim_zero_tail(&file)?;
    }
    let mut vm_max: BTreeMap<String, u64> = BTreeMap::new();
    let lives = std::iter::once((String::new(), all.clone()))
        .chain(publishers.iter().map(|vm| (vm.clone(), vm_log(dir, vm))));
    for (vm, live) in lives {
        let mut max_seq = 0;
        for path in [live.clone(), rotated_path(&live, 1)] {
            if max_seq > 0 || !path.is_file() {
                continue;
            }
            let scan = scan_file(&path)?;
            if scan.good_len < scan.len {
                cut_to(&path, scan.good_len)?;
                out.cut.push((path.clone(), scan.len - scan.good_len));
            }
            out.corrupt
                .extend(scan.corrupt_lines.into_iter().map(|l| (path.clone(), l)));
            max_seq = scan.max_seq;
        }
        out.next_seq = out.next_seq.max(max_seq + 1);
        vm_max.insert(vm, max_seq);
    }

    // 3. Replay all.log's records the per-VM logs lack.
    let after = |vm: &str| match &previous {
        Some(cp) => cp.through_seq,
        None => vm_max.get(vm).copied().unwrap_or(0),
    };
    // After a clean stop the checkpoint covers all.log: no need to read it again.
    let all_max = vm_max.get("").copied().unwrap_or(0);
    let covered = previous
        .as_ref()
        .is_some_and(|cp| cp.through_seq >= all_max);
    let mut appends: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if !covered {
        for_each_line(&all, |line, rec| {
            if rec.seq > after(&rec.vm) {
                let buf = appends.entry(rec.vm.clone()).or_default();
                buf.extend_from_slice(line);
                *out.replayed.entry(rec.vm.clone()).or_default() += 1;
            }
        })?;
    }
    for (vm, buf) in &appends {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(vm_log(dir, vm))?;
        file.write_all(buf)?;
        file.sync_data()?;
    }

    // 4. The repaired state, durable before the writer appends to it.
    let mut files = BTreeMap::new();
    for vm in publishers.iter().chain(appends.keys()) {
        files.insert(vm.clone(), file_len(&vm_log(dir, vm))?.unwrap_or(0));
    }
    out.checkpoint = Checkpoint {
        through_seq: out.next_seq - 1,
        files,
    };
    if !appends.is_empty() || previous.as_ref() != Some(&out.checkpoint) {
        checkpoint::write(dir, &out.checkpoint)?;
    }
    Ok(out)
}

fn vm_log(dir: &Path, vm: &str) -> PathBuf {
    dir.join(format!("{vm}{BUS_LOG_SUFFIX}"))
}

/// Publishers with a live log, or whose only trace is a `.1` (a crash
/// between a rotation's rename and the next create).
fn publishers(dir: &Path) -> io::Result<BTreeSet<String>> {
    let rotated_suffix = format!("{BUS_LOG_SUFFIX}.1");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let vm = name
            .strip_suffix(BUS_LOG_SUFFIX)
            .or_else(|| name.strip_suffix(&rotated_suffix));
        if let Some(vm) = vm
            && Some(vm) != BUS_ALL_LOG.strip_suffix(BUS_LOG_SUFFIX)
        {
            out.insert(vm.to_owned());
        }
    }
    Ok(out)
}

fn file_len(path: &Path) -> io::Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn cut_to(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Every whole valid line of `path` (with its newline) and its record.
fn for_each_line(path: &Path, mut f: impl FnMut(&[u8], &LogRecord)) -> io::Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        if buf.last() == Some(&b'\n')
            && let Ok(rec) = serde_json::from_slice::<LogRecord>(&buf)
        {
            f(&buf, &rec);
        }
    }
}

struct Scan {
    len: u64,
    /// Length up to and including the last valid line.
    good_len: u64,
    max_seq: u64,
    corrupt_lines: Vec<u64>,
}

fn scan_file(path: &Path) -> io::Result<Scan> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut reader = BufReader::new(file);
    let mut offset = 0u64;
    let mut good_len = 0u64;
    let mut max_seq = 0u64;
    let mut bad_since_good = Vec::new();
    let mut corrupt_lines = Vec::new();
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)? as u64;
        if n == 0 {
            break;
        }
        line_no += 1;
        offset += n;
        let complete = buf.last() == Some(&b'\n');
        match serde_json::from_slice::<LogRecord>(&buf) {
            Ok(rec) if complete => {
                max_seq = max_seq.max(rec.seq);
                good_len = offset;
                // Bad lines followed by a good one are corruption, not a torn tail.
                corrupt_lines.append(&mut bad_since_good);
            }
            Ok(_) | Err(_) => bad_since_good.push(line_no),
        }
    }
    Ok(Scan {
        len,
        good_len,
        max_seq,
        corrupt_lines,
    })
}
