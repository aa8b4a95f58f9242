//! Why an execute step (start or stop a VM, start or stop the broker)
//! failed: one closed enum, each message naming the VM or file and the fix.
//! Step results and events carry its text; code that needs to tell failures
//! apart matches the variant. Decides nothing and does no I/O.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::broker::control::ControlError;
use crate::fsutil::{CreateDirError, JsonFileError};
use crate::image::ImageError;
use crate::layout::MAX_SOCKET_PATH;
use crate::qemu::process::LaunchError;

use super::secret::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A start or restart of a VM castra.toml no longer declares.
    #[error("not in castra.toml")]
    NotDeclared,
    /// A libvirt host refused or did not answer (`what`: the action).
    #[error("vm {vm:?} on host {host} ({uri}): {what}: {error}")]
    Host {
        vm: String,
        host: String,
        uri: String,
        what: String,
        error: String,
    },
    #[error(transparent)]
    Dir(#[from] CreateDirError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("vm {vm:?}: cannot write {}: {source}", path.display())]
    Write {
        vm: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Record(#[from] JsonFileError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(
        "vm {vm:?}: qemu did not report running within {}s ({last}); see {}",
        timeout.as_secs(),
        qemu_log.display()
    )]
    NotRunning {
        vm: String,
        timeout: Duration,
        /// What QMP said last.
        last: String,
        qemu_log: PathBuf,
    },
    #[error("vm {vm:?}: {key} {} does not exist; fix the path in castra.toml", path.display())]
    Missing {
        vm: String,
        key: &'static str,
        path: PathBuf,
    },
    #[error(
        "vm {vm:?}: share {tag:?} host directory {} does not exist or is not a directory; fix shares in castra.toml",
        host.display()
    )]
    ShareDir {
        vm: String,
        tag: String,
        host: PathBuf,
    },
    #[error("cannot run qemu-img (install qemu-utils): {0}")]
    QemuImg(#[source] io::Error),
    #[error(
        "qemu-img could not create overlay {} over {}: {stderr}",
        overlay.display(),
        base.display()
    )]
    Overlay {
        overlay: PathBuf,
        base: PathBuf,
        stderr: String,
    },
    #[error(
        "vm {vm:?}: QMP socket path {} is {len} bytes, over the {MAX_SOCKET_PATH} byte limit of Unix sockets; set a shorter [project] state_dir in castra.toml",
        socket.display()
    )]
    SocketPath {
        vm: String,
        socket: PathBuf,
        len: usize,
    },
    #[error("qemu is still running after SIGKILL")]
    StillRunning,
    /// A restart whose new spec failed to start, after the previous spec started again.
    #[error(
        "rolled back: the new spec failed to start ({error}); {vm} runs its previous spec again (pid {pid})"
    )]
    RolledBack {
        vm: String,
        error: Box<StepError>,
        pid: i32,
    },
    #[error("{error}; rolling back to the previous spec failed too: {again}")]
    RollbackFailed {
        error: Box<StepError>,
        again: Box<StepError>,
    },
    #[error(transparent)]
    Broker(#[from] ControlError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_vm_the_file_and_the_fix() {
        let e = StepError::Missing {
            vm: "web".into(),
            key: "image.kernel",
            path: "/k".into(),
        };
        assert_eq!(
            e.to_string(),
            "vm \"web\": image.kernel /k does not exist; fix the path in castra.toml"
        );
        let e = StepError::NotRunning {
            vm: "web".into(),
            timeout: Duration::from_secs(15),
            last: "status prelaunch".into(),
            qemu_log: "/s/qemu.log".into(),
        };
        assert_eq!(
            e.to_string(),
            "vm \"web\": qemu did not report running within 15s (status prelaunch); see /s/qemu.log"
        );
        let dir = StepError::from(CreateDirError {
            path: "/s/vms/web".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        });
        assert!(
            dir.to_string().starts_with("cannot create /s/vms/web: "),
            "{dir}"
        );
    }
}
