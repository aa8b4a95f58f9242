//! Consumers of the bus against the real `castra broker`: host consumers
//! (`castra bus subscribe` and the library's `HostSession` on the Unix
//! socket) and the unacked window pacing delivery (reconnection under load
//! is `bus_reconnect.rs`). Numbers are printed (`--nocapture`).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use castra::broker::buslog::read_records;
use castra::broker::host_client::{HostSession, SessionError};
use castra::broker::wire::frame::{BrokerFrame, ClientFrame};
use castra::broker::wire::reason::Reason;
use common::broker::{Broker, Guest, cli, state_root};
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
            // 40 x 50 ms: a healthy reader descheduled on a busy machine (seen
            // with 10 x 50 ms at a load of 10 on 2 cores) is not cut off.
            "--slow-consumer-retries",
            "40",
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
    // Everything the lazy one gets until the broker ends its session (the
    // bye is the event that proves nothing more can come).
    let (mut got, mut other) = (Vec::new(), Vec::new());
    while let Ok(f) = lazy.try_frame() {
        if f["type"] == "message" {
            got.push(f["seq"].as_u64().unwrap());
        } else {
            other.push(f);
        }
    }
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
