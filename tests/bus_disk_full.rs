//! The bus on a full disk, against the real `castra broker`: the state root
//! is a size-limited tmpfs the test mounts (root only; a test that cannot
//! mount fails, it never skips). A publisher runs while the disk fills,
//! first with its own log, then with a filler file that takes every byte:
//! publishes are refused with `storage_error` (and `castra bus publish`
//! exits non-zero naming the full file system), nothing refused is in the
//! log, the broker keeps answering heartbeats and `status`, the other guest
//! stays reachable, and once the space is freed publishing resumes by itself
//! with every acknowledged publish in the log exactly once.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use castra::broker::buslog::read_records;
use castra::broker::{reachable, read_snapshot};
use common::broker::{Broker, Guest, cli, encode};
use common::{free_port, wait_until};
use serde_json::{Value, json};

/// A tmpfs of `size` mounted on a fresh directory under /tmp; unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = tempfile::Builder::new()
            .prefix("cf")
            .tempdir_in("/tmp")
            .unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs as its state root and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Write `path` until the file system refuses (or `max` bytes).
fn fill(path: &Path, max: usize) -> usize {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut written = 0;
    while written < max {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n,
        }
    }
    let _ = f.sync_all();
    written
}

type Acks = Arc<Mutex<BTreeMap<String, Result<u64, String>>>>;

/// Publishes `n<i>` ids (8 in flight) until `stop`; every ack recorded.
fn publisher(port: u16, acks: Acks, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut g = Guest::open(port, "web");
        let mut w = g.writer.try_clone().unwrap();
        let pad = "p".repeat(900);
        let (mut i, mut inflight) = (0u64, 0);
        loop {
            while inflight < 8 && !stop.load(Ordering::Relaxed) {
                let id = format!("n{i}");
                let f = json!({"type": "publish", "topic": "fill", "payload": pad, "id": id});
                w.write_all(&encode(&f)).unwrap();
                i += 1;
                inflight += 1;
            }
            if inflight == 0 {
                return;
            }
            let f = g.frame();
            if f["ack"] == "publish" {
                inflight -= 1;
                let id = f["id"].as_str().unwrap().to_owned();
                let r = match f["status"].as_str() {
                    Some("ok") => Ok(f["seq"].as_u64().unwrap()),
                    _ => Err(f["reason"].as_str().unwrap_or("?").to_owned()),
                };
                acks.lock().unwrap().insert(id, r);
            }
        }
    })
}

fn count(acks: &Acks, ok: bool) -> usize {
    acks.lock()
        .unwrap()
        .values()
        .filter(|r| r.is_ok() == ok)
        .count()
}

/// Another guest's heartbeat is acknowledged within 5 s.
fn heartbeat(g: &mut Guest) {
    g.send(&json!({"type": "heartbeat"}));
    assert_eq!(
        g.frame(),
        json!({"type": "ack", "ack": "heartbeat", "status": "ok"})
    );
}

fn snapshot(root: &Path) -> Value {
    let snap = read_snapshot(&root.join("broker/state.json"))
        .unwrap()
        .unwrap();
    serde_json::to_value(snap).unwrap()
}

#[test]
fn a_full_disk_refuses_publishes_clearly_keeps_serving_and_resumes_by_itself() {
    let fs = SmallFs::mount("6m");
    let root: PathBuf = fs.path().to_path_buf();
    for vm in ["web", "db"] {
        std::fs::create_dir_all(root.join("vms").join(vm)).unwrap();
        std::fs::write(
            root.join("vms").join(vm).join("token"),
            format!("tok-{vm}\n"),
        )
        .unwrap();
    }
    std::fs::create_dir_all(root.join("broker")).unwrap();
    std::fs::write(
        root.join("castra.toml"),
        format!("[project]\nstate_dir = \"{}\"\n", root.display()),
    )
    .unwrap();
    let port = free_port();
    let mut broker = Broker::start(&root, port, &[]);
    let mut db = Guest::open(port, "db");
    heartbeat(&mut db);

    // Phase 1: a filler takes 2 MiB while the publisher runs; the log
    // itself fills the rest until the writer refuses (its reserve is left).
    let acks: Acks = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publisher(port, acks.clone(), stop.clone());
    let filler = root.join("filler-1");
    fill(&filler, 2 << 20);
    until("publishes refused on the full disk", 120, || {
        count(&acks, false) > 0
    });
    let full_at = castra::broker::stamp::unix_ms();
    let refused: Vec<String> = acks
        .lock()
        .unwrap()
        .values()
        .filter_map(|r| r.clone().err())
        .collect();
    assert!(refused.iter().all(|r| r == "storage_error"), "{refused:?}");
    // The broker still serves: heartbeats, the host socket's status, and
    // state.json (the reserve leaves room for it): db stays reachable.
    heartbeat(&mut db);
    until("state.json written while full", 10, || {
        read_snapshot(&root.join("broker/state.json"))
            .ok()
            .flatten()
            .is_some_and(|s| {
                s.written_ms > full_at
                    && s.vms.get("db").is_some_and(|e| reachable(e, s.written_ms))
            })
    });
    // `castra bus publish` fails and says why.
    let out = cli(&root, &["bus", "publish", "--topic", "t", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "publish on a full disk succeeded");
    println!("disk full: castra bus publish said: {}", stderr.trim());
    assert!(
        stderr.contains("storage_error") && stderr.contains("full"),
        "the error must name the full disk: {stderr}"
    );

    // Phase 2: every last byte taken: still no crash, heartbeats answered.
    let filler2 = root.join("filler-2");
    fill(&filler2, usize::MAX);
    heartbeat(&mut db);
    let before = count(&acks, false);
    until("more refusals", 30, || count(&acks, false) > before);
    heartbeat(&mut db);

    // Space is freed: publishing resumes by itself (same session, no restart).
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&filler2).unwrap();
    let ok_before = count(&acks, true);
    let freed = std::time::Instant::now();
    until("publishing resumed", 30, || {
        count(&acks, true) > ok_before + 20
    });
    println!(
        "disk full: publishing resumed {:.0?} after the space was freed",
        freed.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    publishing.join().unwrap();
    heartbeat(&mut db);
    let snap = snapshot(&root);
    assert!(snap["vms"]["db"]["sessions"].as_u64() == Some(1), "{snap}");

    // A crash now: every acknowledged publish is in all.log exactly once,
    // no refused one is there.
    broker.kill9();
    broker.restart();
    let mut logged: BTreeMap<String, usize> = BTreeMap::new();
    for r in read_records(&root.join("logs/bus/all.log")).unwrap() {
        if let Some(id) = r.id.as_ref().and_then(Value::as_str) {
            *logged.entry(id.to_owned()).or_default() += 1;
        }
    }
    let acks = acks.lock().unwrap();
    let (mut lost, mut refused_logged) = (0, 0);
    for (id, r) in acks.iter() {
        match (r, logged.get(id).copied().unwrap_or(0)) {
            (Ok(_), 1) | (Err(_), 0) => {}
            (Ok(_), _) => lost += 1,
            (Err(_), _) => refused_logged += 1,
        }
    }
    println!(
        "disk full: {} acknowledged, {} refused, {lost} lost, {refused_logged} refused but logged",
        count_ok(&acks),
        acks.len() - count_ok(&acks)
    );
    assert_eq!((lost, refused_logged), (0, 0));
    // events.jsonl has no torn line (an append that hit the full disk is cut back).
    let events = std::fs::read_to_string(root.join("broker/events.jsonl")).unwrap();
    for line in events.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "torn events.jsonl line: {line:?}"
        );
    }
}

/// Wait (at most `secs`) until `probe` holds.
fn until(what: &str, secs: u64, mut probe: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(secs), || {
        probe().then_some(()).ok_or("not yet")
    });
}

fn count_ok(acks: &BTreeMap<String, Result<u64, String>>) -> usize {
    acks.values().filter(|r| r.is_ok()).count()
}
