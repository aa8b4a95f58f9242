//! The broker's host poller: while the broker runs, every libvirt host of the
//! project (`hosts/targets.json`, written by apply) is listed about once a
//! second, each on a thread of its own with a deadline, and what it showed is
//! left in `hosts/host-<name>.json` for `castra status` to read. A host that
//! does not answer only ages its own snapshot; the others stay fresh.
//!
//! Runs on threads of its own, never on the broker's executor.

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::layout::StateLayout;
use crate::libvirt::Host;
use crate::libvirt::snapshot::{self, POLL_DEADLINE};

/// How often each host is asked.
pub const POLL_PERIOD: Duration = Duration::from_secs(1);

/// Start the poller (detached; it lives as long as the broker process).
pub fn spawn(layout: &StateLayout) {
    let layout = layout.clone();
    let _ = std::thread::Builder::new()
        .name("castra-hosts".into())
        .spawn(move || supervise(&layout));
}

fn supervise(layout: &StateLayout) {
    let mut busy: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
    loop {
        if let Ok(Some(targets)) = snapshot::read_targets(&layout.host_targets()) {
            busy.retain(|_, h| !h.is_finished());
            let idle: Vec<_> = targets
                .hosts
                .iter()
                .filter(|t| !busy.contains_key(&t.name))
                .cloned()
                .collect();
            for t in idle {
                let key = t.name.clone();
                let (names, layout) = (targets.names(), layout.clone());
                let handle = std::thread::Builder::new()
                    .name(format!("castra-host-{}", t.name))
                    .spawn(move || {
                        let host = Host {
                            name: &t.name,
                            uri: &t.uri,
                        };
                        let seen =
                            snapshot::poll(&host, &names, POLL_DEADLINE, crate::events::now_ms());
                        let _ = snapshot::write(&layout.host_snapshot(&t.name), &seen);
                    });
                if let Ok(h) = handle {
                    busy.insert(key, h);
                }
            }
        }
        std::thread::sleep(POLL_PERIOD);
    }
}
