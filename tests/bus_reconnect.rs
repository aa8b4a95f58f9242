//! Reconnection under load against the real `castra broker`: while many
//! simulated guests publish and the host publishes and asks for status, one
//! guest falls silent until the heartbeat timeout ends its session, three
//! times; each new session is fresh (no subscription carried over) and no
//! acknowledged publish is lost. Numbers are printed (`--nocapture`).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use castra::broker::buslog::read_records;
use castra::broker::host_client;
use common::broker::{Broker, Guest, cli, encode, pct, state_root};
use common::free_port;
use serde_json::{Value, json};

#[test]
fn reconnection_under_load_gets_a_fresh_session_and_loses_no_acknowledged_publish() {
    const PUBLISHERS: usize = 16;
    let vms: Vec<String> = (0..PUBLISHERS).map(|i| format!("p{i}")).collect();
    let mut names: Vec<&str> = vms.iter().map(String::as_str).collect();
    names.push("r");
    let root = state_root(&names);
    let port = free_port();
    let broker = Broker::start(root.path(), port, &["--heartbeat-timeout-ms", "800"]);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));

    let publishers: Vec<_> = vms
        .iter()
        .map(|vm| {
            let (vm, stop, acked) = (vm.clone(), stop.clone(), acked.clone());
            thread::spawn(move || {
                let mut g = Guest::open(port, &vm);
                let w = Arc::new(Mutex::new(g.writer.try_clone().unwrap()));
                // Heartbeats of their own: waiting for a durable ack on a
                // loaded machine can outlast the 800 ms heartbeat timeout,
                // which only r is meant to meet.
                let done = Arc::new(AtomicBool::new(false));
                let beat = {
                    let (w, done) = (w.clone(), done.clone());
                    thread::spawn(move || {
                        while !done.load(Ordering::Relaxed) {
                            let hb = encode(&json!({"type": "heartbeat"}));
                            if w.lock().unwrap().write_all(&hb).is_err() {
                                return;
                            }
                            thread::sleep(Duration::from_millis(200));
                        }
                    })
                };
                let (mut i, mut inflight) = (0u64, 0);
                use std::io::Write;
                loop {
                    while inflight < 4 && !stop.load(Ordering::Relaxed) {
                        let id = format!("{vm}-{i}");
                        let f = json!({"type": "publish", "topic": "load", "payload": i, "id": id});
                        w.lock().unwrap().write_all(&encode(&f)).unwrap();
                        i += 1;
                        inflight += 1;
                    }
                    if inflight == 0 {
                        done.store(true, Ordering::Relaxed);
                        beat.join().unwrap();
                        return;
                    }
                    let f = g.frame();
                    if f["ack"] == "publish" {
                        assert_eq!(f["status"], "ok", "{f}");
                        inflight -= 1;
                        acked.lock().unwrap().insert(
                            f["id"].as_str().unwrap().to_owned(),
                            f["seq"].as_u64().unwrap(),
                        );
                    }
                }
            })
        })
        .collect();

    // status --json and bus publish from the host, timed, throughout.
    let host_side = {
        let (stop, root) = (stop.clone(), root.path().to_path_buf());
        thread::spawn(move || {
            let (mut status_ms, mut publish_ms, mut host_seqs) = (vec![], vec![], vec![]);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let out = cli(&root, &["status", "--json"]).output().unwrap();
                status_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(v["broker"]["state"], "running", "{v}");
                let t = Instant::now();
                let out = cli(&root, &["bus", "publish", "--topic", "load", "\"host\""])
                    .output()
                    .unwrap();
                publish_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                assert!(out.status.success());
                host_seqs.push(
                    String::from_utf8_lossy(&out.stdout)
                        .trim()
                        .parse::<u64>()
                        .unwrap(),
                );
                thread::sleep(Duration::from_millis(20));
            }
            (status_ms, publish_ms, host_seqs)
        })
    };

    // The reconnecting guest: subscribe, fall silent until the heartbeat
    // timeout ends the session, reconnect; three times.
    let mut old_sessions = Vec::new();
    let mut reconnect_ms = Vec::new();
    let mut timeouts = 0;
    let (mut r, mut id) = Guest::session(port, "r", "tok-r");
    for round in 0..3 {
        r.subscribe("jobs-r");
        let bye = r.frame();
        assert_eq!(bye, json!({"type": "bye", "reason": "heartbeat_timeout"}));
        timeouts += 1;
        let t = Instant::now();
        old_sessions.push(id);
        (r, id) = Guest::session(port, "r", "tok-r");
        reconnect_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        r.subscribe("vm:r");
        assert!(
            !old_sessions.contains(&id),
            "round {round}: a reused session id"
        );
        // The new session holds no subscription: a publish to jobs-r does not reach it.
        let (seq, got) = publish_while_alive(&mut r, &broker.socket(), round);
        assert!(
            got.is_empty(),
            "round {round}: message {seq} reached a session that did not subscribe: {got:?}"
        );
        // Subscribing again works at once.
        r.subscribe("jobs-r");
        let (seq, got) = publish_while_alive(&mut r, &broker.socket(), round);
        assert_eq!(got, [seq], "round {round}");
        r.send(&json!({"type": "unsubscribe", "topic": "jobs-r"}));
        assert_eq!(r.frame()["ack"], "unsubscribe");
    }
    // The snapshot's latest session of r is the one open now, and only it;
    // r keeps heartbeating while that is checked (a loaded machine can take
    // longer than its 800 ms timeout), then leaves: its timeouts are the
    // three above.
    let beating = Arc::new(AtomicBool::new(true));
    let beat = {
        let (mut w, beating) = (r.writer.try_clone().unwrap(), beating.clone());
        thread::spawn(move || {
            use std::io::Write;
            while beating.load(Ordering::Relaxed) {
                let _ = w.write_all(&encode(&json!({"type": "heartbeat"})));
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    broker.state_when(|s| {
        s.vms
            .get("r")
            .is_some_and(|r| r.sessions == 1 && r.session.as_deref() == Some(id.as_str()))
    });
    beating.store(false, Ordering::Relaxed);
    beat.join().unwrap();
    drop(r);
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().unwrap();
    }
    let (mut status_ms, mut publish_ms, host_seqs) = host_side.join().unwrap();

    let logged: BTreeMap<String, u64> = read_records(&root.path().join("logs/bus/all.log"))
        .unwrap()
        .into_iter()
        .filter_map(|r| Some((r.id?.as_str()?.to_owned(), r.seq)))
        .collect();
    let logged_seqs: std::collections::BTreeSet<u64> =
        read_records(&root.path().join("logs/bus/all.log"))
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
    let acked = acked.lock().unwrap();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|(id, seq)| logged.get(*id) != Some(seq))
        .map(|(id, _)| id)
        .collect();
    assert!(lost.is_empty(), "acknowledged but not logged: {lost:?}");
    assert!(host_seqs.iter().all(|s| logged_seqs.contains(s)));
    let timeout_events = broker
        .events()
        .iter()
        .filter(|e| e["event"] == "bus_decision" && e["reason"] == "heartbeat_timeout")
        .map(|e| e["vm"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(timeout_events, vec!["r"; timeouts], "only r timed out");

    status_ms.sort_by(f64::total_cmp);
    publish_ms.sort_by(f64::total_cmp);
    println!(
        "reconnection under load: {PUBLISHERS} guests x 4 in flight, {} publishes acknowledged, 0 lost; \
         3 timeouts + reconnects ({:.1?} ms to a new session); status --json x{} p50 {:.1} ms max {:.1} ms; \
         bus publish x{} p50 {:.1} ms max {:.1} ms",
        acked.len(),
        reconnect_ms,
        status_ms.len(),
        pct(&status_ms, 0.5),
        pct(&status_ms, 1.0),
        publish_ms.len(),
        pct(&publish_ms, 0.5),
        pct(&publish_ms, 1.0),
    );
    assert!(acked.len() > 200, "too little load to mean anything");
    // Generous bounds: this machine is shared with other builds.
    assert!(
        pct(&status_ms, 1.0) < 10_000.0,
        "status --json took {status_ms:?}"
    );
    assert!(
        pct(&publish_ms, 1.0) < 10_000.0,
        "bus publish took {publish_ms:?}"
    );
}

/// One heartbeat round trip of `r`: the (topic, seq) of every message that
/// came before the heartbeat's ack, each acked.
fn heartbeat_round_trip(r: &mut Guest) -> Vec<(String, u64)> {
    let heartbeat_ack = json!({"type": "ack", "ack": "heartbeat", "status": "ok"});
    r.send(&json!({"type": "heartbeat"}));
    let mut got = Vec::new();
    loop {
        let f = r.frame();
        if f == heartbeat_ack {
            return got;
        }
        assert_eq!(f["type"], "message", "{f}");
        got.push((
            f["topic"].as_str().unwrap().to_owned(),
            f["seq"].as_u64().unwrap(),
        ));
        r.send(&json!({"type": "ack", "seq": f["seq"]}));
    }
}

/// Publish `round` on jobs-r from the host while `r` keeps heartbeating (a
/// durable publish under load may take longer than r's heartbeat timeout),
/// then a marker on `vm:r` (which r subscribes to); returns the jobs-r seq
/// and the seqs of every other message `r` received (acked) before the
/// marker. The hub routes in seq order and a session's deliveries arrive in
/// order, so once the marker is in, a jobs-r delivery to r would be too.
fn publish_while_alive(r: &mut Guest, socket: &std::path::Path, round: u64) -> (u64, Vec<u64>) {
    let socket = socket.to_path_buf();
    let publish = thread::spawn(move || {
        let seq = host_client::publish(&socket, "jobs-r", json!(round), None, 65536).unwrap();
        let marker = host_client::publish(&socket, "vm:r", json!(round), None, 65536).unwrap();
        (seq, marker)
    });
    let (mut got, mut markers) = (Vec::new(), Vec::new());
    let split = |msgs: Vec<(String, u64)>, got: &mut Vec<u64>, markers: &mut Vec<u64>| {
        for (topic, seq) in msgs {
            if topic == "vm:r" {
                markers.push(seq);
            } else {
                got.push(seq);
            }
        }
    };
    // Heartbeats paced well inside r's 800 ms timeout while the host publishes.
    while !publish.is_finished() {
        split(heartbeat_round_trip(r), &mut got, &mut markers);
        thread::sleep(Duration::from_millis(100));
    }
    let (seq, marker) = publish.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        split(heartbeat_round_trip(r), &mut got, &mut markers);
        if markers.contains(&marker) {
            break;
        }
        assert!(Instant::now() < deadline, "marker {marker} never reached r");
        thread::sleep(Duration::from_millis(20));
    }
    (seq, got)
}
