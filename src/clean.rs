//! `castra clean`: remove the state of stopped VMs (overlays, logs, records,
//! stale pidfiles and sockets). Running and broken VMs are never touched.
//!
//! `candidates` decides from an observe; `remove` deletes. The caller holds the
//! project lock so no apply can start a VM in between.

use std::path::PathBuf;

use crate::layout::StateLayout;
use crate::reconcile::observe::{Observed, VmState};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CleanItem {
    pub vm: String,
    pub path: PathBuf,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub vm: String,
    pub state: String,
}

/// What `clean` would remove, and which VMs it leaves alone.
pub fn candidates(layout: &StateLayout, observed: &Observed) -> (Vec<CleanItem>, Vec<Skipped>) {
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for (name, vm) in &observed.vms {
        let dir = layout.vm(name).dir;
        match vm.state {
            VmState::Stopped { .. } => {
                if dir.exists() {
                    items.push(CleanItem {
                        vm: name.clone(),
                        bytes: disk_usage(&dir),
                        path: dir,
                    });
                }
            }
            VmState::Running { .. } | VmState::Broken { .. } | VmState::Unknown { .. } => skipped
                .push(Skipped {
                    vm: name.clone(),
                    state: vm.state.word().into(),
                }),
        }
    }
    (items, skipped)
}

/// Delete the items; returns bytes reclaimed and the errors met.
pub fn remove(items: &[CleanItem]) -> (u64, Vec<String>) {
    let mut reclaimed = 0;
    let mut errors = Vec::new();
    for item in items {
        match std::fs::remove_dir_all(&item.path) {
            Ok(()) => reclaimed += item.bytes,
            Err(e) => errors.push(format!("cannot remove {}: {e}", item.path.display())),
        }
    }
    (reclaimed, errors)
}

pub use crate::fsutil::disk_usage;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::observe::ObservedVm;

    #[test]
    fn only_stopped_vms_are_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StateLayout::new(dir.path());
        let mut observed = Observed::default();
        for (name, state) in [
            (
                "a",
                VmState::Stopped {
                    why: "exited".into(),
                },
            ),
            ("b", VmState::Running { pid: 1 }),
            (
                "c",
                VmState::Broken {
                    reasons: vec!["x".into()],
                },
            ),
        ] {
            let p = layout.vm(name);
            std::fs::create_dir_all(&p.dir).unwrap();
            std::fs::write(p.serial_log(), vec![b'x'; 10_000]).unwrap();
            observed.vms.insert(
                name.into(),
                ObservedVm {
                    name: name.into(),
                    state,
                    record: None,
                    host: None,
                },
            );
        }
        let (items, skipped) = candidates(&layout, &observed);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].vm, "a");
        assert!(items[0].bytes >= 10_000, "{}", items[0].bytes);
        assert_eq!(
            skipped.iter().map(|s| s.vm.as_str()).collect::<Vec<_>>(),
            ["b", "c"]
        );
        let (reclaimed, errors) = remove(&items);
        assert!(errors.is_empty());
        assert_eq!(reclaimed, items[0].bytes);
        assert!(!layout.vm("a").dir.exists());
        assert!(layout.vm("b").dir.exists());
    }
}
