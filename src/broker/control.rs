//! Broker lifecycle from the host side: observe it (pidfile + /proc identity,
//! never a socket, so status stays instant), start it detached, stop it.
//!
//! The broker process itself is `castra broker` (`server.rs`); it writes and
//! removes its own pidfile. Here a pid counts as the broker only if its
//! command line carries `broker --state-root <this state root>`, which
//! guards against pid reuse and against another project's broker.

use std::fs::OpenOptions;
use std::io;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::fsutil::{CreateDirError, create_private_dir};
use crate::layout::StateLayout;
use crate::qemu::process::{Liveness, identity_of, log_tail, probe, wait_released};

/// How long a freshly started broker may take to open its sockets.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `stop` waits after SIGTERM before SIGKILL.
pub const STOP_WAIT: Duration = Duration::from_secs(3);

/// Why the broker could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Dir(#[from] CreateDirError),
    #[error("cannot open {}: {source}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot locate the castra binary: {0}")]
    NoBinary(#[source] io::Error),
    #[error("cannot start {} broker: {source}", exe.display())]
    Spawn {
        exe: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the broker exited at start ({status}):\n{log_tail}")]
    ExitedAtStart {
        status: ExitStatus,
        log_tail: String,
    },
    #[error("the broker did not open {} within {}s; see {}", socket.display(), START_TIMEOUT.as_secs(), log.display())]
    NotReady { socket: PathBuf, log: PathBuf },
    #[error("broker pid {pid} survived SIGKILL")]
    SurvivedSigkill { pid: i32 },
}

/// What observe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerState {
    Running {
        pid: i32,
    },
    /// Not running; `why` says how we know.
    Offline {
        why: String,
    },
}

impl BrokerState {
    pub fn word(&self) -> &'static str {
        match self {
            BrokerState::Running { .. } => "running",
            BrokerState::Offline { .. } => "offline",
        }
    }
    pub fn pid(&self) -> Option<i32> {
        match self {
            BrokerState::Running { pid } => Some(*pid),
            BrokerState::Offline { .. } => None,
        }
    }
}

/// The command-line fragment that identifies this project's broker.
pub fn marker(layout: &StateLayout) -> String {
    format!("broker\0--state-root\0{}", layout.root().display())
}

/// Files and /proc only: instant even if the broker is frozen.
pub fn observe(layout: &StateLayout) -> BrokerState {
    let pidfile = layout.broker_pidfile();
    let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return BrokerState::Offline {
            why: "not started".into(),
        };
    };
    match identity_of(pid).map(|id| probe(&id, &marker(layout))) {
        Some(Liveness::Alive) => BrokerState::Running { pid },
        Some(Liveness::Exiting) => BrokerState::Offline {
            why: format!("broker pid {pid} exited (still releasing its port)"),
        },
        Some(Liveness::Zombie) | Some(Liveness::Gone) | None => BrokerState::Offline {
            why: format!("broker pid {pid} exited"),
        },
        Some(Liveness::Reused) => BrokerState::Offline {
            why: format!("broker pid {pid} exited (the pid now belongs to another process)"),
        },
    }
}

/// Start `castra broker` detached (own process group, output to broker.log)
/// and wait until its host socket exists and its pidfile names it. Errors
/// carry the log's last lines.
pub fn start(layout: &StateLayout, port: u16, allow_tokenless: bool) -> Result<i32, ControlError> {
    let dir = layout.broker_dir();
    create_private_dir(&dir)?;
    let log_path = layout.broker_log();
    let log_err = |source| ControlError::Log {
        path: log_path.clone(),
        source,
    };
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(log_err)?;
    let err_log = log.try_clone().map_err(log_err)?;
    let exe = castra_exe()?;
    wait_previous_released(layout);
    let _ = std::fs::remove_file(layout.broker_socket());
    let mut cmd = Command::new(&exe);
    cmd.arg("broker")
        .arg("--state-root")
        .arg(layout.root())
        .arg("--port")
        .arg(port.to_string());
    if allow_tokenless {
        cmd.arg("--allow-tokenless-handshake");
    }
    let mut child = {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .process_group(0)
            .spawn()
            .map_err(|source| ControlError::Spawn {
                exe: exe.clone(),
                source,
            })?
    };
    let pid = child.id() as i32;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ControlError::ExitedAtStart {
                status,
                log_tail: log_tail(&log_path, 5),
            });
        }
        // Ready when its socket is bound and its pidfile names it (status and
        // down find it by that pidfile).
        if layout.broker_socket().exists() && observe(layout) == (BrokerState::Running { pid }) {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ControlError::NotReady {
                socket: layout.broker_socket(),
                log: log_path,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Reap it if it dies while this process still runs (apply --watch).
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// A broker killed a moment ago (kill -9, OOM) is offline once its main
/// thread is gone, but until its last thread ends it still holds its port
/// and log files: a new one started then fails to bind. Wait that out
/// (bounded; a start that still fails says why).
pub fn wait_previous_released(layout: &StateLayout) {
    let Some(id) = std::fs::read_to_string(layout.broker_pidfile())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .and_then(identity_of)
    else {
        return;
    };
    wait_released(&id, &marker(layout), STOP_WAIT);
}

/// SIGTERM (the broker says `bye shutdown` to sessions), then SIGKILL.
/// Returns whether it was running.
pub fn stop(layout: &StateLayout) -> Result<bool, ControlError> {
    let BrokerState::Running { pid } = observe(layout) else {
        return Ok(false);
    };
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_WAIT;
    while Instant::now() < deadline {
        if !matches!(observe(layout), BrokerState::Running { .. }) {
            let _ = std::fs::remove_file(layout.broker_pidfile());
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    // SIGKILL takes effect at once but the exit takes a moment (longer on a
    // loaded host): wait for it, bounded, rather than a fixed pause.
    let deadline = Instant::now() + STOP_WAIT;
    while matches!(observe(layout), BrokerState::Running { .. }) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_previous_released(layout);
    match observe(layout) {
        BrokerState::Running { pid } => Err(ControlError::SurvivedSigkill { pid }),
        BrokerState::Offline { .. } => {
            let _ = std::fs::remove_file(layout.broker_pidfile());
            let _ = std::fs::remove_file(layout.broker_socket());
            Ok(true)
        }
    }
}

/// The castra binary to run the broker with (`CASTRA_BIN` overrides, for tests).
fn castra_exe() -> Result<PathBuf, ControlError> {
    if let Some(p) = std::env::var_os("CASTRA_BIN") {
        return Ok(PathBuf::from(p));
    }
    std::env::current_exe().map_err(ControlError::NoBinary)
}
