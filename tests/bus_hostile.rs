//! Hostile clients against the real `castra broker`: 200 slowloris
//! connections (a hello trickled one byte a second), 200 that connect and
//! never speak, 100 loops of valid hellos with wrong tokens, and 8
//! connections of random garbage, all at once. Meanwhile a real guest keeps
//! its session (heartbeats acknowledged) and fresh real hellos keep being
//! granted; every unauthenticated connection is closed by the hello timeout
//! (5 s, docs/BUS.md); the broker's RSS stays under a bound. Figures are
//! printed (`--nocapture`): hello latency, close times, RSS.
//!
//! CI runs it for 8 s; the long run:
//! `CASTRA_HOSTILE_SECS=60 nice cargo test --release --test bus_hostile -- --nocapture`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::broker::{Broker, Guest, state_root};
use common::free_port;
use serde_json::json;

/// RSS bound for the broker under this load (measured: see docs/BUS.md).
const RSS_BOUND_KB: u64 = 64 * 1024;
/// The broker's default hello timeout.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

fn connect(port: u16) -> Option<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    Some(s)
}

/// `n` connections that send `trickle` one byte a second (nothing when
/// empty); each is timed from connect to the broker closing it, then
/// replaced. Returns the close times seen.
fn holders(
    port: u16,
    n: usize,
    trickle: &'static [u8],
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<Duration>> {
    thread::spawn(move || {
        let mut conns: Vec<(TcpStream, Instant, usize)> = Vec::new();
        let mut closes = Vec::new();
        let mut last_tick = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            while conns.len() < n {
                match connect(port) {
                    Some(s) => {
                        s.set_nonblocking(true).unwrap();
                        conns.push((s, Instant::now(), 0));
                    }
                    None => break,
                }
            }
            let tick = last_tick.elapsed() >= Duration::from_secs(1);
            if tick {
                last_tick = Instant::now();
            }
            conns.retain_mut(|(s, at, sent)| {
                if tick && !trickle.is_empty() {
                    let _ = s.write(&trickle[*sent % trickle.len()..][..1]);
                    *sent += 1;
                }
                let mut buf = [0u8; 256];
                let gone = loop {
                    match s.read(&mut buf) {
                        Ok(0) => break true,
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                        Err(_) => break true,
                    }
                };
                if gone {
                    closes.push(at.elapsed());
                }
                !gone
            });
            thread::sleep(Duration::from_millis(50));
        }
        closes
    })
}

/// A real guest's connect + greeting + hello -> `ok session`, then a
/// heartbeat acknowledged; the hello's time in ms.
fn time_hello(port: u16) -> f64 {
    let t0 = Instant::now();
    let (mut db, _) = Guest::session(port, "db", "tok-db");
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    db.send(&json!({"type": "heartbeat"}));
    assert_eq!(db.frame()["ack"], "heartbeat");
    ms
}

#[test]
fn hostile_clients_do_not_lock_out_real_guests() {
    let secs: u64 = std::env::var("CASTRA_HOSTILE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let root = state_root(&["web", "db"]);
    let port = free_port();
    let broker = Broker::start(root.path(), port, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let rss_start = broker.rss_kb();
    // The same hello with no hostile load first: the figure to compare with.
    let mut quiet: Vec<f64> = (0..10).map(|_| time_hello(port)).collect();
    quiet.sort_by(f64::total_cmp);

    let slowloris = holders(
        port,
        200,
        b"hello vm:web capabilities=bus-v1 token=tok-web\n",
        stop.clone(),
    );
    let silent = holders(port, 200, b"", stop.clone());
    let denials = Arc::new(AtomicU64::new(0));
    let mut storms = Vec::new();
    for _ in 0..100 {
        let (stop, denials) = (stop.clone(), denials.clone());
        storms.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(mut s) = connect(port) else { continue };
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let _ = s.write_all(b"hello vm:web capabilities=bus-v1 token=wrong\n");
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                if reply.contains("error: bad_token") {
                    denials.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for seed in 0..8u64 {
        let stop = stop.clone();
        storms.push(thread::spawn(move || {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut buf = [0u8; 1024];
            while !stop.load(Ordering::Relaxed) {
                let Some(mut s) = connect(port) else { continue };
                loop {
                    for b in buf.iter_mut() {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        *b = x as u8;
                    }
                    if stop.load(Ordering::Relaxed) || s.write_all(&buf).is_err() {
                        break;
                    }
                }
            }
        }));
    }

    // The real guests: one long session with heartbeats, and fresh hellos.
    let mut web = Guest::open(port, "web");
    let hello_ms = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut rss_max = rss_start;
    while started.elapsed() < Duration::from_secs(secs) {
        web.send(&json!({"type": "heartbeat"}));
        loop {
            let f = web.frame();
            if f["ack"] == "heartbeat" {
                break;
            }
        }
        hello_ms.lock().unwrap().push(time_hello(port));
        rss_max = rss_max.max(broker.rss_kb());
        thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    let slow_closes = slowloris.join().unwrap();
    let silent_closes = silent.join().unwrap();
    for t in storms {
        t.join().unwrap();
    }
    // Still a working broker afterwards.
    assert!(web.publish("after", json!(1)) > 0);

    let mut hellos = hello_ms.lock().unwrap().clone();
    hellos.sort_by(f64::total_cmp);
    let max_close = |c: &[Duration]| c.iter().max().copied().unwrap_or_default();
    println!(
        "hostile {secs}s: real hellos without load p50 {:.1} ms, max {:.1} ms; under load {} (p50 {:.1} ms, max {:.1} ms); slowloris closed {} (max {:.1?}), silent closed {} (max {:.1?}); wrong-token denials {}; broker RSS {} -> max {} KiB",
        common::broker::pct(&quiet, 0.5),
        quiet.last().copied().unwrap_or_default(),
        hellos.len(),
        common::broker::pct(&hellos, 0.5),
        hellos.last().copied().unwrap_or_default(),
        slow_closes.len(),
        max_close(&slow_closes),
        silent_closes.len(),
        max_close(&silent_closes),
        denials.load(Ordering::Relaxed),
        rss_start,
        rss_max
    );
    assert!(!hellos.is_empty());
    // Hang catchers only (the figures are what docs/BUS.md reports).
    assert!(
        *hellos.last().unwrap() < 5000.0,
        "a real hello took {:?} ms",
        hellos.last()
    );
    if secs > HELLO_TIMEOUT.as_secs() + 1 {
        assert!(
            slow_closes.len() >= 200 && silent_closes.len() >= 200,
            "unauthenticated connections were not closed"
        );
        let slack = HELLO_TIMEOUT + Duration::from_secs(10);
        assert!(max_close(&slow_closes) < slack && max_close(&silent_closes) < slack);
    }
    assert!(denials.load(Ordering::Relaxed) > 0);
    assert!(
        rss_max < RSS_BOUND_KB,
        "broker RSS {rss_max} KiB over {RSS_BOUND_KB} KiB"
    );
}

/// Publish->ack latencies (ms) of `n` publishes, one at a time.
fn publish_latencies(g: &mut Guest, n: usize) -> Vec<f64> {
    let mut out: Vec<f64> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            g.publish("steady", json!("x"));
            t0.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

/// A guest that floods publishes and never reads its acks is slowed: the
/// broker reads no more from it while 64 of its publishes wait for the log
/// (TCP holds it back), so it cannot fill the log's shared queue; once its
/// unread acks fill the socket it is cut off (`io_error` after the write
/// timeout). The steady publisher keeps its session and its publishes; its
/// p99 is printed against its own p99 without the flood, in the same run.
/// Also: a refused token is answered only after the denial delay.
#[test]
fn a_flooding_guest_is_slowed_and_others_keep_publishing() {
    let flood_secs: u64 = std::env::var("CASTRA_FLOOD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let root = state_root(&["web", "db", "flood"]);
    let port = free_port();
    let broker = Broker::start(root.path(), port, &[]);
    // A refused token is answered after the denial delay, not at once.
    let t0 = Instant::now();
    let mut bad = Guest::connect(port);
    assert_eq!(
        bad.hello("hello vm:web capabilities=bus-v1 token=nope"),
        "error: bad_token"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );

    let mut steady = Guest::open(port, "db");
    let quiet = publish_latencies(&mut steady, 200);
    let flood = Guest::open(port, "flood");
    let mut w = flood.writer.try_clone().unwrap();
    let flooding = thread::spawn(move || {
        let frame = common::broker::encode(
            &json!({"type": "publish", "topic": "flood", "payload": "y".repeat(512)}),
        );
        let t0 = Instant::now();
        let mut sent = 0u64;
        while t0.elapsed() < Duration::from_secs(flood_secs) {
            if w.write_all(&frame).is_err() {
                return (sent, t0.elapsed(), true);
            }
            sent += 1;
        }
        (sent, t0.elapsed(), false)
    });
    thread::sleep(Duration::from_millis(300));
    // The steady publisher keeps going (with heartbeats) until the flood ends.
    let mut loud = Vec::new();
    while !flooding.is_finished() {
        loud.extend(publish_latencies(&mut steady, 50));
        steady.send(&json!({"type": "heartbeat"}));
    }
    loud.sort_by(f64::total_cmp);
    let (sent, after, cut) = flooding.join().unwrap();
    let p99 = |v: &[f64]| common::broker::pct(v, 0.99);
    println!(
        "flood: steady publisher p99 {:.1} ms alone, {:.1} ms during the flood ({:.2}x); the flooder sent {sent} publishes, cut off after {after:.1?}: {cut}",
        p99(&quiet),
        p99(&loud),
        p99(&loud) / p99(&quiet)
    );
    drop(flood);
    let snapshot = broker.state_when(|s| s.vms.get("flood").is_some_and(|e| e.sessions == 0));
    assert_eq!(
        snapshot.vms["db"].sessions, 1,
        "the steady publisher lost its session"
    );
    let closed = broker.wait_event(|e| e["event"] == "session_closed" && e["vm"] == "flood");
    println!("flood: the flooder's session closed: {closed}");
}

/// More silent connections than the cap: the oldest still in its hello is
/// closed (`error: too_many_connections`) to make room, so a real guest gets
/// in at once instead of waiting out the hello timeout.
#[test]
fn at_the_connection_cap_silent_connections_make_room_for_real_guests() {
    let root = state_root(&["web"]);
    let port = free_port();
    let broker = Broker::start(root.path(), port, &["--max-connections", "50"]);
    let mut silent: Vec<Guest> = (0..50).map(|_| Guest::connect(port)).collect();
    let t0 = Instant::now();
    let mut web = Guest::open(port, "web");
    let took = t0.elapsed();
    web.send(&json!({"type": "heartbeat"}));
    assert_eq!(web.frame()["ack"], "heartbeat");
    // The first silent one made room (well before its hello timeout).
    assert_eq!(silent[0].line(), "error: too_many_connections");
    assert!(silent[0].at_eof());
    println!("cap 50, 50 silent connections: a real hello took {took:?}");
    assert!(
        took < HELLO_TIMEOUT,
        "the real guest waited for a hello timeout: {took:?}"
    );
    // Once every connection is past its hello, a new one is refused.
    drop(silent);
    let mut sessions: Vec<Guest> = (0..49).map(|_| Guest::open(port, "web")).collect();
    broker.state_when(|s| s.connections == 50 && s.vms["web"].sessions == 50);
    let mut extra = Guest::connect(port);
    assert_eq!(extra.line(), "error: too_many_connections");
    sessions.clear();
}
