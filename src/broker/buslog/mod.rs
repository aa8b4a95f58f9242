//! The durable bus log (protocol v1, step 10): every publish, from a guest
//! or the host, is appended as one JSON object a line to
//! `<state_root>/logs/bus/all.log` and to its publisher's `<vm>.log`
//! (`host.log` for the host), and acknowledged only once it is durable.
//!
//! - `writer.rs`: the one thread that owns the files: group commit, fsync of
//!   all.log (the write-ahead log) before the ack, the publishers' logs kept
//!   in step and synced at checkpoints, rotation by size ([`Rotation`]);
//! - `prealloc.rs`: zeros written and synced ahead of all.log's records, so
//!   a commit's sync writes data pages only;
//! - `checkpoint.rs`: `checkpoint.json`, how much of each publisher's log is
//!   durable, and what recovery does with each file;
//! - `recover.rs`: startup repair (torn tails cut, corruption reported, the
//!   publishers' logs cut back to the checkpoint and refilled from all.log,
//!   sequence numbers continued).
//!
//! - `record.rs`: the record format, file naming and reading;
//! - `follow.rs`: the crate's one reader that follows a log across rotation
//!   (`bus tail -f`, bootstrap reports), with `last.rs` (a rotated file's
//!   last record, to pass over files before a start).
//!
//! This file starts the log ([`start`]) and is its front.
//! Routing messages to subscribers is the hub's job; the log only hands each
//! committed record over.

mod checkpoint;
pub mod faults;
pub mod follow;
mod last;
mod prealloc;
mod record;
mod recover;
mod writer;

pub use record::{
    Append, Committed, DEFAULT_ROTATE_BYTES, DEFAULT_ROTATE_KEEP, Done, HOST, LogRecord, MAX_BATCH,
    QUEUE_CAPACITY, Rotation, generations, read_records, rotated_path,
};
pub use recover::{Recovery, recover};
pub use writer::CHECKPOINT_EVERY;

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::thread::JoinHandle;

use super::stamp::log;
use crate::layout::StateLayout;

/// Create the bus log directory (0700), recover it, and start the writer.
/// `deliver` receives the records of every commit, in sequence order.
pub fn start(
    layout: &StateLayout,
    rotation: Rotation,
    deliver: Box<dyn Fn(Vec<Committed>) + Send>,
) -> io::Result<(BusLog, smol::channel::Sender<Append>)> {
    let dir = layout.bus_log_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let recovery = recover(&dir)?;
    for (path, bytes) in &recovery.cut {
        log(&format!(
            "bus log {}: cut a torn last line ({bytes} bytes) left by a crash",
            path.display()
        ));
    }
    for (path, line) in &recovery.corrupt {
        log(&format!(
            "bus log {}: line {line} is not a valid record (kept; tail and tools skip it)",
            path.display()
        ));
    }
    for (path, bytes) in &recovery.rewound {
        log(&format!(
            "bus log {}: cut {bytes} bytes written after the last checkpoint (refilled from all.log)",
            path.display()
        ));
    }
    for (vm, n) in &recovery.replayed {
        log(&format!(
            "bus log {vm}.log: {n} records appended again from all.log"
        ));
    }
    for (path, durable, found) in &recovery.short {
        log(&format!(
            "bus log {}: {found} bytes, but the checkpoint says {durable} were durable: \
             records were lost on disk (kept as it is; all.log is complete)",
            path.display()
        ));
    }
    let (tx, rx) = smol::channel::bounded(QUEUE_CAPACITY);
    let mut writer = writer::Writer::new(
        layout,
        rotation,
        deliver,
        recovery.next_seq,
        recovery.checkpoint,
    );
    let handle = std::thread::Builder::new()
        .name("castra-buslog".into())
        .spawn(move || writer.run(rx))?;
    Ok((
        BusLog {
            handle: Some(handle),
            next_seq: recovery.next_seq,
        },
        tx,
    ))
}

/// The running writer thread.
pub struct BusLog {
    handle: Option<JoinHandle<()>>,
    /// The first sequence number this run assigns.
    pub next_seq: u64,
}

impl BusLog {
    /// Wait for the writer to finish (it does once every sender is dropped).
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::writer::rotate;
    use super::*;
    use crate::broker::wire::reason::Reason;
    use serde_json::json;
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::sync::mpsc;

    fn append(
        vm: Option<&str>,
        topic: &str,
        n: i64,
        tx: &mpsc::Sender<Result<u64, Reason>>,
    ) -> Append {
        let tx = tx.clone();
        Append {
            vm: vm.map(str::to_owned),
            topic: topic.into(),
            payload: json!({ "n": n }),
            id: Some(json!(n)),
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        }
    }

    #[test]
    fn appends_are_acked_after_both_files_and_seq_continues() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StateLayout::new(dir.path());
        let (dtx, drx) = mpsc::channel();
        let deliver = Box::new(move |batch: Vec<Committed>| {
            for c in batch {
                let _ = dtx.send((c.seq, c.topic));
            }
        });
        let (bus, tx) = start(&layout, Rotation::default(), deliver).unwrap();
        assert_eq!(bus.next_seq, 1);
        let (atx, arx) = mpsc::channel();
        for (i, vm) in [Some("web"), None, Some("web")].into_iter().enumerate() {
            tx.send_blocking(append(vm, "jobs", i as i64, &atx))
                .unwrap();
        }
        let acks: Vec<_> = (0..3).map(|_| arx.recv().unwrap()).collect();
        assert_eq!(acks, vec![Ok(1), Ok(2), Ok(3)]);
        assert_eq!(drx.recv().unwrap(), (1, "jobs".to_owned()));
        drop(tx);
        bus.join();
        let all = read_records(&layout.bus_all_log()).unwrap();
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let web = read_records(&layout.bus_vm_log("web")).unwrap();
        assert_eq!(web.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3]);
        let host = read_records(&layout.bus_vm_log(HOST)).unwrap();
        assert_eq!((host[0].seq, host[0].from().as_str()), (2, "host"));
        let line = std::fs::read_to_string(layout.bus_vm_log(HOST)).unwrap();
        let line = line.replace(&host[0].ts_ms.to_string(), "TS");
        insta::assert_snapshot!(line, @r#"{"seq":2,"vm":"host","topic":"jobs","ts_ms":TS,"payload":{"n":1},"id":1}"#);

        // A torn tail in all.log and a corrupt middle line in web.log.
        let mut f = OpenOptions::new()
            .append(true)
            .open(layout.bus_all_log())
            .unwrap();
        f.write_all(br#"{"seq":4,"vm":"web","to"#).unwrap();
        // (Bit rot in place: the length stays what the checkpoint says.)
        let web_text = std::fs::read_to_string(layout.bus_vm_log("web")).unwrap();
        let (first, second) = web_text.split_once('\n').unwrap();
        std::fs::write(
            layout.bus_vm_log("web"),
            format!("{}\n{second}", "x".repeat(first.len())),
        )
        .unwrap();
        let r = recover(&layout.bus_log_dir()).unwrap();
        assert_eq!(r.next_seq, 4);
        assert_eq!(r.cut, vec![(layout.bus_all_log(), 23)]);
        assert_eq!(r.corrupt, vec![(layout.bus_vm_log("web"), 1)]);
        assert_eq!((r.rewound.len(), r.replayed.len()), (0, 0));
        assert!(
            std::fs::read_to_string(layout.bus_all_log())
                .unwrap()
                .ends_with("}\n")
        );

        let (bus, tx) = start(&layout, Rotation::default(), Box::new(|_| {})).unwrap();
        assert_eq!(bus.next_seq, 4);
        tx.send_blocking(append(Some("db"), "x", 9, &atx)).unwrap();
        assert_eq!(arx.recv().unwrap(), Ok(4));
        drop(tx);
        bus.join();
    }

    #[test]
    fn all_log_is_written_over_zeros_ahead_and_ends_with_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StateLayout::new(dir.path());
        let all = layout.bus_all_log();
        let (bus, tx) = start(&layout, Rotation::default(), Box::new(|_| {})).unwrap();
        let (atx, arx) = mpsc::channel();
        for i in 0..3 {
            tx.send_blocking(append(Some("web"), "t", i, &atx)).unwrap();
            assert_eq!(arx.recv().unwrap(), Ok(i as u64 + 1));
        }
        // While it runs, zeros follow the records; readers see the records.
        let bytes = std::fs::read(&all).unwrap();
        let end = bytes.iter().rposition(|&b| b == b'\n').unwrap() + 1;
        assert!(
            bytes.len() >= end + 4096,
            "{} bytes, records end at {end}",
            bytes.len()
        );
        assert!(bytes[end..].iter().all(|&b| b == 0));
        assert_eq!(read_records(&all).unwrap().len(), 3);
        // A follower from the end starts where the records end.
        let mut follower = follow::Follower::at_end(all.clone()).unwrap();
        assert!(follower.poll().unwrap().is_empty());
        tx.send_blocking(append(None, "t", 3, &atx)).unwrap();
        assert_eq!(arx.recv().unwrap(), Ok(4));
        let seqs = |f: &mut follow::Follower| -> Vec<u64> {
            f.poll_records().unwrap().iter().map(|r| r.seq).collect()
        };
        assert_eq!(seqs(&mut follower), [4]);
        drop(tx);
        bus.join();
        // Stopped: the file ends with its last record.
        let stopped = std::fs::read(&all).unwrap();
        assert!(stopped.ends_with(b"}\n") && !stopped.contains(&0));

        // A killed writer leaves its zeros: startup trims them, no torn line.
        let mut f = OpenOptions::new().append(true).open(&all).unwrap();
        f.write_all(&[0; 10_000]).unwrap();
        let r = recover(&layout.bus_log_dir()).unwrap();
        assert_eq!((r.next_seq, r.cut.len()), (5, 0));
        assert_eq!(std::fs::read(&all).unwrap(), stopped);
    }

    #[test]
    fn a_complete_but_invalid_last_line_is_cut_and_an_empty_dir_starts_at_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recover(&dir.path().join("none")).unwrap().next_seq, 1);
        let path = dir.path().join("all.log");
        std::fs::write(
            &path,
            "{\"seq\":7,\"vm\":\"a\",\"topic\":\"t\",\"ts_ms\":1,\"payload\":null}\n\0\0\0\n",
        )
        .unwrap();
        let r = recover(dir.path()).unwrap();
        assert_eq!((r.next_seq, r.cut.len(), r.corrupt.len()), (8, 1, 0));
    }

    #[test]
    fn after_a_machine_crash_the_publishers_logs_are_refilled_from_all_log() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StateLayout::new(dir.path());
        let (bus, tx) = start(&layout, Rotation::default(), Box::new(|_| {})).unwrap();
        let (atx, arx) = mpsc::channel();
        for (i, vm) in ["web", "db", "web", "web", "db"].into_iter().enumerate() {
            tx.send_blocking(append(Some(vm), "t", i as i64, &atx))
                .unwrap();
            assert_eq!(arx.recv().unwrap(), Ok(i as u64 + 1));
        }
        tx.send_blocking(append(None, "t", 9, &atx)).unwrap();
        assert_eq!(arx.recv().unwrap(), Ok(6));
        drop(tx);
        bus.join();
        let bus_dir = layout.bus_log_dir();
        let want = |vm: &str| std::fs::read(layout.bus_vm_log(vm)).unwrap();
        let (web, db, host) = (want("web"), want("db"), want(HOST));
        // A clean stop left a checkpoint of everything.
        let cp = checkpoint::read(&bus_dir).unwrap().unwrap();
        assert_eq!(cp.through_seq, 6);
        assert_eq!(cp.files["web"], web.len() as u64);

        // The machine crashed after seq 1 was checkpointed: web.log kept a
        // hole and a stray page, db.log lost everything but its name,
        // host.log was never made durable.
        let first_web = web.iter().position(|&b| b == b'\n').unwrap() as u64 + 1;
        checkpoint::write(
            &bus_dir,
            &checkpoint::Checkpoint {
                through_seq: 1,
                files: [("web".to_owned(), first_web)].into(),
            },
        )
        .unwrap();
        let mut torn = web[..first_web as usize].to_vec();
        torn.extend_from_slice(&[0; 40]);
        torn.extend_from_slice(&web[web.len() - 30..]);
        std::fs::write(layout.bus_vm_log("web"), torn).unwrap();
        std::fs::write(layout.bus_vm_log("db"), "").unwrap();
        std::fs::remove_file(layout.bus_vm_log(HOST)).unwrap();

        let r = recover(&bus_dir).unwrap();
        assert_eq!(r.next_seq, 7);
        assert_eq!(r.rewound, vec![(layout.bus_vm_log("web"), 70)]);
        assert_eq!(
            r.replayed,
            [
                ("db".to_owned(), 2),
                (HOST.to_owned(), 1),
                ("web".to_owned(), 2)
            ]
            .into()
        );
        assert!(r.short.is_empty() && r.cut.is_empty() && r.corrupt.is_empty());
        // Byte for byte what the writer had written.
        assert_eq!((want("web"), want("db"), want(HOST)), (web, db, host));
        assert_eq!(r.checkpoint, checkpoint::read(&bus_dir).unwrap().unwrap());
        assert_eq!(r.checkpoint.through_seq, 6);
        // A second recovery finds nothing to do.
        let again = recover(&bus_dir).unwrap();
        assert_eq!((again.rewound.len(), again.replayed.len()), (0, 0));
    }

    #[test]
    fn an_idle_writer_checkpoints_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StateLayout::new(dir.path());
        let (bus, tx) = start(&layout, Rotation::default(), Box::new(|_| {})).unwrap();
        let (atx, arx) = mpsc::channel();
        tx.send_blocking(append(Some("web"), "t", 1, &atx)).unwrap();
        assert_eq!(arx.recv().unwrap(), Ok(1));
        // No more publishes: the writer wakes for the checkpoint by itself.
        let deadline = std::time::Instant::now() + CHECKPOINT_EVERY * 5;
        let through = || {
            checkpoint::read(&layout.bus_log_dir())
                .unwrap()
                .map(|c| c.through_seq)
        };
        while through() != Some(1) {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint: {:?}",
                through()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let cp = checkpoint::read(&layout.bus_log_dir()).unwrap().unwrap();
        let len = std::fs::metadata(layout.bus_vm_log("web")).unwrap().len();
        assert_eq!(cp.files["web"], len);
        drop(tx);
        bus.join();
    }

    #[test]
    fn logs_without_a_checkpoint_are_completed_from_all_log() {
        // Written by a castra that synced every file per commit, or a
        // checkpoint removed by hand: each log gets what it lacks.
        let dir = tempfile::tempdir().unwrap();
        let line = |seq: u64, vm: &str| {
            format!(
                "{{\"seq\":{seq},\"vm\":\"{vm}\",\"topic\":\"t\",\"ts_ms\":1,\"payload\":null}}\n"
            )
        };
        let all: String = [(1, "a"), (2, "b"), (3, "a"), (4, "a")]
            .iter()
            .map(|(s, v)| line(*s, v))
            .collect();
        std::fs::write(dir.path().join("all.log"), &all).unwrap();
        std::fs::write(dir.path().join("a.log"), line(1, "a") + &line(3, "a")).unwrap();
        std::fs::write(dir.path().join("b.log"), line(2, "b")).unwrap();
        let r = recover(dir.path()).unwrap();
        assert_eq!(r.next_seq, 5);
        assert_eq!(r.replayed, [("a".to_owned(), 1)].into());
        let a: Vec<u64> = read_records(&dir.path().join("a.log"))
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(a, [1, 3, 4]);
        assert!(dir.path().join(checkpoint::FILE).exists());
    }

    #[test]
    fn a_failing_disk_is_never_acked() {
        // /dev/full accepts opens and fails every write with ENOSPC.
        let dir = tempfile::tempdir().unwrap();
        let layout = StateLayout::new(dir.path());
        let (bus, tx) = start(
            &layout,
            Rotation::default(),
            Box::new(|_| panic!("nothing is delivered")),
        )
        .unwrap();
        // The writer opens its files on the first commit.
        std::os::unix::fs::symlink("/dev/full", layout.bus_all_log()).unwrap();
        let (atx, arx) = mpsc::channel();
        tx.send_blocking(append(Some("web"), "t", 1, &atx)).unwrap();
        assert_eq!(arx.recv().unwrap(), Err(Reason::StorageError));
        drop(tx);
        bus.join();
        assert!(read_records(&layout.bus_vm_log("web")).unwrap().is_empty());
    }

    #[test]
    fn files_rotate_by_size_keep_n_and_recovery_reads_the_newest_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StateLayout::new(dir.path());
        let rotation = Rotation {
            max_bytes: 300,
            keep: 2,
        };
        let (bus, tx) = start(&layout, rotation, Box::new(|_| {})).unwrap();
        let (atx, arx) = mpsc::channel();
        // One at a time, so each commit is one record (~75 bytes a line).
        for i in 0..20 {
            tx.send_blocking(append(Some("web"), "t", i, &atx)).unwrap();
            assert_eq!(arx.recv().unwrap(), Ok(i as u64 + 1));
        }
        drop(tx);
        bus.join();
        let all = layout.bus_all_log();
        let gens = generations(&all);
        assert_eq!(
            gens,
            vec![rotated_path(&all, 2), rotated_path(&all, 1), all.clone()]
        );
        assert!(!rotated_path(&all, 3).exists());
        let mut seqs = Vec::new();
        for g in &gens {
            let len = std::fs::metadata(g).map(|m| m.len()).unwrap_or(0);
            if g != &all {
                // Rotated once full, between commits: whole lines only.
                assert!((300..380).contains(&len), "{} is {len} bytes", g.display());
                assert!(std::fs::read_to_string(g).unwrap().ends_with("}\n"));
            }
            seqs.extend(read_records(g).unwrap().into_iter().map(|r| r.seq));
        }
        // The kept generations hold a contiguous run ending at the last seq.
        assert_eq!(*seqs.last().unwrap(), 20);
        assert_eq!(seqs, (seqs[0]..=20).collect::<Vec<_>>());

        // The live files are empty (or gone) right after a rotation: the
        // sequence still continues from the newest rotated file.
        for live in [all.clone(), layout.bus_vm_log("web")] {
            if live.exists() {
                rotate(&live, 2).unwrap();
            }
            std::fs::write(&live, "").unwrap();
        }
        assert_eq!(recover(&layout.bus_log_dir()).unwrap().next_seq, 21);
        std::fs::remove_file(&all).unwrap();
        std::fs::remove_file(layout.bus_vm_log("web")).unwrap();
        assert_eq!(recover(&layout.bus_log_dir()).unwrap().next_seq, 21);
        let (bus, tx) = start(&layout, rotation, Box::new(|_| {})).unwrap();
        tx.send_blocking(append(None, "t", 0, &atx)).unwrap();
        assert_eq!(arx.recv().unwrap(), Ok(21));
        drop(tx);
        bus.join();
    }
}
