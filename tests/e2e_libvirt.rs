//! End to end on real libvirt daemons (docs/HOSTS.md): the local libvirtd
//! (`qemu:///system`, host `here`) and a second one in a network namespace
//! reached over `qemu+tcp` (host `b`), both started by this test with
//! `scripts/libvirt-host.sh` and stopped by it (by pid) however it ends.
//!
//! One guest per host, booted once and reused: apply -> status with hosts ->
//! the guest on `here` reachable on the bus -> drift on b restarts only b's VM
//! -> b's libvirtd stopped: status answers at once, b's VM `unknown`, plan
//! leaves it out and still plans the rest -> b back, apply converges -> down
//! by ACPI through libvirt. A domain castra did not make, with the project's
//! own prefix, is never touched.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Project, stderr, stdout, vm, wait_until};

/// A bound on waits that only catches a hang (TCG guests, a loaded host).
const HANG: Duration = Duration::from_secs(240);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/libvirt-host.sh")
}

/// One libvirt daemon this test started; stopped (by its pidfiles) on drop.
struct LibvirtHost {
    dir: PathBuf,
    uri: String,
}

impl LibvirtHost {
    fn start(args: &[&str], dir: &Path) -> LibvirtHost {
        let _ = std::fs::remove_dir_all(dir);
        let out = Command::new(script())
            .args(args)
            .arg(dir)
            .output()
            .expect("run scripts/libvirt-host.sh");
        let host = LibvirtHost {
            dir: dir.to_owned(),
            uri: stdout(&out).trim().to_owned(),
        };
        assert!(
            out.status.success(),
            "libvirt-host.sh {args:?} failed (needs root and scripts/setup-host.sh):\n{}",
            stderr(&out)
        );
        host
    }

    fn daemon(&self, what: &str) {
        let out = Command::new(script())
            .arg(what)
            .arg(&self.dir)
            .output()
            .expect("run scripts/libvirt-host.sh");
        assert!(out.status.success(), "{what}: {}", stderr(&out));
    }

    fn virsh(&self, args: &[&str]) -> String {
        let out = Command::new("virsh")
            .args(["-q", "-c", &self.uri])
            .args(args)
            .output()
            .expect("run virsh");
        assert!(out.status.success(), "virsh {args:?}: {}", stderr(&out));
        stdout(&out)
    }
}

/// The test's directory for its daemons, removed after them.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for LibvirtHost {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).output();
    }
}

fn config(port: u16, b_uri: &str, far_mem: &str) -> String {
    format!(
        r#"
[project]
name = "lv"

[broker]
port = {port}

[lifecycle]
powerdown_wait = "60s"

[hosts.here]
uri = "qemu:///system"

[hosts.b]
uri = "{b_uri}"

[[vms]]
name = "near"
host = "here"
memory = "192M"

[[vms]]
name = "far"
host = "b"
memory = "{far_mem}"
"#
    )
}

/// The project's domain prefix, as castra names it (`castra-lv-<id>-`).
fn prefix(p: &Project) -> String {
    let root = p.path().join(".castra");
    castra::libvirt::ProjectNames::new("lv", &root.to_string_lossy())
        .prefix()
        .to_owned()
}

#[test]
fn vms_on_two_libvirt_hosts_converge_drift_survive_an_unreachable_host_and_go_down() {
    common::ensure_image();
    let base = std::env::temp_dir().join(format!("castra-lv-{}", std::process::id()));
    let _base = RemoveDir(base.clone());
    let here = LibvirtHost::start(&["start-local"], &base.join("here"));
    let b = LibvirtHost::start(&["start", "b", "61"], &base.join("b"));
    assert_eq!(here.uri, "qemu:///system");
    let port = common::free_port();
    let p = Project::new(&config(port, &b.uri, "192M"));

    // A domain with the project's own prefix that castra did not make: it is
    // defined (not started) on b and must survive everything below.
    let foreign = format!("{}foreign", prefix(&p));
    let xml = p.path().join("foreign.xml");
    std::fs::write(
        &xml,
        format!(
            "<domain type='qemu'><name>{foreign}</name><memory unit='MiB'>64</memory><os><type arch='x86_64' machine='q35'>hvm</type></os></domain>"
        ),
    )
    .unwrap();
    b.virsh(&["define", &xml.to_string_lossy()]);

    let plan = p.castra(&["plan"]);
    let text = stdout(&plan);
    assert!(text.contains("+ start near on here"), "{text}");
    assert!(text.contains("+ start far on b"), "{text}");
    assert!(!text.contains("foreign"), "{text}");

    let t0 = Instant::now();
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    println!("apply of two VMs on two libvirt hosts: {:?}", t0.elapsed());

    let s = p.json(&["status", "--json"]);
    assert_eq!(vm(&s, "near")["host"], "here", "{s}");
    assert_eq!(vm(&s, "far")["host"], "b", "{s}");
    assert_eq!(vm(&s, "far")["state"], "running", "{s}");
    assert_eq!(vm(&s, "near")["pid"], serde_json::Value::Null, "{s}");

    // The guest on the local libvirtd proves itself to the broker with its
    // fw_cfg token (a 0600 volume on the host).
    wait_until("near reachable through the broker", HANG, || {
        let s = p.json(&["status", "--json"]);
        if vm(&s, "near")["reachable"] == true {
            Ok(())
        } else {
            Err(vm(&s, "near").clone())
        }
    });
    let near_launch = vm(&p.json(&["status", "--json"]), "near")["uptime_s"].clone();
    // The token never appears in a domain XML.
    let token = std::fs::read_to_string(p.path().join(".castra/vms/near/token")).unwrap();
    let dumped = here.virsh(&["dumpxml", &format!("{}near", prefix(&p))]);
    assert!(!dumped.contains(token.trim()), "token in the domain XML");
    assert!(dumped.contains("opt/castra/token"), "{dumped}");

    // Drift on b: only far restarts.
    p.write_config(&config(port, &b.uri, "256M"));
    let plan = stdout(&p.castra(&["plan"]));
    assert!(
        plan.contains("~ restart far on b (memory 192M -> 256M)"),
        "{plan}"
    );
    assert!(!plan.contains("near"), "{plan}");
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let s = p.json(&["status", "--json"]);
    assert_eq!(vm(&s, "far")["memory_bytes"], 256u64 << 20, "{s}");
    let near_after = vm(&s, "near")["uptime_s"].as_u64().unwrap();
    assert!(
        near_after >= near_launch.as_u64().unwrap(),
        "near was restarted: {s}"
    );

    // b stops answering: status stays instant, b's VM is unknown with the
    // reason, near is untouched; plan leaves far out and exits 1.
    b.daemon("stop-daemon");
    let s = wait_until("far unknown once b stops answering", HANG, || {
        let s = p.json(&["status", "--json"]);
        if vm(&s, "far")["state"] == "unknown" {
            Ok(s)
        } else {
            Err(vm(&s, "far").clone())
        }
    });
    let why = vm(&s, "far")["reasons"][0].as_str().unwrap().to_owned();
    assert!(why.starts_with("host b unreachable (qemu+tcp://"), "{why}");
    assert_eq!(vm(&s, "near")["state"], "running", "{s}");
    let t = Instant::now();
    let _ = p.json(&["status", "--json"]);
    println!("status with host b unreachable: {:?}", t.elapsed());
    let plan = p.castra(&["plan"]);
    assert_eq!(plan.status.code(), Some(1), "{}", stderr(&plan));
    assert!(
        stdout(&plan).contains("! far not planned: host b unreachable"),
        "{}",
        stdout(&plan)
    );
    assert!(
        stdout(&plan).contains("no changes: 1 VM(s) already as declared"),
        "{}",
        stdout(&plan)
    );

    // down cannot stop what an unreachable host runs: it says so and fails.
    let out = p.castra(&["down", "far"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out) + &stderr(&out);
    assert!(text.contains("not stopped: host b unreachable"), "{text}");
    let table = stdout(&p.castra(&["status"]));
    assert!(table.contains("HOST"), "{table}");

    // b answers again: apply converges (far kept running under libvirt).
    b.daemon("start-daemon");
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let s = p.json(&["status", "--json"]);
    assert_eq!(vm(&s, "far")["state"], "running", "{s}");

    // down: ACPI through libvirt, nothing of castra's left on the hosts.
    let out = p.castra(&["down"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out) + &stderr(&out);
    assert!(text.contains("far: stopped by ACPI powerdown"), "{text}");
    assert!(text.contains("near: stopped by ACPI powerdown"), "{text}");
    assert_eq!(here.virsh(&["list", "--name"]).trim(), "");
    let left = b.virsh(&["list", "--all", "--name"]);
    assert_eq!(left.trim(), foreign, "only the foreign domain is left on b");
    let vols = b.virsh(&["vol-list", "castra"]);
    assert!(!vols.contains("-token"), "{vols}");
    assert!(
        vols.contains("img-"),
        "images stay cached on the host: {vols}"
    );
}
