//! Crash consistency of the bus against the real `castra broker` binary:
//! concurrent publishers, `kill -9` mid-stream and a restart, three rounds;
//! no acknowledged publish may be missing from all.log or its VM's log, and
//! sequence numbers continue. Counts are printed (`--nocapture`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use castra::broker::buslog::read_records;
use common::broker::{Broker, Guest, encode, state_root as project};
use common::free_port;
use serde_json::json;

/// Concurrent publishers with unique ids; kill -9 the broker mid-stream;
/// restart; every acknowledged id must be in the log (Jepsen's lost set).
#[test]
fn crash_consistency_no_acknowledged_publish_is_lost() {
    let vms: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    let root = project(&vms.iter().map(String::as_str).collect::<Vec<_>>());
    let port = free_port();
    let mut broker = Broker::start(root.path(), port, &[]);
    let mut acked_total = 0;
    let mut last_max_seq = 0;
    for round in 0..3 {
        let acked = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
        // The kill comes once every publisher holds its session (on a busy
        // machine the handshakes alone can outlast the delay).
        let sessions = Arc::new(std::sync::Barrier::new(vms.len() + 1));
        let threads: Vec<_> = vms
            .iter()
            .map(|vm| {
                let (vm, acked, sessions) = (vm.clone(), acked.clone(), sessions.clone());
                thread::spawn(move || {
                    let mut g = Guest::open(port, &vm);
                    sessions.wait();
                    let mut w = g.writer.try_clone().unwrap();
                    let mut i = 0u64;
                    let mut inflight = 0;
                    loop {
                        while inflight < 8 {
                            let id = format!("r{round}-{vm}-{i}");
                            let frame = encode(&json!({"type": "publish", "topic": "crash", "payload": i, "id": id}));
                            if w.write_all(&frame).is_err() {
                                return;
                            }
                            i += 1;
                            inflight += 1;
                        }
                        match g.try_frame() {
                            Ok(f) if f["ack"] == "publish" && f["status"] == "ok" => {
                                inflight -= 1;
                                acked.lock().unwrap().insert(
                                    f["id"].as_str().unwrap().to_owned(),
                                    f["seq"].as_u64().unwrap(),
                                );
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        sessions.wait();
        thread::sleep(Duration::from_millis(150 + 97 * round));
        broker.kill9();
        for t in threads {
            t.join().unwrap();
        }
        broker.restart();
        let logged: BTreeMap<String, u64> = read_records(&root.path().join("logs/bus/all.log"))
            .unwrap()
            .into_iter()
            .map(|r| (r.id.unwrap().as_str().unwrap().to_owned(), r.seq))
            .collect();
        let acked = acked.lock().unwrap();
        let lost: Vec<&String> = acked
            .keys()
            .filter(|id| !logged.contains_key(*id))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: lost {} acknowledged publishes: {lost:?}",
            lost.len()
        );
        // Each publisher's own log holds its acknowledged publishes too
        // (refilled from all.log at the restart when they were not synced).
        let per_vm: BTreeMap<&String, BTreeSet<u64>> = vms
            .iter()
            .map(|vm| {
                let path = root.path().join(format!("logs/bus/{vm}.log"));
                (
                    vm,
                    read_records(&path).unwrap().iter().map(|r| r.seq).collect(),
                )
            })
            .collect();
        for (id, seq) in acked.iter() {
            assert_eq!(logged[id], *seq, "{id}");
            let vm = id.split('-').nth(1).unwrap().to_owned();
            assert!(per_vm[&vm].contains(seq), "{id} missing from {vm}.log");
        }
        // Sequence numbers are unique and continue after a restart.
        let seqs: Vec<u64> = read_records(&root.path().join("logs/bus/all.log"))
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        let this_round = format!("r{round}-");
        assert!(
            logged
                .iter()
                .filter(|(id, _)| id.starts_with(&this_round))
                .all(|(_, seq)| *seq > last_max_seq),
            "round {round} reused a sequence number"
        );
        acked_total += acked.len();
        println!(
            "crash round {round}: {} acknowledged, {} logged (logged but unacknowledged is allowed), 0 lost",
            acked.len(),
            logged
                .keys()
                .filter(|id| id.starts_with(&this_round))
                .count()
        );
        let mut g = Guest::open(port, "p0");
        g.send(&json!({"type": "publish", "topic": "crash", "payload": 0, "id": format!("after-{round}")}));
        let seq = g.frame()["seq"].as_u64().unwrap();
        assert!(seq > last_max_seq);
        last_max_seq = seq;
    }
    assert!(
        acked_total > 100,
        "too few acknowledged publishes to mean anything: {acked_total}"
    );
}
