//! The real `castra` binary in a temp directory: init, plan exit codes,
//! config errors, status on a fresh project, help texts. No VM is started.

mod common;

use common::{Project, stderr, stdout, vm};

#[test]
fn init_writes_a_config_that_plans_two_starts() {
    let p = Project::new("");
    std::fs::remove_file(p.path().join("castra.toml")).unwrap();
    // With no image built, init says to build it first.
    let empty_cache = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::castra_bin())
        .arg("init")
        .current_dir(p.path())
        .env("CASTRA_CACHE_DIR", empty_cache.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("next: `castra image build` (once)"),
        "{}",
        stdout(&out)
    );
    assert!(p.path().join("castra.toml").exists());
    // A second init refuses to overwrite.
    let out = p.castra(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));

    // init chose this project's own port block (17000..24999), free right now.
    let path = p.path().join("castra.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let port: u16 = text
        .lines()
        .find_map(|l| l.strip_prefix("port = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no [broker] port in {text}"));
    assert!((17000..=24999).contains(&port), "{port}");
    assert!(
        text.contains(&format!("forwards = [\"{}:80\"]", port + 1)),
        "{text}"
    );

    let out = p.castra(&["plan"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.contains("+ start web"), "{text}");
    assert!(text.contains("+ start db"), "{text}");

    let plan = p.json(&["plan", "--json"]);
    assert_eq!(plan["changes"], true);
    assert_eq!(plan["steps"].as_array().unwrap().len(), 2);

    // --dry-run shows the same plan and exits 0.
    let out = p.castra(&["apply", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("+ start web"));
}

#[test]
fn config_errors_name_file_line_and_fix() {
    let p = Project::new("[[vms]]\nname = \"web\"\nmemroy = \"1G\"\n");
    let out = p.castra(&["plan"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("castra.toml:3"), "{err}");
    assert!(err.contains("memory"), "did-you-mean missing: {err}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn missing_config_says_how_to_make_one() {
    let p = Project::new("");
    std::fs::remove_file(p.path().join("castra.toml")).unwrap();
    let out = p.castra(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("castra init"), "{}", stderr(&out));
}

#[test]
fn status_of_a_fresh_project_is_all_stopped() {
    let p = Project::new(
        "[project]\nname = \"fresh\"\n[[vms]]\nname = \"web\"\nforwards = [\"18080:80\"]\n",
    );
    let s = p.json(&["status", "--json"]);
    assert_eq!(s["project"], "fresh");
    assert_eq!(s["broker"]["state"], "offline");
    let web = vm(&s, "web");
    assert_eq!(web["state"], "stopped");
    assert_eq!(web["pid"], serde_json::Value::Null);
    assert_eq!(web["forwards"][0], "127.0.0.1:18080->80/tcp");
    let table = stdout(&p.castra(&["status"]));
    assert!(
        table.contains("VM") && table.contains("FORWARDS"),
        "{table}"
    );
    assert!(
        table.contains("web") && table.contains("stopped"),
        "{table}"
    );
}

#[test]
fn down_with_nothing_running_and_unknown_vms() {
    let p = Project::new("[[vms]]\nname = \"web\"\n");
    let out = p.castra(&["down"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("nothing to stop"), "{}", stdout(&out));
    let out = p.castra(&["down", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("\"nope\""), "{}", stderr(&out));
}

#[test]
fn a_taken_host_port_is_caught_at_plan_time() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let p = Project::new(&format!(
        "[[vms]]\nname = \"web\"\nforwards = [\"{port}:80\"]\n"
    ));
    let out = p.castra(&["plan"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("already in use"), "{err}");
    // Who holds it (this test process) and where castra.toml asks for it.
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert!(err.contains("--> castra.toml:3:13"), "{err}");
    assert!(err.contains("apply would refuse"), "{err}");
}

#[test]
fn bad_accel_env_is_an_error() {
    let p = Project::new("[[vms]]\nname = \"web\"\n");
    let out = std::process::Command::new(common::castra_bin())
        .arg("status")
        .current_dir(p.path())
        .env("CASTRA_ACCEL", "warp")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("CASTRA_ACCEL"), "{}", stderr(&out));
}

#[test]
fn help_documents_exit_codes_and_the_status_legend() {
    let p = Project::new("");
    let help = stdout(&p.castra(&["--help"]));
    assert!(help.contains("Exit codes"), "{help}");
    let help = stdout(&p.castra(&["status", "--help"]));
    assert!(
        help.contains("FORWARDS") && help.contains("uptime_s"),
        "{help}"
    );
}

#[test]
fn clean_dry_run_on_fresh_project() {
    let p = Project::new("[[vms]]\nname = \"web\"\n");
    let c = p.json(&["clean", "--dry-run", "--json"]);
    assert_eq!(c["dry_run"], true);
    assert_eq!(c["reclaimed_bytes"], 0);
}

#[test]
fn output_cut_short_by_its_reader_ends_quietly() {
    // `castra plan | head -0`: the reader is gone before castra writes.
    let p = Project::new("[project]\nname = \"pipe\"\n[[vms]]\nname = \"web\"\n");
    // Plan and status, text and JSON: each write meets EPIPE, which castra
    // recognises by its kind (not a panic, not a signal) and ends with 0.
    for args in [
        &["plan"][..],
        &["plan", "--json"],
        &["status"],
        &["status", "--json"],
        &["apply", "--dry-run"],
    ] {
        // A pipe whose read end is closed before castra starts: every write
        // fails with EPIPE, whatever the timing.
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        drop(read_end);
        let out = std::process::Command::new(common::castra_bin())
            .args(args)
            .current_dir(p.path())
            .stdout(std::process::Stdio::from(write_end))
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "castra {args:?}: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

#[test]
fn the_original_castras_up_points_to_apply() {
    let p = Project::new("");
    let out = p.castra(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("run `castra apply`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_launch_input_is_located_and_apply_changes_nothing() {
    let p = Project::new(&format!(
        "[broker]\nport = {}\n\n[[vms]]\nname = \"web\"\nimage = {{ kernel = \"boot/vmlinux\" }}\n",
        common::free_port()
    ));
    let out = p.castra(&["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("image.kernel"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("--> castra.toml:6:20"), "{err}");
    let plan = p.json(&["plan", "--json"]);
    assert_eq!(plan["problems"][0]["line"], 6, "{plan}");
    let out = p.castra(&["apply"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    // Nothing started: no broker pidfile, no VM directory.
    assert!(!p.path().join(".castra/broker/broker.pid").exists());
    assert!(!p.path().join(".castra/vms/web").exists());
}

#[test]
fn image_prune_removes_old_builds_but_never_one_in_use() {
    let cache = tempfile::tempdir().unwrap();
    let root = cache.path();
    for key in ["aaa", "bbb", "ccc"] {
        std::fs::create_dir_all(root.join("images").join(key)).unwrap();
        std::fs::write(root.join("images").join(key).join("vmlinux"), [7u8; 10_000]).unwrap();
    }
    std::fs::write(root.join("images/current"), "ccc\n").unwrap();
    // A running process whose command line names build "aaa" (as a QEMU would).
    let kernel = root.join("images/aaa/vmlinux");
    let mut holder = std::process::Command::new("sh")
        .args(["-c", "read line"])
        .arg(&kernel)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let prune = |args: &[&str]| {
        let out = std::process::Command::new(common::castra_bin())
            .args(["image", "prune"])
            .args(args)
            .env("CASTRA_CACHE_DIR", root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let dry = prune(&["--dry-run", "--json"]);
    assert_eq!(dry["removed"].as_array().unwrap().len(), 1, "{dry}");
    assert!(
        dry["removed"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("images/bbb")
    );
    assert!(
        root.join("images/bbb").exists(),
        "a dry run removed something"
    );
    let done = prune(&["--json"]);
    assert!(
        done["reclaimed_bytes"].as_u64().unwrap() >= 10_000,
        "{done}"
    );
    assert!(!root.join("images/bbb").exists());
    assert!(kernel.exists() && root.join("images/ccc/vmlinux").exists());
    drop(holder.stdin.take());
    holder.wait().unwrap();
    // Nothing runs on "aaa" any more: now it goes too.
    let again = prune(&["--json"]);
    assert_eq!(again["removed"].as_array().unwrap().len(), 1, "{again}");
    assert!(!kernel.exists());
}

#[test]
fn completions_and_man_pages_cover_every_command() {
    let p = Project::new("");
    for shell in ["bash", "zsh", "fish"] {
        let out = p.castra(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for word in ["apply", "exec", "shell", "cp", "wait", "publish"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
        // The hidden `broker` is not offered: none of its own flags is there.
        for flag in ["--state-root", "--allow-tokenless-handshake"] {
            assert!(
                !script.contains(flag),
                "{shell} offers the hidden broker's {flag}"
            );
        }
    }
    let out = p.castra(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    let dir = p.path().join("man");
    let out = p.castra(&["man", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for page in [
        "castra",
        "castra-apply",
        "castra-exec",
        "castra-bus-publish",
    ] {
        let text = std::fs::read_to_string(dir.join(format!("{page}.1")))
            .unwrap_or_else(|e| panic!("{page}.1: {e}"));
        assert!(text.contains(".TH"), "{page}.1 is not roff");
    }
    assert!(
        !dir.join("castra-broker.1").exists(),
        "the hidden broker has no page"
    );
    let exec = std::fs::read_to_string(dir.join("castra-exec.1")).unwrap();
    assert!(
        exec.contains("125"),
        "castra-exec.1 documents the exit codes"
    );
    let out = p.castra(&["man"]);
    assert!(stdout(&out).contains(".TH castra 1"), "{}", stdout(&out));
}

#[test]
fn usage_errors_are_not_mistaken_for_plan_or_a_guest_command() {
    let p = Project::new("");
    // 2 is `plan`'s "changes pending": a typo must not look like that.
    let out = p.castra(&["plan", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--no-such-flag"), "{}", stderr(&out));
    // exec/shell/cp pass the guest's code through; castra's own is 125.
    for args in [
        &["exec", "--no-such-flag", "web", "--", "true"][..],
        &["shell", "--no-such-flag", "web"][..],
        &["cp", "only-one-argument"][..],
    ] {
        let out = p.castra(args);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {}", stderr(&out));
    }
    let out = p.castra(&["exec", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
