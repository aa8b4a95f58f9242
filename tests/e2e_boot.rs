//! End to end: the default image boots the fast kernel (built from
//! linux-source-6.1 by `castra image build`), its agent reaches the real
//! broker, and `castra status --json` shows a complete, ordered boot
//! timeline for each start (a restart gets the new launch's timeline, never
//! the old one's). The agent's guest-side line is in `castra logs`. One VM,
//! booted twice. Timings are printed, never compared (that is benches/boot.rs).

mod common;

use std::time::Duration;

use common::{Project, stderr, stdout, vm, wait_until};

/// A bound on waits that only catches a hang (TCG guests on a loaded host).
const HANG: Duration = Duration::from_secs(90);

/// Every stage a default guest's start must show, in this order.
const STAGES: &[&str] = &[
    "qemu_started",
    "kernel",
    "init",
    "net",
    "agent",
    "hello",
    "handshake",
];

fn config(port: u16, memory: &str) -> String {
    format!(
        "[project]\nname = \"boot\"\n[broker]\nport = {port}\n[[vms]]\nname = \"fast\"\nmemory = \"{memory}\"\n"
    )
}

/// Waits until the VM is reachable with a timeline; returns the timeline.
fn timeline(p: &Project) -> Vec<serde_json::Value> {
    let s = wait_until("reachable with a boot timeline", HANG, || {
        let s = p.json(&["status", "--json"]);
        let v = vm(&s, "fast");
        if v["reachable"] == true && v["boot_timeline"].is_array() {
            Ok(s)
        } else {
            Err(s)
        }
    });
    vm(&s, "fast")["boot_timeline"].as_array().unwrap().clone()
}

fn launched_at(p: &Project) -> u64 {
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p.path().join(".castra/vms/fast/launch.json")).unwrap(),
    )
    .unwrap();
    rec["launched_at_ms"].as_u64().unwrap()
}

fn check(t: &[serde_json::Value], launched_ms: u64) {
    let names: Vec<&str> = t.iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(names, STAGES, "{t:?}");
    assert_eq!(t[0]["at_ms"].as_u64(), Some(launched_ms), "{t:?}");
    let at: Vec<u64> = t.iter().map(|s| s["at_ms"].as_u64().unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "not in order: {t:?}");
    for s in t {
        let since = s["since_start_ms"].as_i64().unwrap();
        assert_eq!(since, s["at_ms"].as_i64().unwrap() - launched_ms as i64);
    }
    let shown: Vec<String> = t
        .iter()
        .map(|s| {
            format!(
                "{} +{}ms",
                s["stage"].as_str().unwrap(),
                s["since_start_ms"]
            )
        })
        .collect();
    println!("measured boot timeline: {}", shown.join(", "));
}

#[test]
fn fast_kernel_boots_to_the_broker_with_a_timeline_per_start() {
    common::ensure_image();
    let port = common::free_port();
    let p = Project::new(&config(port, "128M"));

    // The image is the fast kernel: its id says so, and it carries no modules.
    let image = p.json(&["image", "path", "--json"]);
    let id = image["id"].as_str().unwrap();
    assert!(
        id.starts_with("fast-"),
        "default image is not the fast kernel: {image}"
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            std::path::Path::new(image["kernel"].as_str().unwrap()).with_file_name("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["kernel"], "fast", "{manifest}");
    assert_eq!(manifest["modules"], serde_json::json!([]), "{manifest}");

    // 1. First start: reachable through the real broker, the whole timeline, in order.
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let first_launch = launched_at(&p);
    let first = timeline(&p);
    check(&first, first_launch);

    // The guest side of it is on the console, so `castra logs` shows it.
    let logs = wait_until("the agent's timeline line in castra logs", HANG, || {
        let out = p.castra(&["logs", "fast"]);
        let text = stdout(&out);
        if text.contains("castra-agent: boot timeline (guest uptime): kernel 0 ms, init ") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    assert!(logs.contains("castra-guest: ready vm=fast"), "{logs}");

    // 2. A restart: the timeline is the new launch's, not the old one carried over.
    p.write_config(&config(port, "160M"));
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let second_launch = launched_at(&p);
    assert!(second_launch > first_launch);
    let second = wait_until("the restarted VM's own timeline", HANG, || {
        let t = timeline(&p);
        if t[0]["at_ms"].as_u64() == Some(second_launch) {
            Ok(t)
        } else {
            Err(t)
        }
    });
    check(&second, second_launch);
    let handshake = |t: &[serde_json::Value]| t.last().unwrap()["at_ms"].as_u64().unwrap();
    assert!(handshake(&second) > handshake(&first));

    let out = p.castra(&["down"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
