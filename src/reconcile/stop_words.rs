//! Execute's results in words: how a VM was stopped (the shutdown ladder's
//! stages, for events and step details) and where a started VM runs.

use crate::qemu::shutdown::{ShutdownEvent, ShutdownOutcome};

use super::desired::DesiredVm;

/// `pid 4242` for direct QEMU, `on host b` for a libvirt domain.
pub(super) fn launched_words(want: &DesiredVm, pid: i32) -> String {
    match &want.host {
        Some(h) => format!("on host {h}"),
        None => format!("pid {pid}"),
    }
}

pub(super) fn shutdown_words(ev: &ShutdownEvent) -> Option<(&'static str, String)> {
    match ev {
        ShutdownEvent::PowerdownSent => {
            Some(("powerdown", "sent ACPI power button over QMP".into()))
        }
        ShutdownEvent::QmpUnavailable { reason } => Some((
            "powerdown",
            format!("QMP unavailable ({reason}); skipping to SIGTERM"),
        )),
        ShutdownEvent::SigtermSent => Some((
            "sigterm",
            "guest did not power off in time; sent SIGTERM".into(),
        )),
        ShutdownEvent::SigkillSent => Some((
            "sigkill",
            "QEMU did not exit after SIGTERM; sent SIGKILL".into(),
        )),
        ShutdownEvent::Exited { .. } => None,
    }
}

pub(super) fn stage_detail(o: &ShutdownOutcome) -> String {
    format!("stopped by {}", crate::events::stage_words(o.stopped_by))
}
