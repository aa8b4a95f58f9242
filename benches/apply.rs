//! Benchmark (run on demand: `cargo bench --bench apply`): whole-process medians of
//! - cold `castra apply` of 1 and of 3 VMs, until QEMU reports running,
//!   against the baseline of starting the very same QEMU command lines by hand
//!   (read back from each VM's launch record) and polling QMP the same way;
//! - a no-op `castra apply` with 3 VMs running;
//! - `castra status --json` with 3 VMs running.
//!
//! Prints a table; the overhead column is castra minus the hand-run baseline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use castra::qemu::qmp::Qmp;

const ROUNDS: usize = 5;

fn castra(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_castra"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run castra");
    assert!(
        out.status.success(),
        "castra {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn project(n: usize) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("cb")
        .tempdir_in("/tmp")
        .unwrap();
    let mut toml = String::from("[project]\nname = \"bench\"\n");
    for i in 0..n {
        toml.push_str(&format!("[[vms]]\nname = \"vm{i}\"\nmemory = \"128M\"\n"));
    }
    std::fs::write(dir.path().join("castra.toml"), toml).unwrap();
    dir
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// Start each argv by hand (QEMU daemonizes) and wait until QMP says running.
fn by_hand(argvs: &[(Vec<String>, PathBuf)]) -> Duration {
    let t = Instant::now();
    let children: Vec<_> = argvs
        .iter()
        .map(|(argv, _)| {
            Command::new(&argv[0])
                .args(&argv[1..])
                .spawn()
                .expect("spawn qemu")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "hand-started qemu failed");
    }
    for (_, sock) in argvs {
        loop {
            let running = Qmp::connect(sock, Duration::from_millis(500))
                .and_then(|mut q| q.query_status())
                .is_ok_and(|s| s.running);
            if running {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    t.elapsed()
}

fn launch_argvs(dir: &Path, n: usize) -> Vec<(Vec<String>, PathBuf)> {
    (0..n)
        .map(|i| {
            let rec: serde_json::Value = serde_json::from_slice(
                &std::fs::read(dir.join(format!(".castra/vms/vm{i}/launch.json"))).unwrap(),
            )
            .unwrap();
            let argv = rec["argv"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect();
            (argv, PathBuf::from(rec["qmp_socket"].as_str().unwrap()))
        })
        .collect()
}

fn kill_by_pidfiles(dir: &Path, n: usize) {
    for i in 0..n {
        let pidfile = dir.join(format!(".castra/vms/vm{i}/qemu.pid"));
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let _ = std::fs::remove_file(&pidfile);
        let _ = std::fs::remove_file(dir.join(format!(".castra/vms/vm{i}/qmp.sock")));
    }
    std::thread::sleep(Duration::from_millis(200));
}

fn main() {
    let out = Command::new(env!("CARGO_BIN_EXE_castra"))
        .args(["image", "build"])
        .output()
        .unwrap();
    assert!(out.status.success(), "castra image build failed");
    println!("castra apply benchmark: {ROUNDS} rounds each, medians, whole process");
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "case", "castra", "by hand", "overhead"
    );
    for n in [1usize, 3] {
        let dir = project(n);
        let mut castra_t = Vec::new();
        let mut hand_t = Vec::new();
        for _ in 0..ROUNDS {
            castra_t.push(timed(|| {
                castra(dir.path(), &["apply"]);
            }));
            let argvs = launch_argvs(dir.path(), n);
            castra(dir.path(), &["down"]);
            hand_t.push(by_hand(&argvs));
            kill_by_pidfiles(dir.path(), n);
        }
        let (c, h) = (median(castra_t), median(hand_t));
        println!(
            "{:<34} {:>8}ms {:>8}ms {:>8}ms",
            format!("cold apply, {n} VM(s), to running"),
            c.as_millis(),
            h.as_millis(),
            c.as_millis() as i64 - h.as_millis() as i64
        );
        if n == 3 {
            castra(dir.path(), &["apply"]);
            let noop = median(
                (0..ROUNDS)
                    .map(|_| {
                        timed(|| {
                            castra(dir.path(), &["apply"]);
                        })
                    })
                    .collect(),
            );
            // Baseline for no-op: the process start alone (`castra --version`).
            let bare = median(
                (0..ROUNDS)
                    .map(|_| {
                        timed(|| {
                            castra(dir.path(), &["--version"]);
                        })
                    })
                    .collect(),
            );
            println!(
                "{:<34} {:>8}ms {:>8}ms {:>8}ms",
                "no-op apply, 3 VMs",
                noop.as_millis(),
                bare.as_millis(),
                noop.as_millis() as i64 - bare.as_millis() as i64
            );
            let status = median(
                (0..20)
                    .map(|_| {
                        timed(|| {
                            castra(dir.path(), &["status", "--json"]);
                        })
                    })
                    .collect(),
            );
            println!(
                "{:<34} {:>8}ms {:>8}ms {:>8}ms",
                "status --json, 3 VMs",
                status.as_millis(),
                bare.as_millis(),
                status.as_millis() as i64 - bare.as_millis() as i64
            );
        }
        castra(dir.path(), &["down"]);
    }
    println!(
        "(by hand = same QEMU argv from launch.json, QMP polled until running; for no-op/status the baseline is `castra --version`)"
    );
}
