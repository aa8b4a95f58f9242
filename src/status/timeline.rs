//! The boot timeline of one launch, as `castra status --json` shows it
//! (`vms[].boot_timeline`): QEMU started (host clock, the launch record),
//! the kernel's first message, init, network, agent and hello (guest
//! uptimes the agent sent in its hello), and the broker's handshake (host
//! clock). Guest uptimes are put on the host clock through the hello:
//! `host(t) = handshake - (hello - t)`, so the kernel's first message
//! (uptime 0) lands at `handshake - hello`; the only error is the hello's
//! one-way trip through QEMU's user network (well under a millisecond).
//!
//! Pure: a launch time and the broker's record in, stages out.

use serde::Serialize;

use crate::broker::GuestBoot;

/// The guest marks, in boot order, that the timeline shows.
pub const GUEST_STAGES: &[&str] = &["init", "net", "agent", "hello"];

/// One stage of a boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// `qemu_started`, `kernel`, `init`, `net`, `agent`, `hello`, `handshake`.
    pub stage: String,
    /// Unix ms on the host clock.
    pub at_ms: u64,
    /// Milliseconds since `qemu_started`.
    pub since_start_ms: i64,
}

/// The stages of the boot that began at `launched_ms`, or `None` when the
/// broker's latest boot record is older than this launch (or carries no
/// `hello` mark to put guest times on the host clock).
pub fn timeline(launched_ms: u64, boot: &GuestBoot) -> Option<Vec<Stage>> {
    if boot.handshake_ms < launched_ms {
        return None;
    }
    let hello = *boot.marks.get("hello")?;
    let on_host =
        |uptime: u64| (boot.handshake_ms as i64 - hello as i64 + uptime as i64).max(0) as u64;
    let stage = |name: &str, at_ms: u64| Stage {
        stage: name.to_owned(),
        at_ms,
        since_start_ms: at_ms as i64 - launched_ms as i64,
    };
    let mut out = vec![
        stage("qemu_started", launched_ms),
        stage("kernel", on_host(0)),
    ];
    for name in GUEST_STAGES {
        if let Some(&uptime) = boot.marks.get(*name) {
            out.push(stage(name, on_host(uptime)));
        }
    }
    out.push(stage("handshake", boot.handshake_ms));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(handshake_ms: u64, marks: &[(&str, u64)]) -> GuestBoot {
        GuestBoot {
            handshake_ms,
            marks: marks.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn guest_uptimes_land_on_the_host_clock_through_the_hello() {
        let b = boot(
            10_900,
            &[("init", 400), ("net", 450), ("agent", 480), ("hello", 600)],
        );
        let t = timeline(10_000, &b).unwrap();
        let shown: Vec<(&str, i64)> = t
            .iter()
            .map(|s| (s.stage.as_str(), s.since_start_ms))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("qemu_started", 0),
                ("kernel", 300),
                ("init", 700),
                ("net", 750),
                ("agent", 780),
                ("hello", 900),
                ("handshake", 900),
            ]
        );
        assert_eq!(t[1].at_ms, 10_300);
    }

    #[test]
    fn an_older_boot_or_one_without_hello_shows_nothing() {
        assert_eq!(timeline(20_000, &boot(10_900, &[("hello", 600)])), None);
        assert_eq!(timeline(10_000, &boot(10_900, &[("init", 400)])), None);
    }

    #[test]
    fn missing_guest_marks_are_left_out_not_invented() {
        let t = timeline(10_000, &boot(10_500, &[("agent", 300), ("hello", 350)])).unwrap();
        let names: Vec<&str> = t.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(
            names,
            ["qemu_started", "kernel", "agent", "hello", "handshake"]
        );
    }
}
