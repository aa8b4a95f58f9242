//! Shared helpers for integration tests: run the real `castra` binary in a
//! temp project, parse its JSON, and make sure every QEMU a test started dies
//! with the test (whatever happens). The broker and simulated-guest harness
//! is in `broker.rs`.

#![allow(dead_code)]

pub mod broker;
pub mod child;
pub mod ports;

#[allow(unused_imports)]
pub use child::{KillOnDrop, LineFeed, wait_dead, wait_until};
#[allow(unused_imports)]
pub use ports::free_port;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub fn castra_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_castra"))
}

/// A temp project directory; on drop, kills every process whose command line
/// mentions it (the QEMUs it started).
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new(toml: &str) -> Project {
        // Short path: QMP sockets live under it and Unix socket paths are limited.
        let dir = tempfile::Builder::new()
            .prefix("c")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::fs::write(dir.path().join("castra.toml"), toml).expect("write castra.toml");
        Project { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write_config(&self, toml: &str) {
        std::fs::write(self.path().join("castra.toml"), toml).expect("write castra.toml");
    }

    pub fn castra(&self, args: &[&str]) -> Output {
        Command::new(castra_bin())
            .args(args)
            .current_dir(self.path())
            .env_remove("CASTRA_CONFIG")
            .output()
            .expect("run castra")
    }

    /// Run and parse stdout as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.castra(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "castra {args:?} printed no JSON ({e}); status {:?}\nstdout:\n{}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Pids of QEMUs whose command line mentions this project's directory.
    pub fn qemu_pids(&self) -> Vec<i32> {
        self.pids_mentioning(|cmd| cmd.starts_with("qemu-system"))
    }

    /// Pids of every process (QEMUs, the broker) whose command line mentions
    /// this project's directory and passes `filter`.
    fn pids_mentioning(&self, filter: impl Fn(&str) -> bool) -> Vec<i32> {
        let needle = self.path().to_string_lossy().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd);
            if filter(&cmd) && cmd.contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }
}

/// Send `sig` to `pid` (nix, not the `kill` tool: a fresh minbase root has none).
/// Panics when the signal cannot be sent (the process is gone or not ours).
pub fn signal(pid: i64, sig: Signal) {
    let raw = i32::try_from(pid).expect("a pid fits in i32");
    kill(Pid::from_raw(raw), sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

impl Drop for Project {
    fn drop(&mut self) {
        for pid in self.pids_mentioning(|_| true) {
            // SIGCONT first: a test may have frozen it.
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The stdout of a command that must have succeeded (its stderr otherwise).
pub fn ok_stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", stderr(o));
    stdout(o)
}

/// Find a VM object in `status --json`.
pub fn vm<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["vms"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no vm {name} in {status}"))
}

/// Build (or reuse) the default guest image the e2e tests boot; fails the test with
/// castra's own output when it cannot.
pub fn ensure_image() {
    let out = Command::new(castra_bin())
        .args(["image", "build"])
        .output()
        .expect("run castra image build");
    assert!(
        out.status.success(),
        "castra image build failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
}
