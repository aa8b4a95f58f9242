//! Benchmark (run on demand: `cargo bench --bench apply`): whole-process medians,
//! castra against a hand-run baseline measured in the same run.
//!
//! - cold `castra apply` of 1 and of 3 VMs until QEMU reports running, against
//!   starting the very same QEMU command lines by hand (read back from each VM's
//!   launch record) and polling QMP the same way;
//! - `apply` start until every VM is `reachable` in `castra status`, against the
//!   same hand-run QEMUs until each guest agent's first TCP connect + hello on a
//!   plain listener at the broker port (raw boot-to-first-connect);
//! - a no-op `apply` and `status --json` with 3 VMs running (baseline: process
//!   start, `castra --version`), and `status --json` with the broker frozen.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use castra::qemu::qmp::Qmp;

mod common;
use common::{
    Launch, await_hellos, castra, kill_by_pidfiles, launches, median, project, spawn_by_hand,
};

const ROUNDS: usize = 5;
const PORT: u16 = 7791;

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn wait_running(sock: &Path) {
    loop {
        let running = Qmp::connect(sock, Duration::from_millis(500))
            .and_then(|mut q| q.query_status())
            .is_ok_and(|s| s.running);
        if running {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start the argvs by hand; returns (time to all running, time to every guest's first hello).
fn by_hand(ls: &[Launch]) -> (Duration, Duration) {
    let listener = TcpListener::bind(("127.0.0.1", PORT)).expect("bench port free");
    let t = spawn_by_hand(ls);
    for l in ls {
        wait_running(&l.qmp);
    }
    let running = t.elapsed();
    await_hellos(&listener, ls.len());
    (running, t.elapsed())
}

fn all_reachable(dir: &Path) -> bool {
    let out = castra(dir, &["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    s["vms"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["reachable"] == true)
}

fn row(case: &str, castra: Duration, base: Duration) {
    println!(
        "{case:<40} {:>8}ms {:>8}ms {:>+8}ms",
        castra.as_millis(),
        base.as_millis(),
        castra.as_millis() as i64 - base.as_millis() as i64
    );
}

fn main() {
    let out = Command::new(env!("CARGO_BIN_EXE_castra"))
        .args(["image", "build"])
        .output()
        .unwrap();
    assert!(out.status.success(), "castra image build failed");
    println!("castra apply benchmark: {ROUNDS} rounds each, medians, whole process, TCG");
    println!(
        "{:<40} {:>10} {:>10} {:>10}",
        "case", "castra", "baseline", "overhead"
    );
    for n in [1usize, 3] {
        let dir = project("bench", PORT, n);
        let (mut c_run, mut c_reach, mut h_run, mut h_conn) = (vec![], vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            let t = Instant::now();
            castra(dir.path(), &["apply"]);
            c_run.push(t.elapsed());
            while !all_reachable(dir.path()) {
                std::thread::sleep(Duration::from_millis(20));
            }
            c_reach.push(t.elapsed());
            let ls = launches(dir.path(), n);
            castra(dir.path(), &["down"]);
            let (run, conn) = by_hand(&ls);
            h_run.push(run);
            h_conn.push(conn);
            kill_by_pidfiles(dir.path(), n);
        }
        row(
            &format!("cold apply, {n} VM(s), to QEMU running"),
            median(c_run),
            median(h_run),
        );
        row(
            &format!("apply to all reachable, {n} VM(s)"),
            median(c_reach),
            median(h_conn),
        );
        if n == 3 {
            castra(dir.path(), &["apply"]);
            let bare = median(
                (0..ROUNDS)
                    .map(|_| {
                        timed(|| {
                            castra(dir.path(), &["--version"]);
                        })
                    })
                    .collect(),
            );
            let noop = median(
                (0..ROUNDS)
                    .map(|_| {
                        timed(|| {
                            castra(dir.path(), &["apply"]);
                        })
                    })
                    .collect(),
            );
            row("no-op apply, 3 VMs", noop, bare);
            let status = median(
                (0..20)
                    .map(|_| {
                        timed(|| {
                            castra(dir.path(), &["status", "--json"]);
                        })
                    })
                    .collect(),
            );
            row("status --json, 3 VMs", status, bare);
            let s: serde_json::Value =
                serde_json::from_slice(&castra(dir.path(), &["status", "--json"]).stdout).unwrap();
            let broker = s["broker"]["pid"].as_i64().unwrap().to_string();
            Command::new("kill")
                .args(["-STOP", &broker])
                .status()
                .unwrap();
            let frozen = median(
                (0..20)
                    .map(|_| {
                        timed(|| {
                            castra(dir.path(), &["status", "--json"]);
                        })
                    })
                    .collect(),
            );
            Command::new("kill")
                .args(["-CONT", &broker])
                .status()
                .unwrap();
            row("status --json, 3 VMs, broker frozen", frozen, bare);
        }
        castra(dir.path(), &["down"]);
    }
    println!("baselines: the same QEMU argv from launch.json started by hand (QMP polled until");
    println!("running; a plain listener on the broker port for the guests' first hello);");
    println!("for no-op/status, process start alone (`castra --version`).");
}
