//! End to end with real QEMU guests from the default image, under TCG:
//! apply -> no-op -> drift -> kill -9 -> watch -> reachability through the
//! broker (frozen, killed, healed) -> frozen QEMU -> down -> clean. One pair of
//! guests, booted once and reused across every check (CI time matters).
//!
//! Needs the default image; the test builds it first (`castra image build`,
//! a no-op when cached).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{KillOnDrop, LineFeed, Project, signal, stderr, stdout, vm, wait_dead, wait_until};
use nix::sys::signal::Signal;

/// A bound on waits that only catches a hang (TCG guests on a loaded host).
const HANG: Duration = Duration::from_secs(60);

fn config(port: u16, a_mem: &str) -> String {
    format!(
        r#"
[project]
name = "e2e"

[broker]
port = {port}

[[vms]]
name = "a"
memory = "{a_mem}"

[[vms]]
name = "b"
memory = "128M"
"#
    )
}

/// The e2e config (a at 192M) with a bootstrap line per VM.
fn config_boot(port: u16, a_boot: &str, b_boot: &str) -> String {
    config(port, "192M")
        .replace(
            "memory = \"192M\"\n",
            &format!("memory = \"192M\"\nbootstrap = {a_boot}\n"),
        )
        .replace(
            "memory = \"128M\"\n",
            &format!("memory = \"128M\"\nbootstrap = {b_boot}\n"),
        )
}

/// The `> bootstrap` lines of a printed plan.
fn boot_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("> ")).collect()
}

fn run_id(p: &Project, name: &str) -> String {
    let s = p.json(&["status", "--json"]);
    vm(&s, name)["bootstrap"]["run"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} has no bootstrap run: {s}"))
        .to_owned()
}

/// Bootstrap over the bus on the two running guests: a script that writes a
/// marker and publishes it, a failing command, secrets masked, `auto` not
/// rerunning, a changed plan rerunning. Leaves the bootstraps configured.
fn bootstrap_round(p: &Project, port: u16) {
    let script = |greeting: &str| {
        format!(
            "echo hello from $GREETING {greeting}\necho token is $API_TOKEN\necho marker-$CASTRA_BOOTSTRAP_RUN > /tmp/castra-boot-marker\n/bin/castra-agent publish --topic boot.done \"{{\\\"marker\\\":\\\"$(cat /tmp/castra-boot-marker)\\\"}}\"\n"
        )
    };
    std::fs::write(p.path().join("boot-a.sh"), script("v1")).unwrap();
    let a_boot =
        r#"{ script = "boot-a.sh", env = { GREETING = "castra", API_TOKEN = "s3cr3t-value" } }"#;
    p.write_config(&config_boot(
        port,
        a_boot,
        r#"{ run = "echo failing; exit 7" }"#,
    ));

    // plan: two pending bootstraps, no VM step (a bootstrap never restarts a VM).
    let out = p.castra(&["plan"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(step_lines(&text).is_empty(), "{text}");
    assert_eq!(
        boot_lines(&text),
        [
            "> bootstrap a (auto: never ran, script)",
            "> bootstrap b (auto: never ran, run)"
        ],
        "{text}"
    );

    // apply runs both; b fails, so apply exits 1.
    let t = Instant::now();
    let out = p.castra(&["apply", "--bootstrap-timeout", "120s"]);
    let took = t.elapsed();
    let (o, e) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(o.contains("bootstrap a: ok in "), "{o}{e}");
    assert!(e.contains("bootstrap b: FAILED: exit code 7"), "{o}{e}");
    assert!(
        e.contains("a | hello from castra v1"),
        "progress lines: {e}"
    );
    eprintln!("apply -> both bootstraps done in {took:?} (guests already up)");
    let s = p.json(&["status", "--json"]);
    let (ba, bb) = (&vm(&s, "a")["bootstrap"], &vm(&s, "b")["bootstrap"]);
    assert_eq!(ba["state"], "ok", "{s}");
    assert_eq!(bb["state"], "failed", "{s}");
    assert!(ba["age_ms"].is_u64(), "{s}");
    // `castra wait --for bootstrap` agrees: done for a, never for b (at once,
    // not at its timeout).
    let out = p.castra(&["wait", "a", "--for", "bootstrap", "--timeout", "30s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t = Instant::now();
    let out = p.castra(&["wait", "a", "b", "--for", "bootstrap", "--timeout", "600s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the bootstrap of vm \"b\" failed: exit code 7"),
        "{}",
        stderr(&out)
    );
    assert!(
        t.elapsed() < Duration::from_secs(300),
        "a failed bootstrap ends the wait"
    );
    let log_b = std::fs::read_to_string(bb["log"].as_str().unwrap()).unwrap();
    assert!(log_b.contains("failing"), "{log_b}");
    let log_a = std::fs::read_to_string(ba["log"].as_str().unwrap()).unwrap();
    assert!(log_a.contains("hello from castra v1"), "{log_a}");
    assert!(log_a.contains("token is ***"), "{log_a}");
    let table = stdout(&p.castra(&["status"]));
    assert!(
        table.contains("BOOT") && table.contains("failed"),
        "{table}"
    );
    // The marker was written and published from inside guest a.
    let tail = stdout(&p.castra(&["bus", "tail", "--vm", "a", "--topic", "boot.done", "--json"]));
    let run_a = run_id(p, "a");
    assert!(tail.contains(&format!("marker-{run_a}")), "{tail}");
    // The secret is in no file castra wrote (sealed on the bus, masked in logs).
    for f in [
        "logs/bus/all.log",
        "logs/bus/host.log",
        "events.jsonl",
        "vms/a/bootstrap.json",
    ] {
        let text = std::fs::read_to_string(p.path().join(".castra").join(f)).unwrap_or_default();
        assert!(!text.contains("s3cr3t-value"), "{f} holds the secret");
    }
    let events = std::fs::read_to_string(p.path().join(".castra/events.jsonl")).unwrap();
    for ev in [
        "bootstrap_planned",
        "bootstrap_started",
        "bootstrap_completed",
        "bootstrap_failed",
    ] {
        assert!(events.contains(ev), "no {ev} event");
    }

    // Fix b: only b reruns (its plan changed); a is done for this launch.
    p.write_config(&config_boot(port, a_boot, r#"{ run = "echo fixed" }"#));
    let out = p.castra(&["plan"]);
    assert_eq!(
        boot_lines(&stdout(&out)),
        ["> bootstrap b (auto: plan changed, run)"]
    );
    let t = Instant::now();
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    eprintln!("apply -> bootstrap b done in {:?}", t.elapsed());
    assert_eq!(run_id(p, "a"), run_a, "auto reran a");
    let s = p.json(&["status", "--json"]);
    assert_eq!(vm(&s, "b")["bootstrap"]["state"], "ok", "{s}");
    let run_b = run_id(p, "b");

    // A second apply is a no-op: auto does not rerun.
    let out = p.castra(&["apply"]);
    assert!(stdout(&out).contains("no-op"), "{}", stdout(&out));
    assert_eq!(
        (run_id(p, "a"), run_id(p, "b")),
        (run_a.clone(), run_b.clone())
    );

    // Changing the script reruns a only.
    std::fs::write(p.path().join("boot-a.sh"), script("v2")).unwrap();
    let out = p.castra(&["plan"]);
    assert_eq!(
        boot_lines(&stdout(&out)),
        ["> bootstrap a (auto: plan changed, script)"]
    );
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("a | hello from castra v2"),
        "{}",
        stderr(&out)
    );
    assert_ne!(run_id(p, "a"), run_a);
    assert_eq!(run_id(p, "b"), run_b);
}

/// The `+ / ~ / -` lines of a printed plan.
fn step_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("+ ") || l.starts_with("~ ") || l.starts_with("- "))
        .collect()
}

/// `status --json` while `pid` is frozen with SIGSTOP: it must answer in well under a second.
fn status_with_frozen(p: &Project, pid: i64, what: &str) -> serde_json::Value {
    signal(pid, Signal::SIGSTOP);
    let t = Instant::now();
    let s = p.json(&["status", "--json"]);
    let took = t.elapsed();
    signal(pid, Signal::SIGCONT);
    // A bound that only catches a hang: status never waits on what is frozen.
    assert!(took < HANG, "status took {took:?} with a frozen {what}");
    eprintln!("status with a frozen {what}: {took:?}");
    s
}

/// Wait (bounded) until every named VM is reachable in `status --json`.
fn wait_reachable(p: &Project, names: &[&str], secs: u64) {
    let t = Instant::now();
    loop {
        let s = p.json(&["status", "--json"]);
        if names.iter().all(|n| vm(&s, n)["reachable"] == true) {
            return;
        }
        assert!(
            t.elapsed().as_secs() < secs,
            "not reachable within {secs}s: {s}\nbroker log:\n{}",
            std::fs::read_to_string(p.path().join(".castra/broker/broker.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

fn pid_of(p: &Project, name: &str) -> i64 {
    let s = p.json(&["status", "--json"]);
    vm(&s, name)["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} has no pid: {s}"))
}

#[test]
fn apply_noop_drift_crash_freeze_down() {
    common::ensure_image();
    let port = common::free_port();
    let p = Project::new(&config(port, "128M"));

    // 1. Cold apply: both VMs running.
    let out = p.castra(&["apply"]);
    assert!(
        out.status.success(),
        "apply failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("+ start a"), "{}", stdout(&out));
    let s = p.json(&["status", "--json"]);
    for name in ["a", "b"] {
        assert_eq!(vm(&s, name)["state"], "running", "{s}");
        assert!(vm(&s, name)["accel"].is_string(), "{s}");
    }
    let (a0, b0) = (pid_of(&p, "a"), pid_of(&p, "b"));

    // 2. A second apply with nothing changed is a no-op and says so.
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("no-op"), "{}", stdout(&out));
    assert_eq!(p.castra(&["plan"]).status.code(), Some(0));

    // 3. Change a's memory: the plan lists exactly a with the changed field.
    p.write_config(&config(port, "192M"));
    let out = p.castra(&["plan"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("~ restart a (memory 128M -> 192M)"), "{text}");
    assert_eq!(
        step_lines(&text),
        ["~ restart a (memory 128M -> 192M)"],
        "{text}"
    );

    // 4. Apply restarts only a.
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let (a1, b1) = (pid_of(&p, "a"), pid_of(&p, "b"));
    assert_ne!(a1, a0, "a was not restarted");
    assert_eq!(b1, b0, "b was restarted but did not change");

    // 5. kill -9 b's QEMU: status shows it stopped (once the kernel has
    // taken it away), while a stays running.
    signal(b1, Signal::SIGKILL);
    wait_dead(b1, HANG);
    let s = wait_until("b stopped after kill -9", HANG, || {
        let s = p.json(&["status", "--json"]);
        if vm(&s, "b")["state"] == "stopped" {
            Ok(s)
        } else {
            Err(s)
        }
    });
    assert_eq!(vm(&s, "a")["state"], "running", "{s}");

    // 6. Apply restarts only b.
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    let steps = step_lines(&text);
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(steps[0].starts_with("+ start b ("), "{steps:?}");
    assert_eq!(pid_of(&p, "a"), a1);
    let b2 = pid_of(&p, "b");
    assert_ne!(b2, b1);

    // 6b. `apply --watch` notices a VM that dies and brings it back by itself:
    // b is killed only once the watcher says it is watching both VMs (its
    // first round found nothing to do), so the restart is the watch loop's.
    let mut watcher = KillOnDrop::spawn(
        Command::new(common::castra_bin())
            .args(["apply", "--watch"])
            .current_dir(p.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    );
    let mut said = LineFeed::new(watcher.stderr.take().unwrap());
    let (_, watching) = said.wait_for("watching ", HANG);
    assert!(watching.contains("and 2 VM(s)"), "{watching}");
    assert!(
        !said.seen.iter().any(|l| l.contains("b: starting")),
        "the first watch round restarted b: {:?}",
        said.seen
    );
    signal(b2, Signal::SIGKILL);
    let t = Instant::now();
    said.wait_for(r#"watch: vm "b" is no longer running; reconciling"#, HANG);
    said.wait_for("b: running (pid ", HANG);
    said.wait_for("watching ", HANG);
    let s = p.json(&["status", "--json"]);
    let b = vm(&s, "b");
    assert_eq!(b["state"], "running", "{s}");
    let b3 = b["pid"].as_i64().unwrap();
    assert_ne!(b3, b2, "{s}");
    drop(watcher);
    assert_eq!(pid_of(&p, "a"), a1, "watch restarted a, which was fine");
    eprintln!(
        "watch restarted b (pid {b3}) {:?} after kill -9",
        t.elapsed()
    );

    // 6c. Both guests prove they are up through the broker (agent handshake + heartbeats).
    let t = Instant::now();
    wait_reachable(&p, &["a", "b"], 60);
    eprintln!("both reachable {:?} after the watch round", t.elapsed());
    let s = p.json(&["status", "--json"]);
    assert_eq!(s["broker"]["state"], "running", "{s}");
    let broker_pid = s["broker"]["pid"].as_i64().expect("broker pid");
    assert!(vm(&s, "a")["last_handshake_age_ms"].is_u64(), "{s}");

    // The guests' serial consoles are there for `castra logs`.
    let out = p.castra(&["logs", "a", "-n", "200"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("castra-guest: ready"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("castra-agent: "), "{}", stdout(&out));

    // The bus, end to end: a host publish to vm:a reaches the agent subscribed
    // in guest a (and only there); the agents' own publishes are durable and
    // show up in `bus tail` and in status.
    let out = p.castra(&["bus", "publish", "--topic", "vm:a", r#"{"ping":42}"#]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let seq = stdout(&out).trim().to_string();
    let delivered = r#"topic=vm:a from=host payload={"ping":42}"#;
    let t = Instant::now();
    let console_shows = |vm: &str, text: &str| {
        wait_until(&format!("{text} in {vm}'s console"), HANG, || {
            let log = stdout(&p.castra(&["logs", vm, "-n", "500"]));
            if log.contains(text) { Ok(()) } else { Err(log) }
        })
    };
    console_shows("a", delivered);
    eprintln!(
        "host publish (seq {seq}) delivered in guest a within {:?}",
        t.elapsed()
    );
    // b did not get it: a later message to b has arrived there, and a session's
    // deliveries come in order, so a's message would have come before it.
    let out = p.castra(&["bus", "publish", "--topic", "vm:b", r#"{"ping":43}"#]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    console_shows("b", r#"topic=vm:b from=host payload={"ping":43}"#);
    let log_b = stdout(&p.castra(&["logs", "b", "-n", "500"]));
    assert!(!log_b.contains(delivered), "b got a's message:\n{log_b}");
    let tail = stdout(&p.castra(&["bus", "tail", "--vm", "a", "--json"]));
    assert!(tail.contains(r#""topic":"castra.agent""#), "{tail}");
    let s = p.json(&["status", "--json"]);
    assert!(vm(&s, "a")["last_publish_age_ms"].is_u64(), "{s}");
    assert_eq!(vm(&s, "a")["bus_subscribed"], true, "{s}");

    // Bootstrap over the bus, on the same two guests (no restart).
    bootstrap_round(&p, port);
    assert_eq!(
        (pid_of(&p, "a"), pid_of(&p, "b")),
        (a1, b3),
        "a bootstrap restarted a VM"
    );

    // A frozen broker does not slow status down either.
    let s = status_with_frozen(&p, broker_pid, "broker");
    assert_eq!(s["broker"]["state"], "running", "{s}");

    // kill -9 the broker: status says offline once the process is gone, and
    // the guests are no longer reachable.
    signal(broker_pid, Signal::SIGKILL);
    // Gone for good (its port released), then status must say so.
    wait_dead(broker_pid, HANG);
    let s = wait_until("broker offline after kill -9", HANG, || {
        let s = p.json(&["status", "--json"]);
        if s["broker"]["state"] == "offline" {
            Ok(s)
        } else {
            Err(s)
        }
    });
    assert_eq!(vm(&s, "a")["reachable"], false, "{s}");
    let table = stdout(&p.castra(&["status"]));
    assert!(table.contains("offline"), "{table}");

    // apply heals the broker only; the guests reconnect by themselves.
    let out = p.castra(&["plan"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("+ start broker ("),
        "{}",
        stdout(&out)
    );
    assert!(step_lines(&stdout(&out)).len() == 1, "{}", stdout(&out));
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let t = Instant::now();
    wait_reachable(&p, &["a", "b"], 30);
    eprintln!(
        "guests reconnected {:?} after the broker restart",
        t.elapsed()
    );
    assert_eq!(pid_of(&p, "a"), a1, "a was restarted");
    assert_eq!(pid_of(&p, "b"), b3, "b was restarted");

    // 7. A frozen QEMU does not slow status down.
    let s = status_with_frozen(&p, a1, "QEMU");
    assert_eq!(vm(&s, "a")["state"], "running", "{s}");

    // 8. Down: cooperative, nothing left behind (the broker goes too).
    let out = p.castra(&["down"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("a: stopped by ACPI powerdown (cooperative) in "),
        "{text}"
    );
    assert!(
        text.contains("b: stopped by ACPI powerdown (cooperative) in "),
        "{text}"
    );
    assert!(
        p.qemu_pids().is_empty(),
        "qemu still running: {:?}",
        p.qemu_pids()
    );
    for name in ["a", "b"] {
        let dir = p.path().join(".castra/vms").join(name);
        for f in ["qemu.pid", "qmp.sock", "launch.json"] {
            assert!(!dir.join(f).exists(), "{name}/{f} left behind");
        }
    }
    let s = p.json(&["status", "--json"]);
    assert_eq!(vm(&s, "a")["state"], "stopped", "{s}");
    assert_eq!(s["broker"]["state"], "offline", "{s}");

    // 9. Clean removes the stopped VMs' state and says how much.
    let c = p.json(&["clean", "--json"]);
    assert!(c["reclaimed_bytes"].as_u64().unwrap() > 0, "{c}");
    assert!(!p.path().join(".castra/vms/a").exists());
}
