//! The shutdown ladder for one daemonized QEMU: QMP `system_powerdown`
//! (pressed again every [`POWERDOWN_REPEAT`], since a guest still booting
//! loses the press), then SIGTERM, then SIGKILL, reporting each stage as a
//! [`ShutdownEvent`] and which stage stopped it as a [`Stage`].
//!
//! Not here: finding the process (`process.rs`: identity and `/proc` probes,
//! which this module polls because the QEMU is not our child) and deciding
//! when to stop a VM (reconcile).

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Lifecycle;
use crate::qemu::process::{Liveness, ProcessIdentity, probe};
use crate::qemu::qmp::Qmp;

/// How often exit is polled for.
const POLL: Duration = Duration::from_millis(25);
/// How long a QMP connection may take before the ladder skips to SIGTERM.
const QMP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// The stage of the shutdown ladder that stopped a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// It was not running when shutdown began.
    AlreadyStopped,
    /// The guest powered off after the ACPI power button (cooperative).
    Powerdown,
    Sigterm,
    Sigkill,
    /// A libvirt domain that ignored the power button: `virsh destroy`.
    Destroy,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::AlreadyStopped => "already_stopped",
            Stage::Powerdown => "powerdown",
            Stage::Sigterm => "sigterm",
            Stage::Sigkill => "sigkill",
            Stage::Destroy => "destroy",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Progress of [`shutdown`], in the order it happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ShutdownEvent {
    /// QMP acknowledged `system_powerdown`.
    PowerdownSent,
    /// The power button could not be pressed; the ladder goes on with SIGTERM.
    QmpUnavailable {
        reason: String,
    },
    SigtermSent,
    SigkillSent,
    /// The process is gone (or a zombie); `stage` is what stopped it.
    Exited {
        stage: Stage,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownOutcome {
    pub stopped_by: Stage,
    pub elapsed: Duration,
    /// False only if the process outlived SIGKILL's wait (stuck in the kernel).
    pub exited: bool,
}

/// How often the power button is pressed again while waiting for the guest.
pub const POWERDOWN_REPEAT: Duration = Duration::from_secs(2);

/// Stops the QEMU `id`: QMP `system_powerdown`, up to `powerdown_wait` for it
/// to exit (pressing the button again every [`POWERDOWN_REPEAT`]), SIGTERM,
/// up to `sigterm_wait`, SIGKILL, up to a few seconds.
/// Idempotent: a QEMU that is already gone is `AlreadyStopped`. Signals go
/// only to a process that [`probe`] still calls `Alive`.
pub fn shutdown(
    id: &ProcessIdentity,
    marker: &str,
    qmp_socket: &Path,
    waits: &Lifecycle,
    on_event: &mut dyn FnMut(ShutdownEvent),
) -> ShutdownOutcome {
    let start = Instant::now();
    let done = |stage: Stage, exited: bool, on_event: &mut dyn FnMut(ShutdownEvent)| {
        if exited {
            on_event(ShutdownEvent::Exited { stage });
        }
        ShutdownOutcome {
            stopped_by: stage,
            elapsed: start.elapsed(),
            exited,
        }
    };
    if probe(id, marker) != Liveness::Alive {
        return done(Stage::AlreadyStopped, true, on_event);
    }

    // 1. The ACPI power button.
    let mut last = Stage::AlreadyStopped;
    let pressed =
        Qmp::connect(qmp_socket, QMP_TIMEOUT).and_then(|mut q| q.system_powerdown().map(|()| q));
    match pressed {
        Ok(mut qmp) => {
            on_event(ShutdownEvent::PowerdownSent);
            last = Stage::Powerdown;
            // A guest still booting has no handler for the button yet and the
            // press is lost: press again every POWERDOWN_REPEAT until the wait ends.
            let deadline = start + waits.powerdown_wait;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if wait_exit(id, marker, left.min(POWERDOWN_REPEAT)) {
                    return done(Stage::Powerdown, true, on_event);
                }
                if left <= POWERDOWN_REPEAT {
                    break;
                }
                let _ = qmp.system_powerdown();
            }
        }
        Err(e) => on_event(ShutdownEvent::QmpUnavailable {
            reason: e.to_string(),
        }),
    }

    // 2. SIGTERM (plus SIGCONT, so a stopped QEMU can act on it).
    if !signal_if_alive(id, marker, Signal::SIGTERM) {
        return done(last, true, on_event);
    }
    let _ = kill(Pid::from_raw(id.pid), Signal::SIGCONT);
    on_event(ShutdownEvent::SigtermSent);
    if wait_exit(id, marker, waits.sigterm_wait) {
        return done(Stage::Sigterm, true, on_event);
    }

    // 3. SIGKILL.
    if !signal_if_alive(id, marker, Signal::SIGKILL) {
        return done(Stage::Sigterm, true, on_event);
    }
    on_event(ShutdownEvent::SigkillSent);
    let exited = wait_exit(id, marker, KILL_WAIT);
    done(Stage::Sigkill, exited, on_event)
}

/// Sends `sig` if `id` is still our live QEMU; false if it is not (anymore).
fn signal_if_alive(id: &ProcessIdentity, marker: &str, sig: Signal) -> bool {
    if probe(id, marker) != Liveness::Alive {
        return false;
    }
    match kill(Pid::from_raw(id.pid), sig) {
        Ok(()) => true,
        // ESRCH: it exited in between. EPERM cannot happen for our own QEMU;
        // report it as sent and let the wait decide.
        Err(nix::errno::Errno::ESRCH) => false,
        Err(_) => true,
    }
}

/// Polls until `id` no longer holds anything (gone, zombie, pid reused; not
/// still exiting, so its ports and disk locks are free) or `wait` passes.
fn wait_exit(id: &ProcessIdentity, marker: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if !probe(id, marker).holds_resources() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(POLL.min(left));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_of_a_gone_process_is_already_stopped() {
        let id = ProcessIdentity {
            pid: i32::MAX,
            start_ticks: 1,
        };
        let mut events = Vec::new();
        let waits = Lifecycle {
            powerdown_wait: Duration::from_secs(1),
            sigterm_wait: Duration::from_secs(1),
        };
        let out = shutdown(&id, "x", Path::new("/nonexistent.sock"), &waits, &mut |e| {
            events.push(e)
        });
        assert_eq!(out.stopped_by, Stage::AlreadyStopped);
        assert!(out.exited);
        assert_eq!(
            events,
            vec![ShutdownEvent::Exited {
                stage: Stage::AlreadyStopped
            }]
        );
    }

    #[test]
    fn events_serialize_snake_case() {
        let ev = ShutdownEvent::Exited {
            stage: Stage::AlreadyStopped,
        };
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"event":"exited","stage":"already_stopped"}"#
        );
        assert_eq!(
            serde_json::to_string(&ShutdownEvent::QmpUnavailable { reason: "r".into() }).unwrap(),
            r#"{"event":"qmp_unavailable","reason":"r"}"#
        );
    }
}
