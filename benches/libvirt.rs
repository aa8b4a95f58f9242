//! Benchmark (run on demand, as root: `cargo bench --bench libvirt`): the libvirt
//! backend against direct QEMU on the same machine, side by side in one run.
//!
//! - `castra apply` until the VM is `reachable` in status: one VM on the local
//!   libvirtd (`qemu:///system`) against one direct-QEMU VM, alternated, ROUNDS
//!   each (the first libvirt round includes the image upload and is shown apart);
//! - `castra status --json` of a project with three hosts of which one does not
//!   answer (its libvirtd stopped), against a project with one local VM.
//!
//! Starts its own daemons with `scripts/libvirt-host.sh` (the local one and two
//! in network namespaces) and stops them, by pid, when it ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/libvirt-host.sh")
}

struct Daemon(PathBuf);

impl Daemon {
    fn start(args: &[&str], dir: &Path) -> Daemon {
        let out = Command::new(script()).args(args).arg(dir).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Daemon(dir.to_owned())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.0).output();
    }
}

fn castra(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_castra"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run castra");
    assert!(
        out.status.success() || args[0] == "plan",
        "castra {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn project(toml: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("cl")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::write(dir.path().join("castra.toml"), toml).unwrap();
    dir
}

fn reachable(dir: &Path, vm: &str) -> bool {
    let out = castra(dir, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["vms"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == vm && x["reachable"] == true)
}

/// apply, then poll status until the VM is reachable; then down.
fn apply_to_reachable(dir: &Path, vm: &str) -> Duration {
    let t = Instant::now();
    castra(dir, &["apply"]);
    while !reachable(dir, vm) {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "{vm} never reachable"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = t.elapsed();
    castra(dir, &["down"]);
    took
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn main() {
    let out = Command::new(env!("CARGO_BIN_EXE_castra"))
        .args(["image", "build"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let base = tempfile::Builder::new()
        .prefix("cl-hosts")
        .tempdir_in("/tmp")
        .unwrap();
    let _here = Daemon::start(&["start-local"], &base.path().join("here"));
    let _b = Daemon::start(&["start", "bb", "71"], &base.path().join("b"));
    let c = Daemon::start(&["start", "bc", "72"], &base.path().join("c"));

    let direct = project(
        "[project]\nname = \"bd\"\n[broker]\nport = 7793\n[[vms]]\nname = \"d\"\naccel = \"tcg\"\n",
    );
    let hosts = "[hosts.here]\nuri = \"qemu:///system\"\n[hosts.b]\nuri = \"qemu+tcp://10.77.71.2/system\"\n[hosts.c]\nuri = \"qemu+tcp://10.77.72.2/system\"\n";
    let lv = project(&format!(
        "[project]\nname = \"bl\"\n[broker]\nport = 7794\n{hosts}[[vms]]\nname = \"l\"\nhost = \"here\"\n[[vms]]\nname = \"onb\"\nhost = \"b\"\n[[vms]]\nname = \"onc\"\nhost = \"c\"\n"
    ));
    // The boot rounds use a project with the one VM on here.
    let lv_one = project(&format!(
        "[project]\nname = \"bo\"\n[broker]\nport = 7795\n{hosts}[[vms]]\nname = \"l\"\nhost = \"here\"\n"
    ));

    let first = apply_to_reachable(lv_one.path(), "l");
    println!("libvirt apply -> reachable, first (image upload): {first:?}");
    let (mut d, mut l) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        d.push(apply_to_reachable(direct.path(), "d"));
        l.push(apply_to_reachable(lv_one.path(), "l"));
    }
    let (dm, lm) = (median(d.clone()), median(l.clone()));
    println!("apply -> reachable, median of {ROUNDS}: direct {dm:?} {d:?}, libvirt {lm:?} {l:?}");
    println!(
        "ratio libvirt/direct: {:.2} (goal <= 1.2)",
        lm.as_secs_f64() / dm.as_secs_f64()
    );

    // Status with three hosts, c not answering, one VM running on here.
    castra(direct.path(), &["apply"]);
    castra(lv.path(), &["apply"]);
    let _ = Command::new(script()).arg("stop-daemon").arg(&c.0).output();
    let t = Instant::now();
    loop {
        let out = castra(lv.path(), &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let onc = v["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "onc");
        if onc.is_some_and(|x| x["state"] == "unknown") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "c never unknown: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (mut sd, mut sl) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = Instant::now();
        castra(direct.path(), &["status", "--json"]);
        sd.push(t.elapsed());
        let t = Instant::now();
        castra(lv.path(), &["status", "--json"]);
        sl.push(t.elapsed());
    }
    println!(
        "status --json, median of 20: local-only project {:?}, 3 hosts (1 unreachable) {:?} (goal <= 20 ms)",
        median(sd),
        median(sl)
    );
    castra(direct.path(), &["down"]);
    // down fails for a VM whose host does not answer: bring c back first.
    let _ = Command::new(script())
        .arg("start-daemon")
        .arg(&c.0)
        .output();
    castra(lv.path(), &["down"]);
}
