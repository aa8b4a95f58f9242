//! What a launch checks and clears before QEMU starts: the QMP socket path
//! fits a Unix socket address, share directories exist, a QEMU killed a
//! moment ago has released its ports and disk locks, and the previous run's
//! pidfile, socket and launch record are gone (its serial log kept as `.1`).

use std::path::{Path, PathBuf};

use crate::fsutil::remove_if_exists;
use crate::layout::VmPaths;
use crate::qemu::{process, shutdown};

use super::record;
use super::step_error::StepError;

/// A QEMU killed a moment ago may still be releasing its ports and disk
/// locks (its main thread gone, another still exiting); a new one would fail
/// to take them. Waits that out, bounded.
pub(super) fn wait_previous_qemu(paths: &VmPaths) {
    if let Ok(Some(old)) = record::read(&paths.launch_record()) {
        process::wait_released(
            &old.process,
            &old.qmp_socket.to_string_lossy(),
            shutdown::KILL_WAIT,
        );
    }
}

/// Waits for the previous QEMU (if it is still exiting), then removes its
/// runtime files and rotates the serial log.
pub(super) fn clear_leftovers(paths: &VmPaths) {
    wait_previous_qemu(paths);
    remove_if_exists(&paths.pidfile());
    remove_if_exists(&paths.qmp_socket());
    remove_if_exists(&paths.launch_record());
    rotate(&paths.serial_log());
}

/// Each share's host directory must exist (checked at start, like kernels and disks).
pub(super) fn check_shares(vm: &str, shares: &[crate::config::Share]) -> Result<(), StepError> {
    for s in shares {
        if !s.host.is_dir() {
            return Err(StepError::ShareDir {
                vm: vm.into(),
                tag: s.tag.clone(),
                host: s.host.clone(),
            });
        }
    }
    Ok(())
}

pub(super) fn check_socket_path(vm: &str, socket: &Path) -> Result<(), StepError> {
    let len = socket.as_os_str().len();
    if len > crate::layout::MAX_SOCKET_PATH {
        return Err(StepError::SocketPath {
            vm: vm.into(),
            socket: socket.to_owned(),
            len,
        });
    }
    Ok(())
}

/// Keep the previous boot's serial log as `<name>.1`.
fn rotate(path: &Path) {
    if path.exists() {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        let _ = std::fs::rename(path, PathBuf::from(old));
    }
}
