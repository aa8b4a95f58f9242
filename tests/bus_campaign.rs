//! The crash campaign (Jepsen's queue check) against the real `castra
//! broker`: 16 publishers (12 guests on the TCP port, 4 host publishers on
//! the Unix socket) with unique ids, and per trial one fault: `kill -9` at a
//! random moment, `SIGSTOP` for longer than the heartbeat timeout then
//! `SIGCONT`, or the wall clock stepped back an hour while it runs
//! (libfaketime). After each trial every publisher re-sends what it never
//! saw acknowledged, with the same id (an at-least-once client), and the log
//! is checked: acknowledged but absent = lost, which must be 0; ids logged
//! twice are duplicates, counted and printed (the bus is at-least-once,
//! docs/BUS.md).
//!
//! CI runs 3 trials (one of each fault). The long campaign:
//! `CASTRA_CAMPAIGN_TRIALS=20 nice cargo test --release --test bus_campaign -- --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use castra::broker::buslog::read_records;
use castra::broker::host_client;
use common::broker::{Broker, Guest, encode, state_root};
use common::free_port;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const GUESTS: usize = 12;
const HOSTS: usize = 4;
const HEARTBEAT_TIMEOUT_MS: u64 = 1500;
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill9,
    StopCont,
    ClockBack,
}

/// What a publisher saw: id -> acknowledged (with its seq) or not (yet).
type Seen = Arc<Mutex<BTreeMap<String, Option<u64>>>>;

/// xorshift: the kill moments are random but printed and repeatable.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One guest publisher: 8 in flight until `stop` or the connection ends.
/// `ids`: what to send first (re-sends), then fresh ids `<prefix><n>`.
fn guest(
    port: u16,
    vm: String,
    prefix: String,
    resend: Vec<String>,
    seen: Seen,
    stop: Arc<AtomicBool>,
    ready: Arc<Barrier>,
) {
    let mut g = Guest::open(port, &vm);
    ready.wait();
    let mut w = g.writer.try_clone().unwrap();
    let mut resend = resend.into_iter();
    let (mut n, mut inflight) = (0u64, 0);
    loop {
        while inflight < 8 {
            let Some(id) = next_id(&mut resend, &stop, &prefix, &mut n) else {
                break;
            };
            seen.lock().unwrap().entry(id.clone()).or_insert(None);
            let f =
                json!({"type": "publish", "topic": "campaign", "payload": {"vm": vm}, "id": id});
            if w.write_all(&encode(&f)).is_err() {
                return;
            }
            inflight += 1;
        }
        if inflight == 0 {
            return;
        }
        match g.try_frame() {
            Ok(f) if f["ack"] == "publish" && f["status"] == "ok" => {
                inflight -= 1;
                let id = f["id"].as_str().unwrap().to_owned();
                seen.lock().unwrap().insert(id, f["seq"].as_u64());
            }
            Ok(f) if f["type"] == "bye" => return,
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// The next id to send: re-sends first, then fresh ones until `stop`.
fn next_id(
    resend: &mut impl Iterator<Item = String>,
    stop: &AtomicBool,
    prefix: &str,
    n: &mut u64,
) -> Option<String> {
    if let Some(id) = resend.next() {
        return Some(id);
    }
    if stop.load(Ordering::Relaxed) {
        return None;
    }
    *n += 1;
    Some(format!("{prefix}{n}"))
}

/// One host publisher: `castra bus publish`'s client, one request at a time.
fn host(
    socket: PathBuf,
    prefix: String,
    resend: Vec<String>,
    seen: Seen,
    stop: Arc<AtomicBool>,
    ready: Arc<Barrier>,
) {
    ready.wait();
    let mut resend = resend.into_iter();
    let mut n = 0u64;
    while let Some(id) = next_id(&mut resend, &stop, &prefix, &mut n) {
        seen.lock().unwrap().entry(id.clone()).or_insert(None);
        match host_client::publish(&socket, "campaign", json!("host"), Some(json!(id)), 60_000) {
            Ok(seq) => {
                seen.lock().unwrap().insert(id, Some(seq));
            }
            Err(_) => return,
        }
    }
}

/// Run all 16 publishers until `fault` has happened and they stopped.
/// `resend`: per publisher, the ids it never saw acknowledged before.
fn run_publishers(
    broker: &mut Broker,
    trial: usize,
    fault: Fault,
    rng: &mut Rng,
    resend: &BTreeMap<String, Vec<String>>,
    seen: &Seen,
    clock_file: &Path,
) -> String {
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(GUESTS + HOSTS + 1));
    let mut threads = Vec::new();
    for i in 0..GUESTS {
        let vm = format!("p{i}");
        let (seen, stop, ready) = (seen.clone(), stop.clone(), ready.clone());
        let again = resend.get(&vm).cloned().unwrap_or_default();
        let (port, prefix) = (broker.port, format!("t{trial}-{vm}-"));
        threads.push(thread::spawn(move || {
            guest(port, vm, prefix, again, seen, stop, ready)
        }));
    }
    for i in 0..HOSTS {
        let name = format!("h{i}");
        let (seen, stop, ready) = (seen.clone(), stop.clone(), ready.clone());
        let again = resend.get(&name).cloned().unwrap_or_default();
        let (socket, prefix) = (broker.socket(), format!("t{trial}-{name}-"));
        threads.push(thread::spawn(move || {
            host(socket, prefix, again, seen, stop, ready)
        }));
    }
    ready.wait();
    let at = 100 + rng.below(1400);
    thread::sleep(Duration::from_millis(at));
    let pid = Pid::from_raw(broker.pid() as i32);
    let what = match fault {
        Fault::Kill9 => {
            broker.kill9();
            format!("kill -9 after {at} ms")
        }
        Fault::StopCont => {
            kill(pid, Signal::SIGSTOP).unwrap();
            thread::sleep(Duration::from_millis(HEARTBEAT_TIMEOUT_MS + 1000));
            kill(pid, Signal::SIGCONT).unwrap();
            thread::sleep(Duration::from_millis(300));
            format!(
                "SIGSTOP after {at} ms for {} ms, SIGCONT",
                HEARTBEAT_TIMEOUT_MS + 1000
            )
        }
        Fault::ClockBack => {
            std::fs::write(clock_file, "-1h\n").unwrap();
            // The broker's clock really went back: state.json's stamp shows it.
            let real_now = castra::broker::stamp::unix_ms();
            common::wait_until(
                "the broker's clock stepped back",
                Duration::from_secs(10),
                || match castra::broker::read_snapshot(&broker.root.join("broker/state.json")) {
                    Ok(Some(s)) if s.written_ms + 3_000_000 < real_now => Ok(()),
                    other => Err(format!("{:?}", other.map(|s| s.map(|s| s.written_ms)))),
                },
            );
            thread::sleep(Duration::from_millis(300));
            format!("wall clock stepped back 1 h after {at} ms")
        }
    };
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    what
}

#[test]
fn crash_campaign_loses_no_acknowledged_publish() {
    let trials: usize = std::env::var("CASTRA_CAMPAIGN_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    assert!(
        Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: scripts/setup-host.sh installs faketime"
    );
    let vms: Vec<String> = (0..GUESTS).map(|i| format!("p{i}")).collect();
    let root = state_root(&vms.iter().map(String::as_str).collect::<Vec<_>>());
    let clock_file = root.path().join("faketime");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("campaign: {trials} trials, seed {seed}");
    let mut rng = Rng(seed);
    let port = free_port();
    let timeout = HEARTBEAT_TIMEOUT_MS.to_string();
    let mut broker = Broker::start(root.path(), port, &["--heartbeat-timeout-ms", &timeout]);
    let seen: Seen = Arc::default();
    let mut resend: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut total_acked = 0;
    let started = Instant::now();
    for trial in 0..trials {
        let fault = [Fault::Kill9, Fault::StopCont, Fault::ClockBack][trial % 3];
        if let Fault::ClockBack = fault {
            // The next start runs under libfaketime reading the offset from
            // a file on every call (stepped by writing the file).
            std::fs::write(&clock_file, "+0\n").unwrap();
            broker.kill9();
            broker.env = vec![
                ("LD_PRELOAD".into(), FAKETIME.into()),
                (
                    "FAKETIME_TIMESTAMP_FILE".into(),
                    clock_file.display().to_string(),
                ),
                ("FAKETIME_NO_CACHE".into(), "1".into()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            ];
            broker.restart();
        }
        let what = run_publishers(
            &mut broker,
            trial,
            fault,
            &mut rng,
            &resend,
            &seen,
            &clock_file,
        );
        // Whatever the fault, the broker is killed and restarted (as
        // `castra apply` restarts a dead broker): the log is what survived.
        broker.kill9();
        broker.env.clear();
        broker.restart();
        let (lost, dups, acked) = check(root.path(), &seen);
        println!(
            "trial {trial}: {what}: {acked} acknowledged so far, {lost} lost, {dups} duplicates"
        );
        assert_eq!(
            lost, 0,
            "trial {trial} ({what}) lost acknowledged publishes"
        );
        total_acked = acked;
        // What was never acknowledged is sent again next trial.
        resend.clear();
        for (id, seq) in seen.lock().unwrap().iter() {
            if seq.is_none() {
                let publisher = id.split('-').nth(1).unwrap().to_owned();
                resend.entry(publisher).or_default().push(id.clone());
            }
        }
    }
    // A last round with no fault: every re-send is acknowledged.
    let stop = Arc::new(AtomicBool::new(true));
    for (publisher, ids) in &resend {
        let (ready, ids, seen) = (Arc::new(Barrier::new(1)), ids.clone(), seen.clone());
        if publisher.starts_with('p') {
            guest(
                port,
                publisher.clone(),
                String::new(),
                ids,
                seen,
                stop.clone(),
                ready,
            );
        } else {
            host(
                broker.socket(),
                String::new(),
                ids,
                seen,
                stop.clone(),
                ready,
            );
        }
    }
    let unacked = seen
        .lock()
        .unwrap()
        .values()
        .filter(|s| s.is_none())
        .count();
    assert_eq!(
        unacked, 0,
        "re-sends after the campaign were not all acknowledged"
    );
    let (lost, dups, acked) = check(root.path(), &seen);
    assert_eq!(lost, 0);
    println!(
        "campaign: {trials} trials in {:.0?}, {acked} acknowledged, 0 lost, {dups} duplicates (at-least-once re-sends), seed {seed}",
        started.elapsed()
    );
    assert!(
        total_acked > 100,
        "too few publishes to mean anything: {total_acked}"
    );
    // Stamps never go back, even across the clock step.
    let ts: Vec<u64> = read_records(&root.path().join("logs/bus/all.log"))
        .unwrap()
        .iter()
        .map(|r| r.ts_ms)
        .collect();
    assert!(
        ts.windows(2).all(|w| w[0] <= w[1]),
        "ts_ms went back in all.log"
    );
}

/// (lost, duplicates, acknowledged): over every id ever sent.
fn check(root: &Path, seen: &Seen) -> (usize, usize, usize) {
    let mut logged: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in read_records(&root.join("logs/bus/all.log")).unwrap() {
        if let Some(id) = r.id.as_ref().and_then(Value::as_str) {
            logged.entry(id.to_owned()).or_default().push(r.seq);
        }
    }
    let seen = seen.lock().unwrap();
    let mut lost = Vec::new();
    let mut acked = 0;
    for (id, seq) in seen.iter() {
        if let Some(seq) = seq {
            acked += 1;
            if !logged.get(id).is_some_and(|s| s.contains(seq)) {
                lost.push(id.clone());
            }
        }
    }
    assert!(lost.len() < 20, "lost: {lost:?}");
    let dups = logged.values().filter(|s| s.len() > 1).count();
    (lost.len(), dups, acked)
}
