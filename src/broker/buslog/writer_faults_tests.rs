//! The writer under injected I/O errors (`faults.rs`): EIO and ENOSPC at a
//! write (after part of the buffer reached the file) and at the sync, a
//! failed checkpoint, and a full file system. Real files in a temp state
//! root; commits are driven one by one on this thread (where the plan is
//! armed), then the writer is dropped without a checkpoint (a crash) and
//! recovery runs. The promises: nothing is acknowledged that is not durable,
//! a refused batch leaves no bytes behind, the next commit succeeds by
//! itself, and every acknowledged record survives the crash exactly once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::super::faults::plan::{self, Fault, Op};
use super::super::faults::{SPACE_RESERVE, free_bytes};
use super::super::record::{Append, Committed, Rotation, read_records};
use super::super::recover::recover;
use super::Writer;
use crate::broker::wire::reason::Reason;
use crate::layout::StateLayout;

const EIO: i32 = nix::libc::EIO;
const ENOSPC: i32 = nix::libc::ENOSPC;

struct Rig {
    _dir: tempfile::TempDir,
    layout: StateLayout,
    writer: Writer,
    /// id -> what its `done` got.
    acks: Arc<Mutex<BTreeMap<String, Result<u64, Reason>>>>,
    delivered: Arc<Mutex<Vec<u64>>>,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let layout = StateLayout::new(dir.path());
        std::fs::create_dir_all(layout.bus_log_dir()).unwrap();
        let r = recover(&layout.bus_log_dir()).unwrap();
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let d = delivered.clone();
        let deliver = Box::new(move |batch: Vec<Committed>| {
            d.lock().unwrap().extend(batch.into_iter().map(|c| c.seq))
        });
        let writer = Writer::new(
            &layout,
            Rotation::default(),
            deliver,
            r.next_seq,
            r.checkpoint,
        );
        Rig {
            _dir: dir,
            layout,
            writer,
            acks: Arc::default(),
            delivered,
        }
    }

    /// One commit of publishes from `vm` (`None`: the host) with these ids.
    fn commit(&mut self, vm: Option<&str>, ids: &[&str]) -> Vec<Result<u64, Reason>> {
        let batch = ids
            .iter()
            .map(|id| {
                let (acks, key) = (self.acks.clone(), id.to_string());
                Append {
                    vm: vm.map(str::to_owned),
                    topic: "jobs".into(),
                    payload: json!({ "id": id, "pad": "x".repeat(40) }),
                    id: Some(json!(id)),
                    done: Box::new(move |r| {
                        acks.lock().unwrap().insert(key, r);
                    }),
                }
            })
            .collect();
        self.writer.commit(batch);
        let acks = self.acks.lock().unwrap();
        ids.iter().map(|id| acks[*id]).collect()
    }

    fn ids_in(&self, vm: Option<&str>) -> Vec<String> {
        let path = match vm {
            None => self.layout.bus_all_log(),
            Some(vm) => self.layout.bus_vm_log(vm),
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends in a partial line: {text:?}",
            path.display()
        );
        read_records(&path)
            .unwrap()
            .into_iter()
            .map(|r| r.id.unwrap().as_str().unwrap().to_owned())
            .collect()
    }

    fn acked(&self) -> Vec<String> {
        let acks = self.acks.lock().unwrap();
        acks.iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Drop the writer as a crash would (no checkpoint), recover, and check
    /// every acknowledged id is in all.log and web.log exactly once and no
    /// refused id is anywhere.
    fn crash_and_check(self) {
        let Rig {
            _dir,
            layout,
            writer,
            acks,
            ..
        } = self;
        drop(writer);
        recover(&layout.bus_log_dir()).unwrap();
        let rig_ids = |path: std::path::PathBuf| -> Vec<String> {
            read_records(&path)
                .unwrap()
                .into_iter()
                .map(|r| r.id.unwrap().as_str().unwrap().to_owned())
                .collect()
        };
        let all = rig_ids(layout.bus_all_log());
        let web = rig_ids(layout.bus_vm_log("web"));
        for (id, r) in acks.lock().unwrap().iter() {
            let in_all = all.iter().filter(|i| *i == id).count();
            let in_web = web.iter().filter(|i| *i == id).count();
            match r {
                Ok(_) => assert_eq!((in_all, in_web), (1, 1), "acknowledged {id}"),
                Err(_) => assert_eq!((in_all, in_web), (0, 0), "refused {id}"),
            }
        }
    }
}

#[test]
fn eio_at_a_write_refuses_the_batch_leaves_no_bytes_and_the_next_commit_succeeds() {
    let mut rig = Rig::new();
    assert_eq!(rig.commit(Some("web"), &["a", "b"]), [Ok(1), Ok(2)]);
    // all.log's write fails after 30 bytes reached the file.
    plan::arm(Fault {
        op: Op::Write,
        errno: EIO,
        written: 30,
        after: 0,
    });
    let refused = Err(Reason::StorageError);
    assert_eq!(rig.commit(Some("web"), &["c", "d"]), [refused, refused]);
    assert_eq!(rig.ids_in(None), ["a", "b"]);
    // The second file of a commit (web.log) fails: all.log is cut back too.
    plan::arm(Fault {
        op: Op::Write,
        errno: ENOSPC,
        written: 7,
        after: 1,
    });
    assert_eq!(rig.commit(Some("web"), &["e"]), [refused]);
    assert_eq!(plan::pending(), 0);
    assert_eq!(rig.ids_in(None), ["a", "b"]);
    assert_eq!(rig.ids_in(Some("web")), ["a", "b"]);
    // Refused publishes were never delivered; sequence numbers have no gap.
    assert_eq!(rig.commit(Some("web"), &["f"]), [Ok(3)]);
    assert_eq!(*rig.delivered.lock().unwrap(), [1, 2, 3]);
    assert_eq!(rig.acked(), ["a", "b", "f"]);
    rig.crash_and_check();
}

#[test]
fn eio_at_the_sync_refuses_the_batch_and_cuts_it_back() {
    let mut rig = Rig::new();
    assert_eq!(rig.commit(Some("web"), &["a"]), [Ok(1)]);
    for errno in [EIO, ENOSPC] {
        plan::arm(Fault {
            op: Op::Sync,
            errno,
            written: 0,
            after: 0,
        });
        let (x, y) = (format!("x{errno}"), format!("y{errno}"));
        let got = rig.commit(Some("web"), &[&x, &y]);
        assert_eq!(got, [Err(Reason::StorageError); 2]);
        // The bytes were written before the sync failed: they are gone again.
        assert_eq!(rig.ids_in(None), ["a"]);
        assert_eq!(rig.ids_in(Some("web")), ["a"]);
    }
    assert_eq!(rig.commit(Some("web"), &["b"]), [Ok(2)]);
    rig.crash_and_check();
}

#[test]
fn a_failed_checkpoint_sync_is_repaired_from_all_log_after_a_crash() {
    let mut rig = Rig::new();
    assert_eq!(rig.commit(Some("web"), &["a", "b"]), [Ok(1), Ok(2)]);
    plan::arm(Fault {
        op: Op::Sync,
        errno: EIO,
        written: 0,
        after: 0,
    });
    assert!(
        !rig.writer.checkpoint(),
        "the checkpoint must report failure"
    );
    assert_eq!(rig.commit(Some("web"), &["c"]), [Ok(3)]);
    // web.log's checkpoint never moved past the failure: recovery cuts it
    // back to the last good checkpoint and refills it from all.log.
    rig.crash_and_check();
}

#[test]
fn a_full_file_system_refuses_before_writing_and_resumes_once_space_is_freed() {
    let mut rig = Rig::new();
    assert_eq!(rig.commit(Some("web"), &["a"]), [Ok(1)]);
    let before = std::fs::metadata(rig.layout.bus_all_log()).unwrap().len();
    // Less than the reserve plus the batch is left.
    plan::set_free(Some(SPACE_RESERVE + 10));
    assert_eq!(
        rig.commit(Some("web"), &["b", "c"]),
        [Err(Reason::StorageError); 2]
    );
    assert!(rig.writer.full);
    let after = std::fs::metadata(rig.layout.bus_all_log()).unwrap().len();
    assert_eq!(before, after, "a refused commit wrote nothing");
    // Space is freed: the next commit goes through without a restart.
    plan::set_free(None);
    assert!(free_bytes(&rig.layout.bus_log_dir()).unwrap() > 0);
    assert_eq!(rig.commit(Some("web"), &["d"]), [Ok(2)]);
    assert!(!rig.writer.full);
    rig.crash_and_check();
}
