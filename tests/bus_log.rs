//! The bus log against the real `castra broker` binary: rotation by size and
//! the kept generations, `castra bus tail` (plain, `-f`, `--since`) reading
//! across rotations, and a restart after a crash right after a rotation.
//! Every test kills what it starts.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use castra::broker::buslog::read_records;
use castra::broker::host_client;
use common::broker::{Broker, cli, json_seqs, state_root as project};
use common::{KillOnDrop, free_port, ok_stdout};
use serde_json::{Value, json};

/// Publish `{"i": i, "pad": ...}` on `jobs` through the host socket under
/// `root`; returns the seq.
fn publish_job(root: &Path, i: u64) -> u64 {
    host_client::publish(
        &root.join("broker/broker.sock"),
        "jobs",
        json!({"i": i, "pad": "x".repeat(40)}),
        None,
        65536,
    )
    .unwrap()
}

#[test]
fn logs_rotate_by_size_and_tail_and_restart_read_across_rotation() {
    let root = project(&[]);
    let port = free_port();
    let mut broker = Broker::start(
        root.path(),
        port,
        &["--bus-log-max-bytes", "1000", "--bus-log-keep", "3"],
    );
    let cli = |args: &[&str]| cli(root.path(), args);
    // A follower started before anything is logged sees every record, across
    // rotations. Each publish waits until the follower printed the one before
    // (so it never falls more than the 3 kept generations behind, however
    // loaded the machine is); a rotation comes every few records.
    let mut follow =
        KillOnDrop::spawn(cli(&["bus", "tail", "-f", "--json"]).stdout(Stdio::piped()));
    let (ftx, frx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap();
            let _ = ftx.send(v["seq"].as_u64().unwrap());
        }
    });
    let publish = |i: u64| publish_job(root.path(), i);
    let mut followed = Vec::new();
    let acked: Vec<u64> = (0..60)
        .map(|i| {
            let seq = publish(i);
            followed.push(
                frx.recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|e| panic!("the follower did not print seq {seq}: {e}")),
            );
            seq
        })
        .collect();
    drop(follow);
    assert_eq!(acked, (1..=60).collect::<Vec<_>>());
    assert_eq!(followed, acked);
    let bus = root.path().join("logs/bus");
    for name in ["all.log", "host.log"] {
        for n in 1..=3 {
            let p = bus.join(format!("{name}.{n}"));
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len >= 1000, "{} is {len} bytes", p.display());
        }
        assert!(!bus.join(format!("{name}.4")).exists(), "keep 3");
    }

    // A plain tail reads the kept generations, oldest first, then the live file.
    let seqs = |out: std::process::Output| json_seqs(&out.stdout);
    let all = seqs(cli(&["bus", "tail", "--json"]).output().unwrap());
    assert!((24..60).contains(&all.len()), "{} records kept", all.len());
    assert_eq!(all, ((61 - all.len() as u64)..=60).collect::<Vec<_>>());
    let last = seqs(
        cli(&["bus", "tail", "--json", "-n", "25"])
            .output()
            .unwrap(),
    );
    assert_eq!(last, (36..=60).collect::<Vec<_>>());

    // Crash right after a rotation (live files empty): the sequence continues.
    broker.kill9();
    for name in ["all.log", "host.log"] {
        let _ = std::fs::remove_file(bus.join(format!("{name}.3")));
        let _ = std::fs::rename(bus.join(format!("{name}.2")), bus.join(format!("{name}.3")));
        let _ = std::fs::rename(bus.join(format!("{name}.1")), bus.join(format!("{name}.2")));
        let _ = std::fs::rename(bus.join(name), bus.join(format!("{name}.1")));
        std::fs::write(bus.join(name), "").unwrap();
    }
    broker.restart();
    assert_eq!(publish(60), 61);
    let last = seqs(cli(&["bus", "tail", "--json", "-n", "3"]).output().unwrap());
    assert_eq!(last, [59, 60, 61]);
}

#[test]
fn tail_since_a_time_a_duration_or_a_seq_across_rotation_and_with_follow() {
    let root = project(&[]);
    let port = free_port();
    let _broker = Broker::start(
        root.path(),
        port,
        &["--bus-log-max-bytes", "600", "--bus-log-keep", "20"],
    );
    let publish = |i: u64| publish_job(root.path(), i);
    let tail = |args: &[&str]| -> Vec<u64> {
        let out = cli(root.path(), &[&["bus", "tail", "--json"], args].concat())
            .output()
            .unwrap();
        json_seqs(ok_stdout(&out).as_bytes())
    };
    // Two batches 1.2 s apart, spread over several rotated files (the sleep
    // makes a gap in the records' timestamps; it waits for no state).
    for i in 1..=20 {
        assert_eq!(publish(i), i);
    }
    thread::sleep(Duration::from_millis(1200));
    for i in 21..=40 {
        assert_eq!(publish(i), i);
    }
    assert!(root.path().join("logs/bus/all.log.4").exists(), "rotated");
    let records: Vec<_> =
        castra::broker::buslog::generations(&root.path().join("logs/bus/all.log"))
            .iter()
            .flat_map(|p| read_records(p).unwrap())
            .collect();
    let ts = |seq: u64| records.iter().find(|r| r.seq == seq).unwrap().ts_ms;

    assert_eq!(tail(&["--since", "seq:15"]), (15..=40).collect::<Vec<_>>());
    assert_eq!(tail(&["--since", "seq:15", "-n", "3"]), [38, 39, 40]);
    // The log's own timestamp format is accepted as it is printed.
    let at21 = castra::broker::stamp::utc(ts(21));
    assert_eq!(tail(&["--since", &at21]), (21..=40).collect::<Vec<_>>());
    // A duration ago that lands in the 1.2 s gap between the batches, if
    // the tail has started within 600 ms; a try that took longer (a loaded
    // machine) proves nothing and is made again.
    let now_ms = || castra::broker::stamp::unix_ms();
    let got = (0..20)
        .find_map(|_| {
            let now = now_ms();
            let ago = format!("{}ms", now - ts(21) + 600);
            let got = tail(&["--since", &ago]);
            (now_ms() - now < 600).then_some(got)
        })
        .expect("no tail finished within 600 ms in 20 tries");
    assert_eq!(got, (21..=40).collect::<Vec<_>>());
    assert!(tail(&["--since", "2h"]).len() == 40);

    // With -f: the matching past, then what comes.
    let mut follow = KillOnDrop::spawn(
        cli(
            root.path(),
            &["bus", "tail", "-f", "--json", "--since", "seq:39"],
        )
        .stdout(Stdio::piped()),
    );
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut next = || -> u64 {
        serde_json::from_str::<Value>(&lines.next().unwrap().unwrap()).unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    assert_eq!((next(), next()), (39, 40));
    publish(41);
    publish(42);
    assert_eq!((next(), next()), (41, 42));
    drop(follow);

    // Bad input names the accepted forms.
    let out = cli(root.path(), &["bus", "tail", "--since", "yesterday"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("--since \"yesterday\"")
            && err.contains("an RFC 3339 time")
            && err.contains("seq:N"),
        "{err}"
    );
}

/// A follower that falls behind by more rotations than are kept (stopped
/// with SIGSTOP while 200 records rotate through 1 KB files, 2 kept) goes on
/// at the oldest kept record, prints nothing twice, and says on stderr how
/// many records it missed: printed + missed = everything published.
#[test]
fn a_follower_behind_by_more_rotations_than_kept_says_what_it_missed() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let root = project(&[]);
    let port = free_port();
    let _broker = Broker::start(
        root.path(),
        port,
        &["--bus-log-max-bytes", "1000", "--bus-log-keep", "2"],
    );
    let mut follow = KillOnDrop::spawn(
        cli(root.path(), &["bus", "tail", "-f", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let (ftx, frx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap();
            let _ = ftx.send(v["seq"].as_u64().unwrap());
        }
    });
    let (etx, erx) = std::sync::mpsc::channel();
    let stderr = follow.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = etx.send(line);
        }
    });
    let wait = Duration::from_secs(20);
    let first = publish_job(root.path(), 0);
    assert_eq!(frx.recv_timeout(wait).unwrap(), first);
    let pid = Pid::from_raw(follow.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let mut last = first;
    for i in 1..=200 {
        last = publish_job(root.path(), i);
    }
    kill(pid, Signal::SIGCONT).unwrap();
    let mut printed = vec![first];
    while *printed.last().unwrap() < last {
        printed.push(frx.recv_timeout(wait).expect("the follower stopped"));
    }
    assert!(
        printed.windows(2).all(|w| w[0] < w[1]),
        "printed twice or out of order: {printed:?}"
    );
    let said = erx
        .recv_timeout(wait)
        .expect("no word about the missed records");
    let missed: u64 = said
        .strip_prefix("castra bus tail: missed ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    println!("fell behind: {} printed, {said}", printed.len());
    assert!(missed > 0);
    assert_eq!(printed.len() as u64 + missed, last - first + 1, "{said}");
}
