//! The host side of bootstrap: resolve each VM's plan to shell text (reads
//! script files), decide what this apply runs (the pure table in `decide`),
//! and run one request to its end through the broker: wait until the guest
//! holds a subscribed bus session of its current launch, publish the request
//! on `vm:<name>`, follow the VM's durable bus log for its reports (the
//! crate's one follower, across rotations), write
//! the run log (secrets masked) and `bootstrap.json`, emit events.
//!
//! It reads the broker's files (state.json, the bus log) and publishes
//! through the host socket; it never opens a bus session of its own.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use super::decide::{self, Decision, Launch, Pending};
use super::record::{self, BootstrapRecord, RunState};
use super::redact::{redact, secret_values};
use super::wire::{self, Report, Request, RunStatus};
use crate::broker::buslog::follow::Follower;
use crate::broker::wire::frame::DEFAULT_FRAME_LIMIT;
use crate::broker::{host_client, read_snapshot};
use crate::config::{BootstrapKind, BootstrapSpec, Project};
use crate::events::{Event, Reporter, fmt_ms, now_ms};
use crate::layout::{StateLayout, VmPaths};

/// The largest shell text sent (the request must fit one bus frame).
pub const MAX_SCRIPT_BYTES: usize = 48 * 1024;
/// Republish the request when the guest has not said `started` for this long.
pub const RESEND_AFTER: Duration = Duration::from_secs(10);
/// A progress line at least this often while waiting.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Extra time the host waits past the run's own timeout (delivery, reports).
pub const WAIT_GRACE: Duration = Duration::from_secs(60);

/// One VM's bootstrap, resolved to what the guest runs.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub vm: String,
    pub spec: BootstrapSpec,
    /// The shell text, or why there is none (an unreadable script).
    pub script: Result<String, String>,
    pub fingerprint: String,
}

/// `nix run 'ref'` / `nixos-rebuild switch --flake 'ref'` / the script's text.
pub fn shell_text(kind: &BootstrapKind) -> Result<String, String> {
    let text = match kind {
        BootstrapKind::Script { path } => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read bootstrap script {}: {e}", path.display()))?,
        BootstrapKind::Run { command } => command.clone(),
        BootstrapKind::Flake { reference } => format!("nix run {}", sh_quote(reference)),
        BootstrapKind::Nixos { reference } => {
            format!("nixos-rebuild switch --flake {}", sh_quote(reference))
        }
    };
    if text.len() > MAX_SCRIPT_BYTES {
        return Err(format!(
            "the bootstrap is {} bytes; at most {MAX_SCRIPT_BYTES} fit one bus message (ship a larger script in the image or a flake)",
            text.len()
        ));
    }
    Ok(text)
}

/// Single-quote for `/bin/sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Every VM's bootstrap with its shell text and fingerprint, config order.
pub fn resolve(project: &Project) -> Vec<Resolved> {
    project
        .vms
        .iter()
        .filter_map(|vm| project.bootstraps.get(&vm.name).map(|s| (vm, s)))
        .map(|(vm, spec)| {
            let script = shell_text(&spec.kind);
            let text = script.as_deref().unwrap_or("");
            Resolved {
                vm: vm.name.clone(),
                fingerprint: decide::fingerprint(spec.kind.word(), text, &spec.env),
                spec: spec.clone(),
                script,
            }
        })
        .collect()
}

/// The bootstraps this apply runs (pure: records and launches passed in).
pub fn pending(
    resolved: &[Resolved],
    launches: &BTreeMap<String, Launch>,
    records: &BTreeMap<String, BootstrapRecord>,
) -> Vec<Pending> {
    resolved
        .iter()
        .filter_map(|r| {
            let launch = launches.get(&r.vm).copied().unwrap_or(Launch::Starting);
            match decide::decide(r.spec.mode, &r.fingerprint, launch, records.get(&r.vm)) {
                Decision::Run(why) => Some(Pending {
                    vm: r.vm.clone(),
                    kind: r.spec.kind.word().to_owned(),
                    why,
                    fingerprint: r.fingerprint.clone(),
                }),
                Decision::Skip(_) => None,
            }
        })
        .collect()
}

/// Every VM's last record (unreadable ones count as absent: they rerun).
pub fn read_records(
    layout: &StateLayout,
    resolved: &[Resolved],
) -> BTreeMap<String, BootstrapRecord> {
    resolved
        .iter()
        .filter_map(|r| {
            let rec = record::read(&layout.vm(&r.vm).bootstrap_record()).ok()??;
            Some((r.vm.clone(), rec))
        })
        .collect()
}

/// What one run came to.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub vm: String,
    pub run: String,
    pub ok: bool,
    /// `ok`, or why it failed.
    pub detail: String,
    pub elapsed: Duration,
    pub log: PathBuf,
}

/// Run every pending bootstrap in parallel; `launches` holds each VM's
/// current `launched_at_ms`; `wait` overrides each run's host-side bound.
pub fn run_all(
    project: &Project,
    resolved: &[Resolved],
    pending: &[Pending],
    launches: &BTreeMap<String, u64>,
    wait: Option<Duration>,
    reporter: &Reporter,
) -> Vec<RunOutcome> {
    let layout = StateLayout::new(&project.state_root);
    std::thread::scope(|s| {
        let handles: Vec<_> = pending
            .iter()
            .filter_map(|p| resolved.iter().find(|r| r.vm == p.vm).map(|r| (p, r)))
            .map(|(p, r)| {
                let layout = &layout;
                let launch_ms = launches.get(&p.vm).copied().unwrap_or(0);
                s.spawn(move || run_one(layout, r, p, launch_ms, wait, reporter))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}

/// The run log: every line masked before it is written.
struct RunLog {
    file: Option<File>,
    secrets: Vec<String>,
}

impl RunLog {
    fn line(&mut self, text: &str) {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{}", redact(text, &secrets));
        }
    }
    fn masked(&self, text: &str) -> String {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        redact(text, &secrets)
    }
}

fn run_one(
    layout: &StateLayout,
    r: &Resolved,
    p: &Pending,
    launch_ms: u64,
    wait: Option<Duration>,
    reporter: &Reporter,
) -> RunOutcome {
    let t0 = Instant::now();
    let vm = &r.vm;
    let paths = layout.vm(vm);
    let started_ms = now_ms();
    let run = format!("{started_ms}-{}", r.fingerprint);
    let rel_log = VmPaths::bootstrap_log_rel(&run);
    let log_path = paths.dir.join(&rel_log);
    let _ = std::fs::create_dir_all(paths.bootstrap_dir());
    let mut log = RunLog {
        file: File::create(&log_path).ok(),
        secrets: secret_values(&r.spec.env, &r.spec.secret_env)
            .into_iter()
            .map(str::to_owned)
            .collect(),
    };
    let mut rec = BootstrapRecord {
        run: run.clone(),
        state: RunState::Running,
        fingerprint: r.fingerprint.clone(),
        mode: r.spec.mode,
        kind: r.spec.kind.word().to_owned(),
        launch_ms,
        started_ms,
        finished_ms: None,
        exit_code: None,
        error: None,
        log: rel_log,
    };
    let _ = record::write(&paths.bootstrap_record(), &rec);
    reporter.emit(Event::BootstrapPlanned {
        vm: vm.clone(),
        run: run.clone(),
        why: p.why.to_string(),
    });
    log.line(&format!(
        "# castra bootstrap {run} of vm {vm}: {} ({}), fingerprint {}",
        r.spec.kind.word(),
        p.why,
        r.fingerprint
    ));
    let bound = wait.unwrap_or(r.spec.timeout + WAIT_GRACE);
    let result = deliver_and_follow(layout, r, &run, launch_ms, bound, &mut log, reporter);
    let (state, detail, exit_code) = match &result {
        Ok((RunStatus::Ok, code)) => (RunState::Ok, "ok".to_owned(), *code),
        Ok((_, code)) | Err((_, code)) => (
            RunState::Failed,
            match &result {
                Err((why, _)) => why.clone(),
                Ok(_) => "failed".to_owned(),
            },
            *code,
        ),
    };
    let detail = log.masked(&detail);
    log.line(&format!(
        "# {}: {detail} after {}",
        state.as_str(),
        fmt_ms(t0.elapsed().as_millis() as u64)
    ));
    rec.state = state;
    rec.finished_ms = Some(now_ms());
    rec.exit_code = exit_code;
    rec.error = (state != RunState::Ok).then(|| detail.clone());
    let _ = record::write(&paths.bootstrap_record(), &rec);
    let elapsed = t0.elapsed();
    match state {
        RunState::Ok => reporter.emit(Event::BootstrapCompleted {
            vm: vm.clone(),
            run: run.clone(),
            elapsed: elapsed.as_millis() as u64,
        }),
        RunState::Failed | RunState::Running => reporter.emit(Event::BootstrapFailed {
            vm: vm.clone(),
            run: run.clone(),
            error: detail.clone(),
            log: log_path.display().to_string(),
        }),
    }
    RunOutcome {
        vm: vm.clone(),
        run,
        ok: state == RunState::Ok,
        detail,
        elapsed,
        log: log_path,
    }
}

type Failure = (String, Option<i32>);

/// Wait for the guest, publish, follow the reports until `Finished` or the bound.
fn deliver_and_follow(
    layout: &StateLayout,
    r: &Resolved,
    run: &str,
    launch_ms: u64,
    bound: Duration,
    log: &mut RunLog,
    reporter: &Reporter,
) -> Result<(RunStatus, Option<i32>), Failure> {
    let vm = &r.vm;
    let script = r.script.clone().map_err(|e| (e, None))?;
    let deadline = Instant::now() + bound;
    let t0 = Instant::now();
    let mut said = Instant::now();
    // 1. The guest of this launch holds a subscribed bus session.
    loop {
        let entry = read_snapshot(&layout.broker_state())
            .ok()
            .flatten()
            .and_then(|s| s.vms.get(vm).cloned());
        let ready = entry.is_some_and(|e| {
            e.bus_subscribed
                && e.sessions > 0
                && e.last_handshake_ms.is_some_and(|t| t >= launch_ms)
        });
        if ready {
            break;
        }
        if Instant::now() >= deadline {
            return Err((
                format!(
                    "the guest never held a bus session within {} (see `castra logs {vm}`)",
                    fmt_ms(bound.as_millis() as u64)
                ),
                None,
            ));
        }
        if said.elapsed() >= PROGRESS_EVERY {
            reporter.progress(&format!(
                "{vm}: bootstrap waiting for the guest's bus session ({}s)",
                t0.elapsed().as_secs()
            ));
            said = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // 2. The request, secrets sealed with this launch's token.
    let token = crate::broker::token::read_token(&layout.vm(vm).token()).ok_or_else(|| {
        let at = layout.vm(vm).token();
        (
            format!("no token in {} (is the VM running?)", at.display()),
            None,
        )
    })?;
    let mut env = BTreeMap::new();
    let mut sealed_env = BTreeMap::new();
    for (k, v) in &r.spec.env {
        if r.spec.secret_env.contains(k) {
            sealed_env.insert(k.clone(), wire::seal(&token, run, k, v));
        } else {
            env.insert(k.clone(), v.clone());
        }
    }
    let request = Request {
        run: run.to_owned(),
        kind: r.spec.kind.word().to_owned(),
        script,
        env,
        sealed_env,
        timeout_ms: r.spec.timeout.min(bound).as_millis() as u64,
    };
    // Only reports from now on, followed across the log's rotations.
    let mut reports = Follower::at_end(layout.bus_vm_log(vm))
        .map_err(|e| (format!("following the guest's reports: {e}"), None))?;
    let publish = || {
        host_client::publish(
            &layout.broker_socket(),
            &format!("vm:{vm}"),
            wire::payload(&request),
            Some(json!(format!("bootstrap-{run}"))),
            DEFAULT_FRAME_LIMIT as usize,
        )
        .map_err(|e| (format!("publishing the request: {e}"), None))
    };
    publish()?;
    reporter.emit(Event::BootstrapStarted {
        vm: vm.clone(),
        run: run.to_owned(),
    });
    // 3. Follow the VM's durable bus log for this run's reports.
    let mut started = false;
    let mut sent_at = Instant::now();
    let mut last_output = Instant::now();
    loop {
        // A read error is retried at the next look, until the deadline.
        for rec in reports.poll_records().unwrap_or_default() {
            if rec.topic != wire::TOPIC {
                continue;
            }
            let Some(report) = wire::parse_report(&rec.payload) else {
                continue;
            };
            if report.run() != run {
                continue;
            }
            match report {
                Report::Started { .. } => {
                    started = true;
                    log.line("# started in the guest");
                }
                Report::Output { lines, .. } => {
                    started = true;
                    for line in lines {
                        log.line(&line);
                        reporter.progress(&format!("{vm} | {}", log.masked(&line)));
                    }
                    last_output = Instant::now();
                }
                Report::Finished {
                    status,
                    exit_code,
                    truncated,
                    output_bytes,
                    elapsed_ms,
                    error,
                    ..
                } => {
                    log.line(&format!(
                        "# guest: {} exit_code={} output_bytes={output_bytes}{} in {}",
                        match status {
                            RunStatus::Ok => "ok",
                            RunStatus::Failed => "failed",
                            RunStatus::Timeout => "timeout",
                        },
                        exit_code.map_or("none".to_owned(), |c| c.to_string()),
                        if truncated { " (truncated)" } else { "" },
                        fmt_ms(elapsed_ms)
                    ));
                    return match status {
                        RunStatus::Ok => Ok((status, exit_code)),
                        _ => Err((error.unwrap_or_else(|| "failed".into()), exit_code)),
                    };
                }
            }
        }
        if Instant::now() >= deadline {
            return Err((
                format!(
                    "no result within {} ({}; raise --bootstrap-timeout)",
                    fmt_ms(bound.as_millis() as u64),
                    if started {
                        "it started in the guest"
                    } else {
                        "the guest never started it"
                    }
                ),
                None,
            ));
        }
        if !started && sent_at.elapsed() >= RESEND_AFTER {
            // Lost if the agent was between sessions; it runs an id only once.
            publish()?;
            sent_at = Instant::now();
        }
        if last_output.elapsed() >= PROGRESS_EVERY && said.elapsed() >= PROGRESS_EVERY {
            reporter.progress(&format!(
                "{vm}: bootstrap {} ({}s)",
                if started {
                    "running"
                } else {
                    "waiting for the guest to start it"
                },
                t0.elapsed().as_secs()
            ));
            said = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BootstrapMode;

    fn resolved(vm: &str, mode: BootstrapMode, command: &str) -> Resolved {
        let spec = BootstrapSpec {
            kind: BootstrapKind::Run {
                command: command.into(),
            },
            mode,
            env: BTreeMap::new(),
            secret_env: Default::default(),
            timeout: Duration::from_secs(60),
        };
        Resolved {
            vm: vm.into(),
            fingerprint: decide::fingerprint("run", command, &spec.env),
            spec,
            script: Ok(command.into()),
        }
    }

    #[test]
    fn shell_text_per_kind() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s.sh");
        std::fs::write(&script, "echo from file\n").unwrap();
        let cases = [
            (BootstrapKind::Script { path: script }, "echo from file\n"),
            (
                BootstrapKind::Run {
                    command: "true".into(),
                },
                "true",
            ),
            (
                BootstrapKind::Flake {
                    reference: "./guest#it's".into(),
                },
                r"nix run './guest#it'\''s'",
            ),
            (
                BootstrapKind::Nixos {
                    reference: "/etc/nixos#web".into(),
                },
                "nixos-rebuild switch --flake '/etc/nixos#web'",
            ),
        ];
        for (kind, want) in cases {
            assert_eq!(shell_text(&kind).unwrap(), want);
        }
        let missing = shell_text(&BootstrapKind::Script {
            path: dir.path().join("none.sh"),
        })
        .unwrap_err();
        assert!(
            missing.starts_with("cannot read bootstrap script "),
            "{missing}"
        );
        let big = shell_text(&BootstrapKind::Run {
            command: "x".repeat(MAX_SCRIPT_BYTES + 1),
        })
        .unwrap_err();
        assert!(big.contains("fit one bus message"), "{big}");
    }

    #[test]
    fn pending_lists_what_runs_and_why() {
        let rs = vec![
            resolved("a", BootstrapMode::Auto, "echo a"),
            resolved("b", BootstrapMode::Auto, "echo b"),
            resolved("c", BootstrapMode::Skip, "echo c"),
            resolved("d", BootstrapMode::Always, "echo d"),
            resolved("e", BootstrapMode::Auto, "echo e2"),
        ];
        let launches: BTreeMap<String, Launch> = [
            ("a", Launch::Running { launched_ms: 1 }),
            ("b", Launch::Running { launched_ms: 1 }),
            ("d", Launch::Running { launched_ms: 1 }),
            ("e", Launch::Running { launched_ms: 1 }),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let done = |vm: &str, fp: &str| BootstrapRecord {
            run: "r".into(),
            state: RunState::Ok,
            fingerprint: fp.into(),
            mode: BootstrapMode::Auto,
            kind: "run".into(),
            launch_ms: 1,
            started_ms: 0,
            finished_ms: Some(1),
            exit_code: Some(0),
            error: None,
            log: format!("bootstrap/{vm}.log"),
        };
        let records: BTreeMap<String, BootstrapRecord> = [
            ("b".to_owned(), done("b", &rs[1].fingerprint)),
            ("d".to_owned(), done("d", &rs[3].fingerprint)),
            ("e".to_owned(), done("e", "old")),
        ]
        .into();
        let text: Vec<String> = pending(&rs, &launches, &records)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            text,
            [
                "> bootstrap a (auto: never ran, run)",
                "> bootstrap d (always, run)",
                "> bootstrap e (auto: plan changed, run)",
            ]
        );
    }
}
