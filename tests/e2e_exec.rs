//! End to end: `castra exec`, `shell`, `cp` and `wait` against real guests of
//! the default image (TCG) through the real broker. Two guests, booted once
//! (`apply --wait`) and reused by every case: bytes exact both ways, stdout
//! and stderr apart, exit codes, stdin to EOF, signals leaving nothing
//! running, several VMs at once, cp round trips with checksums and modes,
//! a shell driven through tmux, memory bounded under a large output, stream
//! impostors refused, events recorded. Needs the default image (built
//! first, a no-op when cached) and tmux (scripts/setup-host.sh).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Project, castra_bin, ok_stdout, stderr, stdout};
use sha2::{Digest, Sha256};

fn config(port: u16) -> String {
    format!(
        "[project]\nname = \"ex\"\n\n[broker]\nport = {port}\n\n[[vms]]\nname = \"a\"\nmemory = \"192M\"\n\n[[vms]]\nname = \"b\"\nmemory = \"160M\"\n"
    )
}

fn cmd(p: &Project, args: &[&str]) -> Command {
    let mut c = Command::new(castra_bin());
    c.args(args)
        .current_dir(p.path())
        .env_remove("CASTRA_CONFIG");
    c
}

/// Run with `input` on stdin.
fn with_stdin(p: &Project, args: &[&str], input: &[u8]) -> Output {
    let mut child = cmd(p, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    out
}

fn exec(p: &Project, vm: &str, argv: &[&str]) -> Output {
    let mut args = vec!["exec", vm, "--"];
    args.extend_from_slice(argv);
    p.castra(&args)
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Poll `done` until it holds (bounded: panics with `what` after 20 s).
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(20), "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn vm_rss_kib(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

/// The first stdout line of a running `castra exec`.
fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_owned()
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

fn gone_in_guest(p: &Project, pid: &str) -> bool {
    exec(p, "a", &["test", "-e", &format!("/proc/{pid}")])
        .status
        .code()
        == Some(1)
}

fn bytes_and_codes(p: &Project) {
    let out = exec(
        p,
        "a",
        &[
            "sh",
            "-c",
            r#"printf 'a\000b\377c'; printf 'e\000rr\376' >&2"#,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, b"a\0b\xffc");
    assert_eq!(out.stderr, b"e\0rr\xfe");
    for (argv, code) in [
        (&["true"][..], 0),
        (&["sh", "-c", "exit 3"], 3),
        (&["no-such-command"], 127),
        (&["/etc/hostname"], 126),
        (&["sh", "-c", "kill -9 $$"], 137),
    ] {
        let out = exec(p, "a", argv);
        assert_eq!(out.status.code(), Some(code), "{argv:?}: {}", stderr(&out));
    }
    assert!(stderr(&exec(p, "a", &["no-such-command"])).contains("command not found"));
    // Environment, working directory, --timeout.
    let out = p.castra(&[
        "exec",
        "-e",
        "GREETING=hi there",
        "-w",
        "/tmp",
        "a",
        "--",
        "sh",
        "-c",
        "echo $GREETING; pwd",
    ]);
    assert_eq!(ok_stdout(&out), "hi there\n/tmp\n");
    // Options after the VM name, too.
    let out = p.castra(&[
        "exec",
        "a",
        "-w",
        "/tmp",
        "-e",
        "K=v",
        "--",
        "sh",
        "-c",
        "pwd; echo $K",
    ]);
    assert_eq!(ok_stdout(&out), "/tmp\nv\n");
    let out = p.castra(&["exec", "--timeout", "1s", "a", "--", "sleep", "30"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));

    // stdin to EOF, binary, both ways.
    let input: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 256) as u8).collect();
    let out = with_stdin(p, &["exec", "a", "--", "cat"], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha(&out.stdout), sha(&input));
    let out = with_stdin(p, &["exec", "a", "--", "sha256sum"], &input);
    assert!(
        ok_stdout(&out).starts_with(&sha(&input)),
        "{}",
        stdout(&out)
    );

    // --json: chunks (base64 when not UTF-8), then the result.
    let out = p.castra(&["exec", "--json", "a", "--", "printf", r"ok\377"]);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["data_b64"], "b2v/", "{lines:?}");
    assert_eq!(lines.last().unwrap()["exit"], 0, "{lines:?}");
}

fn several_vms(p: &Project) {
    let out = p.castra(&["exec", "a,b", "--", "hostname"]);
    let mut lines: Vec<String> = ok_stdout(&out).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(lines, ["a | a", "b | b"]);
    let out = p.castra(&[
        "exec",
        "--all",
        "--",
        "sh",
        "-c",
        "[ $(hostname) = a ] && exit 4; exit 9",
    ]);
    assert_eq!(
        out.status.code(),
        Some(9),
        "the worst code: {}",
        stderr(&out)
    );
}

fn signals_leave_nothing(p: &Project) {
    for (sig, code) in [
        (nix::sys::signal::Signal::SIGINT, 130),
        (nix::sys::signal::Signal::SIGTERM, 143),
    ] {
        let mut child = cmd(
            p,
            &["exec", "a", "--", "sh", "-c", "sleep 1000 & echo $!; wait"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let pid = first_line(&mut child);
        signal(&child, sig);
        let status = child.wait().unwrap();
        // SIGINT: the background sleep ignores it (sh), but the agent ends
        // the whole group once the command is gone.
        assert!(
            status.code() == Some(code) || status.code() == Some(137),
            "{sig}: {status:?}"
        );
        eventually(&format!("sleep {pid} gone after {sig}"), || {
            gone_in_guest(p, &pid)
        });
    }
    // castra killed outright: the agent sees the stream end and kills the group.
    let mut child = cmd(
        p,
        &["exec", "a", "--", "sh", "-c", "echo $$; exec sleep 1000"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let pid = first_line(&mut child);
    signal(&child, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    eventually(&format!("sleep {pid} gone after kill -9 of castra"), || {
        gone_in_guest(p, &pid)
    });
}

fn copies(p: &Project) {
    let src = p.path().join("tree");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i ^ (i >> 7)) as u8).collect();
    std::fs::write(src.join("sub/blob.bin"), &blob).unwrap();
    std::fs::write(src.join("run.sh"), b"#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("sub/blob.bin", src.join("link")).unwrap();

    let out = p.castra(&["cp", "-r", src.to_str().unwrap(), "a:/tmp/in"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = exec(
        p,
        "a",
        &[
            "sh",
            "-c",
            "sha256sum /tmp/in/sub/blob.bin; stat -c %a /tmp/in/run.sh; readlink /tmp/in/link; /tmp/in/run.sh",
        ],
    );
    let text = ok_stdout(&out);
    assert!(text.starts_with(&sha(&blob)), "{text}");
    assert!(text.contains("\n750\nsub/blob.bin\nran\n"), "{text}");

    let back = p.path().join("back");
    let out = p.castra(&["cp", "-r", "a:/tmp/in", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        sha(&std::fs::read(back.join("sub/blob.bin")).unwrap()),
        sha(&blob)
    );
    let meta = |p: &std::path::Path| std::fs::metadata(p).unwrap();
    assert_eq!(
        meta(&back.join("run.sh")).permissions().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        meta(&back.join("run.sh")).mtime(),
        meta(&src.join("run.sh")).mtime(),
        "mtime kept"
    );
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap(),
        std::path::Path::new("sub/blob.bin")
    );

    // Clear errors.
    for (args, code, want) in [
        (vec!["cp", "a:/nope", "x"], 1, "no such file or directory"),
        (vec!["cp", "a:", "x"], 125, "no path after"),
        (
            vec!["cp", src.to_str().unwrap(), "a:/tmp/x"],
            1,
            "is a directory (use -r)",
        ),
        (vec!["cp", "ghost:/x", "y"], 125, "no VM named \"ghost\""),
        (
            vec!["cp", "/etc/hostname", "a:/proc/nope/x"],
            1,
            "no such directory",
        ),
    ] {
        let out = p.castra(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
}

fn shell_in_tmux(p: &Project) {
    let session = format!("castra-e2e-{}", std::process::id());
    let tmux = |args: &[&str]| {
        let out = Command::new("tmux")
            .args(["-L", &session])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "tmux {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let done = p.path().join("shell-exit");
    let script = format!(
        "cd {} && {} shell a; echo $? > {}; sleep 60",
        p.path().display(),
        castra_bin().display(),
        done.display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "90",
        "-y",
        "25",
        &script,
    ]);
    let screen = || tmux(&["capture-pane", "-p", "-t", "t"]);
    eventually("a shell prompt", || screen().contains('#'));
    tmux(&[
        "send-keys",
        "-t",
        "t",
        "echo hi-$((6*7)); stty size",
        "Enter",
    ]);
    eventually("the command's output", || {
        screen().contains("hi-42") && screen().contains("25 90")
    });
    tmux(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]);
    tmux(&["send-keys", "-t", "t", "stty size", "Enter"]);
    eventually("the new size", || screen().contains("40 120"));
    tmux(&["send-keys", "-t", "t", "exit 5", "Enter"]);
    eventually("the shell's exit status", || {
        std::fs::read_to_string(&done).is_ok_and(|s| s.trim() == "5")
    });
    let _ = Command::new("tmux")
        .args(["-L", &session, "kill-server"])
        .status();
    // Without a terminal: a clear refusal.
    let out = p.castra(&["shell", "a"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("needs a terminal"),
        "{}",
        stderr(&out)
    );
}

/// A large output: castra, broker and agent each stay small.
fn bounded_memory(p: &Project) {
    let mut child = cmd(p, &["exec", "a", "--", "cat", "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0usize;
    while got < 24 << 20 {
        got += out.read(&mut buf).unwrap();
    }
    let castra =
        vm_rss_kib(&std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap());
    let broker_pid = std::fs::read_to_string(p.path().join(".castra/broker/broker.pid")).unwrap();
    let broker = vm_rss_kib(
        &std::fs::read_to_string(format!("/proc/{}/status", broker_pid.trim())).unwrap(),
    );
    // The agent, while the stream runs (the other guest checks latency meanwhile).
    let agent_out = exec(
        p,
        "a",
        &[
            "sh",
            "-c",
            "cat /proc/$(pidof castra-agent | cut -d' ' -f1)/status",
        ],
    );
    let agent = vm_rss_kib(&ok_stdout(&agent_out));
    let t = Instant::now();
    let out_b = exec(p, "b", &["true"]);
    assert!(out_b.status.success());
    eprintln!(
        "after {} MiB of output: RSS castra {castra} KiB, broker {broker} KiB, agent {agent} KiB; exec on b meanwhile {:?}",
        got >> 20,
        t.elapsed()
    );
    for (who, kib) in [("castra", castra), ("broker", broker), ("agent", agent)] {
        assert!(kib < 48 * 1024, "{who} RSS {kib} KiB");
    }
    drop(out);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(141), "closed stdout ends like SIGPIPE");
}

fn impostors_refused(p: &Project, port: u16) {
    let token_b = std::fs::read_to_string(p.path().join(".castra/vms/b/token")).unwrap();
    for hello in [
        format!(
            "hello vm:a capabilities=stream-v1 token=wrong stream={}\n",
            "0".repeat(32)
        ),
        format!(
            "hello vm:b capabilities=stream-v1 token={} stream={}\n",
            token_b.trim(),
            "f".repeat(32)
        ),
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(hello.as_bytes()).unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        assert!(text.contains("error: unknown_stream"), "{text}");
    }
    let events = std::fs::read_to_string(p.path().join(".castra/broker/events.jsonl")).unwrap();
    assert!(events.contains("\"event\":\"stream_refused\""), "{events}");
}

fn events_recorded(p: &Project) {
    let events = std::fs::read_to_string(p.path().join(".castra/broker/events.jsonl")).unwrap();
    let closed: Vec<serde_json::Value> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "stream_closed")
        .collect();
    let exit3 = closed
        .iter()
        .find(|e| e["argv"] == serde_json::json!(["sh", "-c", "exit 3"]))
        .expect("exit 3 recorded");
    assert_eq!(exit3["exit_code"], 3);
    assert_eq!(exit3["kind"], "exec");
    assert!(
        closed
            .iter()
            .any(|e| e["kind"] == "cp_in" && e["path"] == "/tmp/in")
    );
    assert!(!events.contains("hi there"), "env values never recorded");
}

#[test]
fn exec_shell_cp_wait() {
    common::ensure_image();
    let port = common::free_port();
    let p = Project::new(&config(port));

    // Not running yet: a clear castra failure (125), not a command result.
    let out = exec(&p, "a", &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("is not running"), "{}", stderr(&out));

    let out = p.castra(&["apply", "--wait"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("ready: a, b"), "{}", stdout(&out));
    let out = p.castra(&["wait", "a", "b", "--for", "reachable", "--timeout", "10s"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = exec(&p, "ghost", &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("no VM named \"ghost\""),
        "{}",
        stderr(&out)
    );

    bytes_and_codes(&p);
    several_vms(&p);
    signals_leave_nothing(&p);
    copies(&p);
    shell_in_tmux(&p);
    bounded_memory(&p);
    impostors_refused(&p, port);
    events_recorded(&p);
    let out = p.castra(&["down"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
