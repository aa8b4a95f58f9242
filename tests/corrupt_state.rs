//! Damaged state files, one at a time, against the real `castra` binary:
//! garbage, empty and truncated pidfiles, launch records, the broker's
//! pidfile and state file, the bus checkpoint and bus log lines. `status`
//! (table and `--json`) never crashes and says what is wrong; `down` never
//! signals a process that is not ours (a live `sleep` whose pid a damaged
//! file names survives); `bus tail` skips a bad line.

mod common;

use std::path::Path;
use std::process::Command;

use castra::layout::StateLayout;
use common::{KillOnDrop, Project};

const TOML: &str = "[project]\nname = \"dmg\"\n[[vms]]\nname = \"web\"\n";

fn layout(p: &Project) -> StateLayout {
    StateLayout::new(p.path().join(".castra"))
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// `status --json` and `status` after the damage: no panic, a JSON
/// report, exit 0 or 1. Returns web's entry and the table.
fn status(p: &Project, what: &str) -> (serde_json::Value, String) {
    let out = p.castra(&["status", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{what}: status panicked: {err}");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{what}: {:?} {err}",
        out.status
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: no JSON ({e}): {}{err}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let table = p.castra(&["status"]);
    let terr = String::from_utf8_lossy(&table.stderr).to_string();
    assert!(
        !terr.contains("panicked"),
        "{what}: status panicked: {terr}"
    );
    let web = json["vms"]
        .as_array()
        .and_then(|v| v.iter().find(|e| e["name"] == "web").cloned())
        .unwrap_or_else(|| panic!("{what}: no web in {json}"));
    (web, String::from_utf8_lossy(&table.stdout).to_string())
}

/// A process that is not ours, killed on drop.
fn bystander() -> KillOnDrop {
    KillOnDrop::spawn(Command::new("sleep").arg("300"))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn damaged_vm_files_show_broken_or_stopped_with_a_reason_and_nothing_foreign_is_signalled() {
    let p = Project::new(TOML);
    let l = layout(&p);
    let web = l.vm("web");
    let other = bystander();
    let pid = other.id();
    let record_like = format!(r#"{{"pid":{pid},"start_time":1,"#);
    let cases: Vec<(&str, std::path::PathBuf, String)> = vec![
        ("garbage pidfile", web.pidfile(), "not a pid\n".into()),
        ("empty pidfile", web.pidfile(), String::new()),
        ("truncated pidfile", web.pidfile(), "12".into()),
        (
            "huge pidfile",
            web.pidfile(),
            "99999999999999999999\n".into(),
        ),
        (
            "pidfile naming a foreign process",
            web.pidfile(),
            format!("{pid}\n"),
        ),
        (
            "garbage launch record",
            web.launch_record(),
            "{not json".into(),
        ),
        ("empty launch record", web.launch_record(), String::new()),
        (
            "truncated launch record",
            web.launch_record(),
            record_like.clone(),
        ),
    ];
    for (what, path, text) in &cases {
        let _ = std::fs::remove_dir_all(l.vms_dir());
        write(path, text);
        let (entry, table) = status(&p, what);
        let state = entry["state"].as_str().unwrap_or("?");
        assert!(matches!(state, "broken" | "stopped"), "{what}: {entry}");
        if state == "broken" {
            assert!(
                entry["reasons"].as_array().is_some_and(|r| !r.is_empty()),
                "{what}: broken without a reason: {entry}"
            );
            assert!(table.contains("broken"), "{what}: {table}");
        }
        println!("{what}: {state} {}", entry["reasons"]);
        // `down` must not signal the bystander, whatever the file says.
        let out = p.castra(&["down"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{what}: down panicked: {err}");
        assert!(
            alive(pid),
            "{what}: castra down killed a process that is not ours"
        );
    }
    // Both files damaged together, the pidfile naming the bystander.
    write(&web.pidfile(), &format!("{pid}\n"));
    write(&web.launch_record(), &record_like);
    status(&p, "both damaged");
    let _ = p.castra(&["down"]);
    assert!(alive(pid), "castra down killed a process that is not ours");
}

#[test]
fn damaged_broker_and_bus_files_never_crash_status_or_tail() {
    let p = Project::new(TOML);
    let l = layout(&p);
    let other = bystander();
    let pid = other.id();
    let cases: Vec<(&str, std::path::PathBuf, String)> = vec![
        ("garbage broker state", l.broker_state(), "{{{{".into()),
        ("empty broker state", l.broker_state(), String::new()),
        (
            "truncated broker state",
            l.broker_state(),
            r#"{"version":1,"broker_pid":"#.into(),
        ),
        ("garbage broker pidfile", l.broker_pidfile(), "x\n".into()),
        ("empty broker pidfile", l.broker_pidfile(), String::new()),
        (
            "broker pidfile naming a foreign process",
            l.broker_pidfile(),
            format!("{pid}\n"),
        ),
        (
            "garbage bus checkpoint",
            l.bus_log_dir().join("checkpoint.json"),
            "nope".into(),
        ),
    ];
    for (what, path, text) in &cases {
        write(path, text);
        let out = p.castra(&["status", "--json"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{what}: {err}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{what}: no JSON ({e}) {err}"));
        println!("{what}: broker {}", json["broker"]);
        let out = p.castra(&["down"]);
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
        assert!(
            alive(pid),
            "{what}: castra down killed a process that is not ours"
        );
    }
    // A bus log with a garbage line, an empty line and a torn tail.
    let good = r#"{"seq":1,"vm":"web","topic":"t","ts_ms":1,"payload":1}"#;
    let good2 = r#"{"seq":3,"vm":"web","topic":"t","ts_ms":3,"payload":3}"#;
    write(
        &l.bus_all_log(),
        &format!("{good}\ngarbage line\n\n{good2}\n{{\"seq\":4,\"vm\""),
    );
    let out = p.castra(&["bus", "tail", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "bus tail: {err}");
    let seqs = common::broker::json_seqs(&out.stdout);
    assert_eq!(seqs, [1, 3], "bus tail: {err}");
}
