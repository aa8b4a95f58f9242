//! Consumers of the bus against the real `castra broker`: host consumers
//! (`castra bus subscribe` and the library's `HostSession` on the Unix
//! socket), the unacked window pacing delivery, and reconnection while many
//! simulated guests publish. Numbers are printed (`--nocapture`).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use castra::broker::buslog::read_records;
use castra::broker::frame::{BrokerFrame, ClientFrame};
use castra::broker::host_client::{self, HostSession, SessionError};
use castra::broker::reason::Reason;
use common::broker::{Broker, Guest, cli, encode, pct, state_root};
use common::{KillOnDrop, free_port, signal};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// A running `castra bus subscribe`, once it said it is subscribed.
struct Subscriber {
    child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Subscriber {
    fn start(root: &std::path::Path, args: &[&str]) -> Subscriber {
        let mut all = vec!["bus", "subscribe"];
        all.extend_from_slice(args);
        let mut child = cli(root, &all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.starts_with("castra: subscribed to "), "{line}");
        // Keep draining stderr so the child never blocks on it.
        thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            if !rest.is_empty() {
                eprintln!("subscriber stderr: {rest}");
            }
        });
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Subscriber { child, lines }
    }

    fn line(&mut self) -> String {
        self.lines.next().unwrap().unwrap()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_host_consumer_receives_guest_and_host_messages_live() {
    let root = state_root(&["a"]);
    let port = free_port();
    let broker = Broker::start(root.path(), port, &[]);
    let mut a = Guest::open(port, "a");

    // `-n 3`: exits 0 after three messages; any VM's vm:<name> is allowed to the host.
    let mut json_sub = Subscriber::start(
        root.path(),
        &["--topic", "jobs", "--topic", "vm:a", "--json", "-n", "3"],
    );
    let mut text_sub = Subscriber::start(root.path(), &["--topic", "jobs"]);
    let s = broker.state_when(|s| s.host.sessions == 2 && s.host.bus_subscribed);
    assert!(!s.vms.contains_key("host"), "host sessions are not a VM");
    let status = cli(root.path(), &["status", "--json"]).output().unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["broker"]["host_sessions"], 2, "{status}");

    let s1 = a.publish("jobs", json!({"n": 1}));
    let out = cli(
        root.path(),
        &["bus", "publish", "--topic", "vm:a", r#"{"n": 2}"#],
    )
    .output()
    .unwrap();
    assert!(out.status.success());
    let s2: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    a.publish("elsewhere", json!("not for them"));
    let s3 = a.publish("jobs", json!({"n": 3}));

    let got: Vec<Value> = (0..3)
        .map(|_| serde_json::from_str(&json_sub.line()).unwrap())
        .collect();
    let seen: Vec<(u64, &str, &str)> = got
        .iter()
        .map(|m| {
            assert_eq!(m["type"], "message");
            (
                m["seq"].as_u64().unwrap(),
                m["from"].as_str().unwrap(),
                m["topic"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (s1, "vm:a", "jobs"),
            (s2, "host", "vm:a"),
            (s3, "vm:a", "jobs")
        ]
    );
    assert_eq!(got[1]["payload"], json!({"n": 2}));
    let status = json_sub.child.wait().unwrap();
    assert!(status.success(), "-n 3 exits 0: {status}");

    // The readable form is the one `bus tail` prints.
    let line = text_sub.line();
    assert!(
        line.ends_with(&format!("Z #{s1} vm:a jobs {{\"n\":1}}")),
        "{line}"
    );
    // Ctrl-C ends it with 0, and its session with it.
    signal(text_sub.child.id().into(), Signal::SIGINT);
    let status = text_sub.child.wait().unwrap();
    assert!(status.success(), "SIGINT exits 0: {status}");
    broker.state_when(|s| s.host.sessions == 0 && !s.host.bus_subscribed);
    let closed = broker
        .events()
        .iter()
        .filter(|e| e["event"] == "session_closed" && e["vm"] == "host")
        .count();
    assert_eq!(closed, 2);

    // The broker stopping ends a subscriber with 1 and says what to do.
    let last = KillOnDrop::spawn(
        cli(root.path(), &["bus", "subscribe", "--topic", "jobs"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    broker.state_when(|s| s.host.sessions == 1);
    signal(broker.pid().into(), Signal::SIGTERM);
    let out = last.wait_with_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the broker ended the session: shutdown") && err.contains("castra apply"),
        "{err}"
    );
    // No broker: an actionable error.
    let out = cli(root.path(), &["bus", "subscribe", "--topic", "jobs"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("the broker is not running") && err.contains("run `castra apply`"),
        "{err}"
    );
}

/// Read frames until `quiet` passes without one; returns the message seqs
/// and whatever else arrived.
fn drain(g: &mut Guest, quiet: Duration) -> (Vec<u64>, Vec<Value>) {
    g.reader.get_ref().set_read_timeout(Some(quiet)).unwrap();
    let (mut seqs, mut other) = (Vec::new(), Vec::new());
    while let Ok(f) = g.try_frame() {
        if f["type"] == "message" {
            seqs.push(f["seq"].as_u64().unwrap());
        } else {
            other.push(f);
        }
    }
    g.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (seqs, other)
}

#[test]
fn the_unacked_window_paces_delivery_and_a_consumer_that_never_acks_is_cut_off() {
    const WINDOW: usize = 8;
    let root = state_root(&["lazy", "healthy", "pub"]);
    let port = free_port();
    let broker = Broker::start(
        root.path(),
        port,
        &[
            "--bus-unacked-window",
            "8",
            "--bus-queue-frames",
            "16",
            // 10 x 50 ms: a healthy reader descheduled on a busy machine is not cut off.
            "--slow-consumer-retries",
            "10",
            "--slow-consumer-retry-ms",
            "50",
        ],
    );
    let mut lazy = Guest::open(port, "lazy");
    lazy.subscribe("w");
    let mut healthy = Guest::open(port, "healthy");
    healthy.subscribe("w");
    let mut publisher = Guest::open(port, "pub");

    // 12 messages: the lazy consumer gets the window's 8, then nothing.
    let seqs: Vec<u64> = (0..12).map(|i| publisher.publish("w", json!(i))).collect();
    let (got, _) = drain(&mut lazy, Duration::from_millis(400));
    assert_eq!(got, seqs[..WINDOW], "delivery stops after the window");
    // One cumulative ack of the 8th opens the window: the other 4 follow.
    lazy.send(&json!({"type": "ack", "seq": seqs[WINDOW - 1]}));
    let (got, _) = drain(&mut lazy, Duration::from_millis(400));
    assert_eq!(got, seqs[WINDOW..]);
    lazy.send(&json!({"type": "ack", "seq": seqs[11]}));
    let healthy_got: Vec<u64> = (0..12)
        .map(|_| healthy.message()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(healthy_got, seqs);

    // A host consumer that never acks is treated the same way.
    let mut host = HostSession::open(&broker.socket()).unwrap();
    host.subscribe(&["w".to_owned()]).unwrap();

    // The lazy guest stops acking (it still reads): window, then its queue
    // of 16, then the hub's retries; then it is cut off. The healthy one
    // (reading and acking as it goes) keeps getting everything, and the
    // publisher is never held up.
    let reader = thread::spawn(move || {
        let seqs: Vec<u64> = (0..80)
            .map(|_| healthy.message()["seq"].as_u64().unwrap())
            .collect();
        (seqs, healthy)
    });
    let started = Instant::now();
    let more: Vec<u64> = (0..80)
        .map(|i| publisher.publish("w", json!(100 + i)))
        .collect();
    let publish_s = started.elapsed().as_secs_f64();
    let (healthy_got, _healthy) = reader.join().unwrap();
    assert_eq!(healthy_got, more);
    let (got, other) = drain(&mut lazy, Duration::from_millis(1500));
    assert_eq!(got, more[..WINDOW], "nothing past the window without acks");
    assert_eq!(
        other,
        [json!({"type": "bye", "reason": "slow_consumer"})],
        "then bye slow_consumer"
    );
    let mut host_got = Vec::new();
    let ended = loop {
        match host.next(Duration::from_secs(5)) {
            Ok(Some(BrokerFrame::Message { seq, .. })) => host_got.push(seq),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the host consumer was never cut off"),
            Err(e) => break e,
        }
    };
    assert_eq!(host_got, more[..WINDOW]);
    assert!(
        matches!(
            ended,
            SessionError::Ended {
                reason: Reason::SlowConsumer
            }
        ),
        "{ended}"
    );

    // The recorder writes events before the state that counts them.
    let s = broker.state_when(|s| {
        s.vms["lazy"].slow_consumer_disconnects == 1 && s.host.slow_consumer_disconnects == 1
    });
    let decisions = |vm: &str| -> Vec<(String, String)> {
        broker
            .events()
            .iter()
            .filter(|e| e["event"] == "bus_decision" && e["vm"] == vm)
            .map(|e| {
                (
                    e["reason"].as_str().unwrap().to_owned(),
                    e["action"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    for vm in ["lazy", "host"] {
        let d = decisions(vm);
        assert_eq!(d.first().unwrap(), &("queue_full".into(), "retry".into()));
        assert_eq!(
            d.last().unwrap(),
            &("slow_consumer".into(), "disconnect".into()),
            "{vm}"
        );
    }
    assert!(decisions("healthy").is_empty());
    assert!(s.bus_overflow_dropped_total > 0);
    assert!(!s.vms["lazy"].bus_subscribed && s.vms["healthy"].bus_subscribed);
    assert!(broker.log().contains("bus decision vm=host"));
    println!(
        "window {WINDOW}: 80 publishes in {publish_s:.2}s while two consumers stopped acking; \
         each got {WINDOW} of them, then bye slow_consumer; the healthy one got all 80"
    );
}

/// Many guests publish (4 in flight each, unique ids) while one guest's
/// session times out and reconnects, over and over; `castra status --json`
/// and `castra bus publish` run throughout. No acknowledged publish may be
/// missing from the log; a reconnected session starts with no subscription.
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
    // The snapshot's latest session of r is the one open now, and only it.
    broker.state_when(|s| {
        s.vms
            .get("r")
            .is_some_and(|r| r.sessions == 1 && r.session.as_deref() == Some(id.as_str()))
    });
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

#[test]
fn a_host_session_speaks_the_guest_protocol() {
    let root = state_root(&["a"]);
    let port = free_port();
    let broker = Broker::start(root.path(), port, &[]);
    let mut host = HostSession::open(&broker.socket()).unwrap();
    host.subscribe(&["vm:a".to_owned()]).unwrap();
    // The host publishes as `host` through its session, durably.
    host.send(&ClientFrame::Publish {
        topic: "vm:a".into(),
        payload: json!("self"),
        id: Some(json!("h1")),
    })
    .unwrap();
    let mut frames = Vec::new();
    while frames.len() < 2 {
        frames.push(host.next(Duration::from_secs(5)).unwrap().unwrap());
    }
    let seq = frames.iter().find_map(|f| match f {
        BrokerFrame::Ack { seq, .. } => *seq,
        _ => None,
    });
    let msg = frames.iter().find_map(|f| match f {
        BrokerFrame::Message { seq, from, .. } => Some((*seq, from.clone())),
        _ => None,
    });
    assert_eq!(msg, Some((seq.unwrap(), "host".to_owned())));
    let rec = read_records(&root.path().join("logs/bus/host.log")).unwrap();
    assert_eq!(
        (rec[0].seq, rec[0].id.clone()),
        (seq.unwrap(), Some(json!("h1")))
    );
    // Bad frames end a host session as they end a guest's.
    use std::io::Write;
    let mut raw = host.try_clone_stream().unwrap();
    raw.write_all(&[0, 0, 0, 0]).unwrap();
    let mut rest = Vec::new();
    loop {
        match host.next(Duration::from_secs(5)) {
            Ok(Some(f)) => rest.push(f),
            Ok(None) => panic!("no bye"),
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        SessionError::Ended {
                            reason: Reason::EmptyFrame
                        }
                    ),
                    "{e}"
                );
                break;
            }
        }
    }
    assert_eq!(
        rest,
        [BrokerFrame::Error {
            reason: Reason::EmptyFrame
        }]
    );
    broker.state_when(|s| s.host.sessions == 0);
}
