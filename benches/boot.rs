//! Benchmark (on demand: `cargo bench --bench boot`; docs/BOOT.md has the
//! tables): `castra apply` until every VM is `reachable` in `castra status`,
//! side by side in one run:
//!
//! - 1 VM with the fast kernel, with the stock Debian kernel (`--kernel
//!   debian`), and raw QEMU: the fast image's own QEMU argv (read back from
//!   launch.json) started by hand until the guest agent's first hello reaches
//!   a plain listener on the broker port;
//! - 1, 4 and 8 VMs with the fast kernel in one apply, against the same
//!   argvs started by hand at once;
//! - the median boot timeline of the 1-VM fast rounds (where the time goes).
//!
//! The accelerator is what castra's `auto` picks (KVM when /dev/kvm opens and
//! works, else TCG): the table names it, so the same command gives the KVM
//! table on a machine where KVM works. `CASTRA_BENCH_ROUNDS` (default 5).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PORT: u16 = 7793;

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
    let mut toml = format!("[project]\nname = \"boot\"\n[broker]\nport = {PORT}\n");
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

fn status(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&castra(dir, &["status", "--json"]).stdout).unwrap()
}

/// `apply`, then poll status until every VM is reachable: the elapsed time
/// and the last status.
fn apply_to_reachable(dir: &Path) -> (Duration, serde_json::Value) {
    let t = Instant::now();
    castra(dir, &["apply"]);
    loop {
        let s = status(dir);
        let vms = s["vms"].as_array().unwrap();
        if vms.iter().all(|v| v["reachable"] == true) {
            return (t.elapsed(), s);
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "never reachable: {s}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Launch {
    argv: Vec<String>,
    token: PathBuf,
    pidfile: PathBuf,
}

fn launches(dir: &Path, n: usize) -> Vec<Launch> {
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
                token: vm.join("token"),
                pidfile: vm.join("qemu.pid"),
            }
        })
        .collect()
}

/// Raw QEMU: the argvs started by hand at once, until every guest's first
/// hello on a plain listener at the broker port.
fn by_hand(ls: &[Launch]) -> Duration {
    let listener = TcpListener::bind(("127.0.0.1", PORT)).expect("bench port free");
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
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < ls.len() {
        let (mut conn, _) = listener.accept().unwrap();
        let _ = conn.write_all(b"castra-broker 1 ready\n");
        let mut hello = String::new();
        let _ = BufReader::new(&conn).read_line(&mut hello);
        if let Some(vm) = hello.split_whitespace().nth(1) {
            seen.insert(vm.to_owned());
        }
    }
    let took = t.elapsed();
    for l in ls {
        if let Ok(pid) = std::fs::read_to_string(&l.pidfile) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let _ = std::fs::remove_file(&l.pidfile);
    }
    std::thread::sleep(Duration::from_millis(300));
    took
}

fn build_image(kernel: &str) -> String {
    let out = castra(
        Path::new("/tmp"),
        &["image", "build", "--kernel", kernel, "--json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn main() {
    let rounds: usize = std::env::var("CASTRA_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let debian = build_image("debian");
    let fast = build_image("fast"); // last: the fast image stays current
    println!("castra boot benchmark: {rounds} rounds each, medians, apply -> all reachable");
    println!("images: fast {fast}, stock {debian}");

    // 1 VM: fast vs stock vs raw QEMU. Stock rounds first (its image is current
    // only while they run), then fast and raw QEMU interleaved.
    let dir = project(1);
    build_image("debian");
    let mut stock = Vec::new();
    for _ in 0..rounds {
        stock.push(apply_to_reachable(dir.path()).0);
        castra(dir.path(), &["down"]);
    }
    build_image("fast");
    let (mut fast1, mut raw1) = (Vec::new(), Vec::new());
    let mut stages: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut accel = String::new();
    for _ in 0..rounds {
        let (took, s) = apply_to_reachable(dir.path());
        fast1.push(took);
        accel = s["vms"][0]["accel"].as_str().unwrap_or("?").to_owned();
        // The timeline lands with the handshake, which reachable already saw.
        let s = status(dir.path());
        for st in s["vms"][0]["boot_timeline"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = st["stage"].as_str().unwrap().to_owned();
            if !order.contains(&name) {
                order.push(name.clone());
            }
            let since = st["since_start_ms"].as_i64().unwrap().max(0) as u64;
            stages
                .entry(name)
                .or_default()
                .push(Duration::from_millis(since));
        }
        let ls = launches(dir.path(), 1);
        castra(dir.path(), &["down"]);
        raw1.push(by_hand(&ls));
    }
    let (f, s, r) = (median(fast1), median(stock), median(raw1));
    println!("accelerator: {accel}");
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>9}",
        "1 VM", "fast", "stock", "raw QEMU", "overhead"
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>8.2}x",
        "apply -> reachable",
        ms(f),
        ms(s),
        ms(r),
        f.as_secs_f64() / r.as_secs_f64()
    );
    println!("boot timeline, fast kernel (median ms since QEMU was spawned):");
    for name in &order {
        let xs = stages.remove(name).unwrap_or_default();
        println!("  {name:<14} {:>6}", median(xs).as_millis());
    }

    // N VMs in one apply, fast kernel, against the same argvs by hand.
    println!(
        "{:<34} {:>10} {:>10} {:>9}",
        "N VMs in one apply", "castra", "raw QEMU", "overhead"
    );
    for n in [1usize, 4, 8] {
        let dir = project(n);
        let (mut c, mut h) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            c.push(apply_to_reachable(dir.path()).0);
            let ls = launches(dir.path(), n);
            castra(dir.path(), &["down"]);
            h.push(by_hand(&ls));
        }
        let (c, h) = (median(c), median(h));
        println!(
            "{:<34} {:>10} {:>10} {:>8.2}x",
            format!("{n} VM(s) -> all reachable"),
            ms(c),
            ms(h),
            c.as_secs_f64() / h.as_secs_f64()
        );
    }
    println!("raw QEMU: the same argv from launch.json started by hand, until the guest");
    println!("agent's first hello on a plain listener at the broker port (no broker, no status).");
}
