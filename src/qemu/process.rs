//! Process control for one daemonized QEMU: launch, liveness, shutdown.
//!
//! [`launch`] runs QEMU with `-daemonize`, whose parent exits only once the
//! VM is initialised, so start-up errors are synchronous and land in
//! `qemu.log`. A running VM is known by a [`ProcessIdentity`] (pid plus the
//! kernel's start time of that pid), so a recycled pid is never mistaken for
//! our QEMU. [`probe`] reads only `/proc` and answers at once even when QEMU
//! is frozen (`kill -STOP`). The shutdown ladder lives in `shutdown.rs`.
//!
//! Not here: what to launch (`argv.rs`), when to launch or stop (reconcile),
//! and recording identities on disk (the caller's launch record). The QEMU is
//! not our child once daemonized, so exits are observed by polling `/proc`.

use crate::layout::VmPaths;
use crate::qemu::argv::escape;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often exits are polled.
const POLL: Duration = Duration::from_millis(25);
/// Upper bound on QEMU's own initialisation (the daemonizing parent's exit).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of `qemu.log` quoted in launch errors.
const LOG_TAIL_LINES: usize = 15;

/// Who a running QEMU is: its pid and that pid's start time in clock ticks
/// after boot (`/proc/<pid>/stat` field 22). Together they survive pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: i32,
    pub start_ticks: u64,
}

/// What `/proc` says about a recorded identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Same pid, same start time, and its command line carries the marker.
    Alive,
    /// No such pid.
    Gone,
    /// The pid now belongs to another process.
    Reused,
    /// Our QEMU exited and waits to be reaped by init.
    Zombie,
    /// Killed, but not all its threads have finished yet (the thread-group
    /// leader is a zombie while another thread, say one in `fdatasync`, is
    /// still on its way out): it may still hold its files, sockets and ports.
    Exiting,
}

impl Liveness {
    /// Whether the process may still hold its files and ports: alive, or
    /// killed with threads still exiting.
    pub fn holds_resources(self) -> bool {
        matches!(self, Liveness::Alive | Liveness::Exiting)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "{} not found: install qemu-system-x86 (or set CASTRA_QEMU to the binary)",
        binary.display()
    )]
    QemuNotFound { binary: PathBuf },
    #[error("vm {vm:?}: cannot prepare {}: {source}", path.display())]
    Prepare {
        vm: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vm {vm:?}: cannot run {}: {source}", binary.display())]
    Spawn {
        vm: String,
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("vm {vm:?}: qemu did not finish starting within {timeout:?} and was killed (see {})", log.display())]
    Timeout {
        vm: String,
        timeout: Duration,
        log: PathBuf,
    },
    #[error("vm {vm:?}: qemu failed to start ({status}); last lines of {}:\n{tail}", log.display())]
    Failed {
        vm: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("vm {vm:?}: qemu started but its pidfile {} is unusable: {reason}", path.display())]
    Pidfile {
        vm: String,
        path: PathBuf,
        reason: String,
    },
    #[error("vm {vm:?}: qemu (pid {pid}) exited right after starting; last lines of {}:\n{tail}", log.display())]
    Vanished {
        vm: String,
        pid: i32,
        log: PathBuf,
        tail: String,
    },
}

/// Runs `qemu argv` (an argv from `argv::build`, which daemonizes and writes
/// `paths.pidfile()`) and returns the identity of the daemonized QEMU.
///
/// Creates the VM directory (owner-only) if needed and removes a stale
/// pidfile and QMP socket first. QEMU's stdout and stderr are appended to
/// `paths.qemu_log()` (which `-D` then keeps for the VM's lifetime).
pub fn launch(
    qemu: &Path,
    argv: &[String],
    paths: &VmPaths,
) -> Result<ProcessIdentity, LaunchError> {
    let vm = vm_name(paths);
    let prepare = |path: &Path, source| LaunchError::Prepare {
        vm: vm.clone(),
        path: path.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&paths.dir)
        .map_err(|e| prepare(&paths.dir, e))?;
    for stale in [paths.pidfile(), paths.qmp_socket()] {
        match fs::remove_file(&stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(prepare(&stale, e)),
        }
    }
    let log_path = paths.qemu_log();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| prepare(&log_path, e))?;
    let log_out = log.try_clone().map_err(|e| prepare(&log_path, e))?;

    let mut child = Command::new(qemu)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(log_out)
        .stderr(log)
        .spawn()
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                LaunchError::QemuNotFound {
                    binary: qemu.to_path_buf(),
                }
            } else {
                LaunchError::Spawn {
                    vm: vm.clone(),
                    binary: qemu.to_path_buf(),
                    source,
                }
            }
        })?;

    let deadline = Instant::now() + LAUNCH_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                kill_half_started(paths);
                return Err(LaunchError::Timeout {
                    vm,
                    timeout: LAUNCH_TIMEOUT,
                    log: log_path,
                });
            }
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::Spawn {
                    vm,
                    binary: qemu.to_path_buf(),
                    source,
                });
            }
        }
    };
    if !status.success() {
        return Err(LaunchError::Failed {
            vm,
            status: status.to_string(),
            tail: log_tail(&log_path, LOG_TAIL_LINES),
            log: log_path,
        });
    }

    let pidfile = paths.pidfile();
    let pid = read_pidfile(&pidfile).map_err(|reason| LaunchError::Pidfile {
        vm: vm.clone(),
        path: pidfile.clone(),
        reason,
    })?;
    match read_stat(pid) {
        Some(stat) if stat.state != 'Z' && stat.state != 'X' => Ok(ProcessIdentity {
            pid,
            start_ticks: stat.start_ticks,
        }),
        _ => Err(LaunchError::Vanished {
            vm,
            pid,
            tail: log_tail(&log_path, LOG_TAIL_LINES),
            log: log_path,
        }),
    }
}

/// After a launch timed out: SIGKILL the daemonized child if it already
/// wrote its pidfile (and is really this VM's QEMU), so nothing is left behind.
fn kill_half_started(paths: &VmPaths) {
    let Ok(pid) = read_pidfile(&paths.pidfile()) else {
        return;
    };
    let Some(stat) = read_stat(pid) else { return };
    let id = ProcessIdentity {
        pid,
        start_ticks: stat.start_ticks,
    };
    if probe(&id, &paths.qmp_socket().to_string_lossy()) == Liveness::Alive {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Waits until `path` exists as a Unix socket, at most `timeout`. QEMU binds
/// its QMP socket before the daemonizing parent exits, so after a successful
/// [`launch`] this normally returns at once.
pub fn wait_for_socket(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// Reads a pidfile: one positive decimal pid.
pub fn read_pidfile(path: &Path) -> Result<i32, String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 1 => Ok(pid),
        _ => Err(format!("expected a pid, found {:?}", text.trim())),
    }
}

/// Where a recorded QEMU stands, from `/proc` alone: never waits on the
/// process, so it answers at once even for a stopped (`SIGSTOP`) QEMU.
/// `marker` is a string QEMU's command line must contain (castra passes the
/// VM's absolute QMP socket path); it is also matched in its ','-doubled form.
pub fn probe(id: &ProcessIdentity, marker: &str) -> Liveness {
    if id.pid <= 1 {
        return Liveness::Gone;
    }
    let Some(stat) = read_stat_raw(id.pid) else {
        return Liveness::Gone;
    };
    let Some(stat) = parse_stat(&stat) else {
        return Liveness::Reused;
    };
    if stat.start_ticks != id.start_ticks {
        return Liveness::Reused;
    }
    if stat.state == 'Z' || stat.state == 'X' {
        return dead_or_exiting(id.pid);
    }
    match fs::read(format!("/proc/{}/cmdline", id.pid)) {
        Err(_) => Liveness::Gone,
        Ok(cmdline) if cmdline_has(&cmdline, marker) => Liveness::Alive,
        // No marker: either not our QEMU, or ours exiting between the two
        // reads (the kernel empties, or half-tears down, a dying process's
        // cmdline; seen once in CI as Reused right after SIGKILL). Look again.
        Ok(_) => match read_stat(id.pid) {
            Some(s) if s.start_ticks != id.start_ticks => Liveness::Reused,
            Some(s) if s.state == 'Z' || s.state == 'X' => dead_or_exiting(id.pid),
            Some(_) => match fs::read(format!("/proc/{}/cmdline", id.pid)) {
                Ok(c) if c.is_empty() => dead_or_exiting(id.pid),
                Ok(_) => Liveness::Reused,
                Err(_) => Liveness::Gone,
            },
            None => Liveness::Gone,
        },
    }
}

/// A pid whose thread-group leader has exited: a zombie once it is the
/// last of its threads, else still [`Liveness::Exiting`].
fn dead_or_exiting(pid: i32) -> Liveness {
    let threads = fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    if threads > 1 {
        Liveness::Exiting
    } else {
        Liveness::Zombie
    }
}

/// Waits, at most `wait`, while `id` is [`Liveness::Exiting`]; true when it
/// no longer holds anything (or was never exiting), false if it still does.
pub fn wait_released(id: &ProcessIdentity, marker: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if probe(id, marker) != Liveness::Exiting {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The identity of a live pid read from /proc (for a QEMU found through its
/// pidfile without a launch record); `None` when it is gone.
pub fn identity_of(pid: i32) -> Option<ProcessIdentity> {
    if pid <= 1 {
        return None;
    }
    read_stat(pid).map(|s| ProcessIdentity {
        pid,
        start_ticks: s.start_ticks,
    })
}

fn cmdline_has(cmdline: &[u8], marker: &str) -> bool {
    if marker.is_empty() {
        return true;
    }
    let escaped = escape(marker);
    contains(cmdline, marker.as_bytes()) || contains(cmdline, escaped.as_bytes())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The fields of `/proc/<pid>/stat` castra uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    /// Field 3: R, S, D, T, t, Z, X, ...
    pub state: char,
    /// Field 22: start time in clock ticks after boot.
    pub start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may itself contain spaces and ')', so fields are counted after the last ')'.
pub fn parse_stat(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `fields` now starts at field 4; field 22 is 18 further on.
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some(StatFields { state, start_ticks })
}

fn read_stat_raw(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

fn read_stat(pid: i32) -> Option<StatFields> {
    parse_stat(&read_stat_raw(pid)?)
}

fn vm_name(paths: &VmPaths) -> String {
    paths
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| paths.dir.display().to_string())
}

/// The last `n` lines of a log (reading at most its last 64 KiB).
pub fn log_tail(path: &Path, n: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let Ok(mut f) = File::open(path) else {
        return format!("({} is missing)", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX {
        let _ = f.seek(SeekFrom::Start(len - MAX));
    }
    let mut bytes = Vec::new();
    if f.read_to_end(&mut bytes).is_err() {
        return format!("({} is unreadable)", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return format!("({} is empty)", path.display());
    }
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real lines: a QEMU and a process whose name has spaces and a ')'.
    const QEMU_STAT: &str = "13685 (qemu-system-x86) S 1 13683 13683 0 -1 138412480 2595 0 1 0 0 1 0 0 20 0 3 0 94824 1359736832 7499 18446744073709551615 93991296323584 93991302184021 140733175069760 0 0 0 268444224 3674112 16451 0 0 0 17 0 0 0 0 0 0 93991305296120 93991310500272 93992232366080 140733175077485 140733175077588 140733175077588 140733175078876 0\n";
    const ODD_STAT: &str = "4242 (a b) c) Z 1 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn parses_state_and_start_time() {
        assert_eq!(
            parse_stat(QEMU_STAT),
            Some(StatFields {
                state: 'S',
                start_ticks: 94824
            })
        );
        assert_eq!(
            parse_stat(ODD_STAT),
            Some(StatFields {
                state: 'Z',
                start_ticks: 987654
            })
        );
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn parses_our_own_stat() {
        // The calling thread is running while it reads its own stat.
        let own = fs::read_to_string("/proc/thread-self/stat").unwrap();
        let stat = parse_stat(&own).unwrap();
        assert_eq!(stat.state, 'R');
        assert!(stat.start_ticks > 0);
    }

    #[test]
    fn probe_tells_alive_reused_and_gone_apart() {
        let pid = std::process::id() as i32;
        let stat = read_stat(pid).unwrap();
        let me = ProcessIdentity {
            pid,
            start_ticks: stat.start_ticks,
        };
        // The test binary's own cmdline contains its path.
        let exe = std::env::current_exe().unwrap();
        let exe = exe.file_name().unwrap().to_str().unwrap();
        assert_eq!(probe(&me, exe), Liveness::Alive);
        assert_eq!(probe(&me, "/no/such/qmp.sock"), Liveness::Reused);
        let older = ProcessIdentity {
            start_ticks: stat.start_ticks + 1,
            ..me
        };
        assert_eq!(probe(&older, exe), Liveness::Reused);
        let gone = ProcessIdentity {
            pid: i32::MAX,
            start_ticks: 1,
        };
        assert_eq!(probe(&gone, exe), Liveness::Gone);
        for pid in [0, 1, -1] {
            assert_eq!(
                probe(
                    &ProcessIdentity {
                        pid,
                        start_ticks: 0
                    },
                    ""
                ),
                Liveness::Gone
            );
        }
    }

    #[test]
    fn probe_sees_an_unreaped_child_as_zombie() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let start_ticks = read_stat(pid).unwrap().start_ticks;
        let id = ProcessIdentity { pid, start_ticks };
        let deadline = Instant::now() + Duration::from_secs(5);
        while read_stat(pid).unwrap().state != 'Z' && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(probe(&id, "true"), Liveness::Zombie);
        child.wait().unwrap();
        assert_eq!(probe(&id, "true"), Liveness::Gone);
    }

    #[test]
    fn a_leader_gone_before_its_threads_is_exiting_until_the_last_one_ends() {
        // The main thread leaves with pthread_exit while another thread
        // sleeps: the leader shows `Z`, the process still holds its files.
        let script = "import ctypes,threading,time\n\
            threading.Thread(target=time.sleep,args=(0.5,)).start()\n\
            ctypes.CDLL(None).pthread_exit(None)";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let id = ProcessIdentity {
            pid,
            start_ticks: read_stat(pid).unwrap().start_ticks,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while probe(&id, "python3") != Liveness::Exiting && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(probe(&id, "python3"), Liveness::Exiting);
        assert!(Liveness::Exiting.holds_resources());
        assert!(wait_released(&id, "python3", Duration::from_secs(20)));
        assert_eq!(probe(&id, "python3"), Liveness::Zombie);
        child.wait().unwrap();
    }

    #[test]
    fn markers_match_raw_or_comma_doubled() {
        let cmdline = b"qemu\0-qmp\0unix:/a,,b/qmp.sock,server=on,wait=off\0";
        assert!(cmdline_has(cmdline, "/a,b/qmp.sock"));
        assert!(!cmdline_has(cmdline, "/a,c/qmp.sock"));
        assert!(cmdline_has(b"x\0/plain/qmp.sock\0", "/plain/qmp.sock"));
    }

    #[test]
    fn pidfiles_must_hold_a_real_pid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("qemu.pid");
        fs::write(&p, "12345\n").unwrap();
        assert_eq!(read_pidfile(&p), Ok(12345));
        for bad in ["", "abc", "0", "1", "-5"] {
            fs::write(&p, bad).unwrap();
            assert!(read_pidfile(&p).is_err(), "{bad:?}");
        }
        assert!(read_pidfile(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("qemu.log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        fs::write(&p, text).unwrap();
        assert_eq!(log_tail(&p, 3), "line 28\nline 29\nline 30");
        assert!(log_tail(&dir.path().join("none.log"), 3).contains("is missing"));
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths = VmPaths {
            dir: dir.path().join("vms/web"),
        };
        let err = launch(Path::new("/nonexistent/qemu-system-x86_64"), &[], &paths).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/qemu-system-x86_64 not found: install qemu-system-x86 (or set CASTRA_QEMU to the binary)"
        );
    }
}
