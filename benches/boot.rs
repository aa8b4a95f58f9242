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
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::{
    Launch, await_hellos, castra, kill_by_pidfiles, launches, median, project, spawn_by_hand,
};

const PORT: u16 = 7793;

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

/// Raw QEMU: the argvs started by hand at once, until every guest's first
/// hello on a plain listener at the broker port.
fn by_hand(dir: &Path, ls: &[Launch]) -> Duration {
    let listener = TcpListener::bind(("127.0.0.1", PORT)).expect("bench port free");
    let t = spawn_by_hand(ls);
    await_hellos(&listener, ls.len());
    let took = t.elapsed();
    kill_by_pidfiles(dir, ls.len());
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
    let dir = project("boot", PORT, 1);
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
        raw1.push(by_hand(dir.path(), &ls));
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
        let dir = project("boot", PORT, n);
        let (mut c, mut h) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            c.push(apply_to_reachable(dir.path()).0);
            let ls = launches(dir.path(), n);
            castra(dir.path(), &["down"]);
            h.push(by_hand(dir.path(), &ls));
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
