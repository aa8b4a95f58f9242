//! The docs are tested: every `castra.toml` example in README.md, docs/ and
//! guest/ loads (error examples are checked against real output by the
//! config tests), the Python guest client printed in docs/BUS.md runs
//! against the real broker (subscribes, publishes, heartbeats past the
//! heartbeat timeout, receives a host publish), and the host-tool error
//! examples of BUS.md section 8 are what `castra bus publish` prints.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::broker::{Broker, cli, state_root};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fenced blocks of a markdown file: (line of the fence, info string, body,
/// the nearest non-empty line above the fence).
fn blocks(md: &str) -> Vec<(usize, String, String, String)> {
    let lines: Vec<&str> = md.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(lang) = lines[i].strip_prefix("```") {
            let above = lines[..i]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
                .unwrap_or_default();
            let start = i;
            let mut body = String::new();
            i += 1;
            while i < lines.len() && !lines[i].starts_with("```") {
                body.push_str(lines[i]);
                body.push('\n');
                i += 1;
            }
            out.push((start + 1, lang.trim().to_string(), body, above));
        }
        i += 1;
    }
    out
}

fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![
        repo().join("README.md"),
        repo().join("guest/README.md"),
        repo().join("guest/debian-nix/README.md"),
    ];
    for e in std::fs::read_dir(repo().join("docs")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "md") {
            files.push(e.path());
        }
    }
    files.sort();
    files
}

#[test]
fn every_castra_toml_example_loads() {
    let mut checked = 0;
    for file in doc_files() {
        let md = std::fs::read_to_string(&file).unwrap();
        for (line, lang, body, above) in blocks(&md) {
            if lang != "toml" || above == "<!-- error-example -->" {
                continue;
            }
            let at = format!("{}:{line}", file.display());
            let as_file = Path::new("/srv/demo/castra.toml");
            if above == "<!-- toml-alternatives -->" {
                // One alternative per line, each a key of a VM.
                for alt in body.lines().filter(|l| !l.trim().is_empty()) {
                    let text = format!("[[vms]]\nname = \"demo\"\n{alt}\n");
                    if let Err(e) = castra::config::load_str(&text, as_file) {
                        panic!("{at}: {alt:?} does not load:\n{e}");
                    }
                    checked += 1;
                }
                continue;
            }
            if let Err(e) = castra::config::load_str(&body, as_file) {
                panic!("{at}: this example does not load:\n{e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} toml examples found");
}

/// The body of the fenced block that follows `heading` in `md`.
fn block_after(md: &str, heading: &str, lang: &str) -> String {
    let at = md.find(heading).unwrap_or_else(|| panic!("no {heading:?}"));
    let rest = &md[at..];
    let open = format!("```{lang}\n");
    let start = rest.find(&open).expect("no block") + open.len();
    let end = rest[start..].find("```").expect("unclosed block");
    rest[start..start + end].to_string()
}

#[test]
fn the_bus_md_python_client_runs_against_the_real_broker() {
    let md = std::fs::read_to_string(repo().join("docs/BUS.md")).unwrap();
    let client = block_after(&md, "### A minimal guest client", "python");
    let root = state_root(&["web"]);
    let script = root.path().join("client.py");
    std::fs::write(&script, client).unwrap();
    let port = common::free_port();
    // A heartbeat timeout of 6 s: the client's 4 s heartbeats must keep it open.
    let _broker = Broker::start(root.path(), port, &["--heartbeat-timeout-ms", "6000"]);
    let mut child = Command::new("python3")
        .arg(&script)
        .args(["web", "127.0.0.1", &port.to_string()])
        .arg(root.path().join("vms/web/token"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup-host.sh installs it)");
    let (tx, rx) = mpsc::channel::<Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    let mut seen: Vec<Value> = Vec::new();
    let mut until = |want: &dyn Fn(&Value) -> bool, what: &str| {
        // A bound, not a synchronisation: each frame comes as soon as it is sent.
        while let Ok(v) = rx.recv_timeout(Duration::from_secs(30)) {
            assert_ne!(
                v["type"], "bye",
                "the broker ended the session: {v} after {seen:?}"
            );
            seen.push(v.clone());
            if want(&v) {
                return;
            }
        }
        panic!("no {what}; the client printed {seen:?}");
    };
    until(
        &|v| v["ack"] == "subscribe" && v["topic"] == "vm:web",
        "subscribe ack for vm:web",
    );
    until(
        &|v| v["ack"] == "subscribe" && v["topic"] == "broadcast",
        "subscribe ack for broadcast",
    );
    until(
        &|v| v["ack"] == "publish" && v["id"] == "boot-1",
        "publish ack",
    );
    // Two heartbeats acked: the session outlived the 6 s timeout only by them.
    until(&|v| v["ack"] == "heartbeat", "first heartbeat ack");
    until(&|v| v["ack"] == "heartbeat", "second heartbeat ack");
    let out = cli(
        root.path(),
        &[
            "bus",
            "publish",
            "--topic",
            "vm:web",
            r#"{"job":"build","n":1}"#,
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until(
        &|v| v["type"] == "message" && v["from"] == "host" && v["payload"]["job"] == "build",
        "the host's message",
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn bus_md_host_tool_errors_are_real_output() {
    let md = std::fs::read_to_string(repo().join("docs/BUS.md")).unwrap();
    let block = block_after(&md, "## 8. Host tools", "");
    let expected = |cmd_start: &str| -> String {
        let mut lines = block.lines().skip_while(|l| !l.starts_with(cmd_start));
        lines
            .next()
            .unwrap_or_else(|| panic!("no {cmd_start:?} in BUS.md section 8"));
        lines.next().unwrap_or_default().to_string()
    };
    let root = state_root(&["web"]);
    let port = common::free_port();
    let run = |args: &[&str]| {
        let out = cli(root.path(), args).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).trim_end().to_string()
    };
    // Broker stopped first, then running.
    let stopped = run(&["bus", "publish", "1"]);
    let want = expected("$ castra bus publish 1");
    let state = root.path().display().to_string();
    assert_eq!(stopped.replace(&state, ".castra"), want);
    let _broker = Broker::start(root.path(), port, &[]);
    assert_eq!(
        run(&["bus", "publish", "--topic", "vm:web", "{nope"]),
        expected("$ castra bus publish --topic vm:web '{nope'")
    );
    let big = format!("\"{}\"", "x".repeat(70_000));
    assert_eq!(
        run(&["bus", "publish", "--topic", "vm:web", &big]),
        expected("$ castra bus publish --topic vm:web \"\\\"$(head -c 70000")
    );
}

/// `castra` command lines shown in the docs (`castra ...` in sh blocks, `$ castra ...`
/// in console blocks): each names real subcommands, and each `--flag` is in their help.
#[test]
fn every_castra_command_shown_in_the_docs_exists_with_its_flags() {
    let mut checked = 0;
    for file in doc_files() {
        let md = std::fs::read_to_string(&file).unwrap();
        for (line, lang, body, _) in blocks(&md) {
            if !matches!(lang.as_str(), "sh" | "console" | "" | "text") {
                continue;
            }
            for cmd in body.lines() {
                let cmd = cmd.trim_start().trim_start_matches("$ ");
                let Some(rest) = cmd.strip_prefix("castra ") else {
                    continue;
                };
                let words: Vec<&str> = rest
                    .split('#')
                    .next()
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect();
                let mut path: Vec<&str> = Vec::new();
                for w in &words {
                    if w.starts_with('-') || !w.chars().all(|c| c.is_ascii_lowercase()) {
                        break;
                    }
                    let mut probe = path.clone();
                    probe.push(w);
                    let ok = Command::new(common::castra_bin())
                        .args(&probe)
                        .arg("--help")
                        .output()
                        .unwrap()
                        .status
                        .success();
                    if !ok {
                        break;
                    }
                    path = probe;
                }
                let at = format!("{}:{line}: {cmd}", file.display());
                assert!(!path.is_empty(), "{at}: no such castra command");
                let help = Command::new(common::castra_bin())
                    .args(&path)
                    .arg("--help")
                    .output()
                    .unwrap();
                let help = String::from_utf8_lossy(&help.stdout).into_owned();
                for flag in words.iter().filter(|w| w.starts_with("--")) {
                    let flag = flag.split('=').next().unwrap_or_default();
                    assert!(
                        help.contains(flag),
                        "{at}: `castra {}` has no {flag}",
                        path.join(" ")
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 20,
        "only {checked} castra commands found in the docs"
    );
}
