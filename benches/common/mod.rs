//! Shared by the benches: the real `castra` binary in a temp project, the
//! medians and percentiles they print, and the raw-QEMU baseline (the argvs
//! castra recorded, started by hand, until every guest's first hello on a
//! plain listener at the broker port).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `castra ARGS` in `dir`; panics with its output unless it succeeded.
pub fn castra(dir: &Path, args: &[&str]) -> Output {
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

/// A project `name` on broker `port` with `n` default-image VMs `vm0..`.
pub fn project(name: &str, port: u16, n: usize) -> tempfile::TempDir {
    // Short paths: QMP socket paths must fit a Unix socket address.
    let dir = tempfile::Builder::new()
        .prefix("cb")
        .tempdir_in("/tmp")
        .unwrap();
    let mut toml = format!("[project]\nname = \"{name}\"\n[broker]\nport = {port}\n");
    for i in 0..n {
        toml.push_str(&format!("[[vms]]\nname = \"vm{i}\"\nmemory = \"128M\"\n"));
    }
    std::fs::write(dir.path().join("castra.toml"), toml).unwrap();
    dir
}

pub fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

pub fn pct(xs: &mut [Duration], p: f64) -> Duration {
    xs.sort();
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

/// One VM's launch as castra recorded it.
pub struct Launch {
    pub argv: Vec<String>,
    pub qmp: PathBuf,
    pub token: PathBuf,
}

/// The recorded launches of `vm0..vm{n-1}` in the project at `dir`.
pub fn launches(dir: &Path, n: usize) -> Vec<Launch> {
    (0..n)
        .map(|i| {
            let vm = dir.join(format!(".castra/vms/vm{i}"));
            let rec: serde_json::Value =
                serde_json::from_slice(&std::fs::read(vm.join("launch.json")).unwrap()).unwrap();
            Launch {
                argv: rec["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect(),
                qmp: PathBuf::from(rec["qmp_socket"].as_str().unwrap()),
                token: vm.join("token"),
            }
        })
        .collect()
}

/// Writes each token, starts every argv at once and waits until all have
/// daemonized; returns when they were started.
pub fn spawn_by_hand(ls: &[Launch]) -> Instant {
    for l in ls {
        std::fs::write(&l.token, "bench").unwrap();
    }
    let t = Instant::now();
    let children: Vec<_> = ls
        .iter()
        .map(|l| {
            Command::new(&l.argv[0])
                .args(&l.argv[1..])
                .spawn()
                .expect("spawn qemu")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "hand-started qemu failed");
    }
    t
}

/// Accepts on `listener` until `n` different guests sent their hello.
pub fn await_hellos(listener: &TcpListener, n: usize) {
    let mut seen = BTreeSet::new();
    while seen.len() < n {
        let (mut conn, _) = listener.accept().unwrap();
        let _ = conn.write_all(b"castra-broker 1 ready\n");
        let mut hello = String::new();
        let _ = BufReader::new(&conn).read_line(&mut hello);
        if let Some(vm) = hello.split_whitespace().nth(1) {
            seen.insert(vm.to_owned());
        }
    }
}

/// Kills the QEMUs of `vm0..vm{n-1}` by their pidfiles and removes their
/// runtime files, so castra starts them afresh.
pub fn kill_by_pidfiles(dir: &Path, n: usize) {
    for i in 0..n {
        let vm = dir.join(format!(".castra/vms/vm{i}"));
        if let Ok(pid) = std::fs::read_to_string(vm.join("qemu.pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        for f in ["qemu.pid", "qmp.sock", "token"] {
            let _ = std::fs::remove_file(vm.join(f));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
}
