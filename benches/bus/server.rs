//! A peer server process for one run: spawned on a free loopback port in its
//! own temp dir, waited for until the port accepts, killed and its dir removed
//! on drop. It does not speak any protocol (see `conn.rs` and the peer modules).

use std::fs::File;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A running peer server in a temp dir.
pub struct Server {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Runs `bin` with the arguments `args(port, dir)` returns (it may first
    /// write config into `dir`), in `dir`, with stdout and stderr to `log`
    /// (a path under `dir`) or discarded. `None` when the server is not
    /// installed or does not accept on its port within 10 s.
    pub fn spawn(
        bin: &str,
        args: impl FnOnce(u16, &Path) -> io::Result<Vec<String>>,
        log: Option<&str>,
    ) -> Option<Server> {
        let dir = tempfile::Builder::new()
            .prefix("cbb")
            .tempdir_in("/tmp")
            .ok()?;
        let port = free_port();
        let args = args(port, dir.path()).ok()?;
        let (stdout, stderr) = match log {
            Some(log) => {
                let f = File::create(dir.path().join(log)).ok()?;
                (Stdio::from(f.try_clone().ok()?), Stdio::from(f))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut child = Command::new(bin)
            .args(args)
            .current_dir(dir.path())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .ok()?;
        if !wait_port(port, &mut child) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(Server {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Server {
    /// CPU time the server process has used so far (user + system).
    pub fn cpu(&self) -> io::Result<Duration> {
        cpu_of(&format!("/proc/{}/stat", self.child.id()))
    }
}

/// CPU time (user + system) of the process whose `/proc/<pid>/stat` is
/// `path`: fields 14 and 15, in USER_HZ ticks (100 per second on Linux).
pub fn cpu_of(path: &str) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(path)?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.iter().sum::<u64>();
    Ok(Duration::from_millis(ticks * 10))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(17999)
}

fn wait_port(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}
