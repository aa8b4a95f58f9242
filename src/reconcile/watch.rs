//! `apply --watch`: re-reconcile when castra.toml changes (notify) and when a
//! declared VM dies (a quick observe every poll interval). Level-triggered: each
//! round is a full apply that does not care why it runs.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::observe::{Depth, VmState};

/// How often the watcher looks for dead VMs.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Editors write files in bursts; wait this long for the burst to end.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Why a watch round runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    ConfigChanged,
    VmDied(String),
}

impl Trigger {
    pub fn words(&self) -> String {
        match self {
            Trigger::ConfigChanged => "castra.toml changed".into(),
            Trigger::VmDied(vm) => format!("vm {vm:?} is no longer running"),
        }
    }
}

/// Block until something calls for another round. `running` names the VMs
/// that were running after the last round; `load_running` re-observes them.
pub fn wait_for_trigger(
    config: &Path,
    running: &[String],
    observe_running: &mut dyn FnMut() -> Vec<(String, VmState)>,
) -> Result<Trigger, notify::Error> {
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && (ev.kind.is_modify() || ev.kind.is_create() || ev.kind.is_remove())
        {
            let _ = tx.send(ev.paths);
        }
    })?;
    // Watch the directory: editors replace the file by rename.
    let dir = config.parent().unwrap_or(Path::new("."));
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let file_name = config.file_name();
    loop {
        match rx.recv_timeout(POLL_INTERVAL) {
            Ok(paths) => {
                if paths.iter().any(|p| p.file_name() == file_name) {
                    std::thread::sleep(DEBOUNCE);
                    while rx.try_recv().is_ok() {}
                    return Ok(Trigger::ConfigChanged);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                for (name, state) in observe_running() {
                    if running.contains(&name)
                        && !matches!(state, VmState::Running { .. } | VmState::Unknown { .. })
                    {
                        return Ok(Trigger::VmDied(name));
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(Trigger::ConfigChanged),
        }
    }
}

/// The depth watch uses between rounds: never block on a frozen QEMU.
pub const WATCH_DEPTH: Depth = Depth::Quick;
