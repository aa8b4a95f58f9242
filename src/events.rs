//! Structured events: what castra did, for humans (stderr) and machines
//! (`<state_root>/events.jsonl`, one JSON object a line).
//!
//! A [`Reporter`] is handed to long-running work (apply, down) so progress is
//! shown as it happens. This module formats and appends; it decides nothing.

use serde::Serialize;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::qemu::shutdown::Stage;

/// One thing that happened to a VM or the project.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// `auto` was resolved to a concrete accelerator.
    AccelChosen { accel: String, reason: String },
    /// QEMU is being started for a VM.
    VmStarting { vm: String },
    /// QEMU daemonized and reports the VM running.
    VmRunning {
        vm: String,
        pid: i32,
        accel: String,
        #[serde(rename = "elapsed_ms")]
        elapsed: u64,
    },
    /// A VM failed to start.
    VmStartFailed { vm: String, error: String },
    /// A shutdown-ladder stage was entered.
    ShutdownStage {
        vm: String,
        stage: String,
        detail: String,
    },
    /// The VM is gone; `stopped_by` names the ladder stage that stopped it.
    VmStopped {
        vm: String,
        stopped_by: Stage,
        #[serde(rename = "elapsed_ms")]
        elapsed: u64,
    },
    /// A VM failed to stop.
    VmStopFailed { vm: String, error: String },
    /// A restart's new spec failed after the old VM stopped; the VM was
    /// started again on the spec it ran before (`error`: why the new one failed).
    VmRolledBack { vm: String, error: String, pid: i32 },
    /// Fresh observe after execute found nothing left to do.
    Converged { vms: usize },
    /// Fresh observe after execute still found work: not converged.
    NotConverged { pending: Vec<String> },
    /// The project's broker was started (or found running).
    BrokerStarted { pid: i32, port: u16 },
    /// The broker could not be started.
    BrokerFailed { error: String },
    /// The broker was stopped (no VM runs any more).
    BrokerStopped,
    /// `apply --watch` finished a round and now waits for a change of
    /// `config` or the death of one of `vms` (the VMs running after the round).
    Watching { config: String, vms: Vec<String> },
    /// `apply --watch` noticed something and reconciles again.
    WatchTriggered { cause: String },
    /// apply will run this VM's bootstrap (`why`: the mode decision).
    BootstrapPlanned {
        vm: String,
        run: String,
        why: String,
    },
    /// The request went to the guest.
    BootstrapStarted { vm: String, run: String },
    /// The guest ran it: exit code 0.
    BootstrapCompleted {
        vm: String,
        run: String,
        #[serde(rename = "elapsed_ms")]
        elapsed: u64,
    },
    /// It failed, timed out or could not be delivered; `log` has the output.
    BootstrapFailed {
        vm: String,
        run: String,
        error: String,
        log: String,
    },
}

impl Event {
    /// The outcome of a stop, as opposed to progress towards it.
    pub fn is_result(&self) -> bool {
        matches!(self, Event::VmStopped { .. } | Event::BrokerStopped)
    }

    /// One line for people.
    pub fn human(&self) -> String {
        match self {
            Event::AccelChosen { accel, reason } => format!("accelerator: {accel} ({reason})"),
            Event::VmStarting { vm } => format!("{vm}: starting"),
            Event::VmRunning {
                vm,
                pid,
                accel,
                elapsed,
            } => format!("{vm}: running (pid {pid}, {accel}) in {}", fmt_ms(*elapsed)),
            Event::VmStartFailed { vm, error } => format!("{vm}: failed to start: {error}"),
            Event::ShutdownStage { vm, stage, detail } => format!("{vm}: {stage}: {detail}"),
            Event::VmStopped {
                vm,
                stopped_by,
                elapsed,
            } => format!(
                "{vm}: stopped by {} in {}",
                stage_words(*stopped_by),
                fmt_ms(*elapsed)
            ),
            Event::VmStopFailed { vm, error } => format!("{vm}: failed to stop: {error}"),
            Event::VmRolledBack { vm, error, pid } => format!(
                "{vm}: rolled back: the new spec failed ({error}); running the previous spec again (pid {pid})"
            ),
            Event::Converged { vms } => format!(
                "launched as declared: {vms} VM(s) match castra.toml (QEMU running; guests may still be booting)"
            ),
            Event::NotConverged { pending } => {
                format!("not converged; still pending: {}", pending.join(", "))
            }
            Event::BrokerStarted { pid, port } => {
                format!("broker: running (pid {pid}, guests reach it at 10.0.2.2:{port})")
            }
            Event::BrokerFailed { error } => format!("broker: failed to start: {error}"),
            Event::BrokerStopped => "broker: stopped".into(),
            Event::Watching { config, vms } => format!(
                "watching {config} and {} VM(s); Ctrl-C to stop watching (VMs keep running)",
                vms.len()
            ),
            Event::WatchTriggered { cause } => format!("watch: {cause}; reconciling"),
            Event::BootstrapPlanned { vm, why, .. } => format!("{vm}: bootstrap planned ({why})"),
            Event::BootstrapStarted { vm, run } => {
                format!("{vm}: bootstrap {run} sent to the guest")
            }
            Event::BootstrapCompleted { vm, elapsed, .. } => {
                format!("{vm}: bootstrap ok in {}", fmt_ms(*elapsed))
            }
            Event::BootstrapFailed { vm, error, log, .. } => {
                format!("{vm}: bootstrap FAILED: {error} (log: {log})")
            }
        }
    }
}

/// How a shutdown stage reads in a sentence.
pub fn stage_words(stage: Stage) -> &'static str {
    match stage {
        Stage::AlreadyStopped => "nothing (it was already stopped)",
        Stage::Powerdown => "ACPI powerdown (cooperative)",
        Stage::Sigterm => "SIGTERM (guest ignored the power button)",
        Stage::Sigkill => "SIGKILL (QEMU ignored SIGTERM)",
        Stage::Destroy => "virsh destroy (guest ignored the power button)",
    }
}

/// `1.25s` / `80ms`
pub fn fmt_ms(ms: u64) -> String {
    if ms >= 1000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

#[derive(Serialize)]
struct Stamped<'a> {
    ts_ms: u64,
    #[serde(flatten)]
    event: &'a Event,
}

/// Where events go: stderr for people (unless quiet), JSON lines to stdout
/// (with `--json`) and always to the state root's events file.
pub struct Reporter {
    file: Option<PathBuf>,
    human: bool,
    json_stdout: bool,
    /// Leave final results (stopped, broker stopped) off stderr: the command
    /// prints its own summary of them on stdout.
    results_on_stdout: bool,
    lock: Mutex<()>,
}

impl Reporter {
    pub fn new(file: Option<PathBuf>, human: bool, json_stdout: bool) -> Self {
        Reporter {
            file,
            human,
            json_stdout,
            results_on_stdout: false,
            lock: Mutex::new(()),
        }
    }

    /// Show progress on stderr but not the final per-VM results, which the
    /// caller prints as its summary (`castra down`).
    pub fn results_on_stdout(mut self) -> Self {
        self.results_on_stdout = true;
        self
    }

    /// A reporter that only records to the events file.
    pub fn quiet(file: Option<PathBuf>) -> Self {
        Reporter::new(file, false, false)
    }

    /// A progress line for people only (stderr, unless quiet); not an event.
    pub fn progress(&self, line: &str) {
        if self.human {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("{line}");
        }
    }

    pub fn emit(&self, event: Event) {
        let line = serde_json::to_string(&Stamped {
            ts_ms: now_ms(),
            event: &event,
        })
        .unwrap_or_default();
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.file {
            // Events are best-effort telemetry: a full disk must not fail an apply.
            if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(f, "{line}");
            }
        }
        if self.json_stdout {
            // Best-effort like the file: a reader gone from stdout meets the
            // command's own output next, which ends it quietly.
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        } else if self.human && !(self.results_on_stdout && event.is_result()) {
            eprintln!("{}", event.human());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_a_type_tag() {
        let e = Event::VmStopped {
            vm: "web".into(),
            stopped_by: Stage::Powerdown,
            elapsed: 412,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"vm_stopped","vm":"web","stopped_by":"powerdown","elapsed_ms":412}"#
        );
        assert_eq!(
            e.human(),
            "web: stopped by ACPI powerdown (cooperative) in 412ms"
        );
    }

    #[test]
    fn reporter_appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let r = Reporter::quiet(Some(path.clone()));
        r.emit(Event::VmStarting { vm: "a".into() });
        r.emit(Event::Converged { vms: 1 });
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "vm_starting");
        assert_eq!(lines[1]["vms"], 1);
        assert!(lines[1]["ts_ms"].as_u64().unwrap() > 1_600_000_000_000);
    }
}
