//! Running `virsh` against one host with a deadline: the one place castra
//! starts libvirt's client. A call that does not finish in time is killed
//! and reported as the host not answering, so a wedged or unreachable host
//! costs its own deadline and never more.
//!
//! Why `virsh` and not the `virt` crate: see docs/HOSTS.md ("Why virsh").

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The client binary (`CASTRA_VIRSH` overrides, for hosts with it elsewhere).
pub fn virsh_binary() -> std::path::PathBuf {
    std::env::var_os("CASTRA_VIRSH")
        .map(Into::into)
        .unwrap_or_else(|| "virsh".into())
}

/// Why a virsh call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirshError {
    /// virsh could not be started (not installed).
    #[error("cannot run virsh ({0}): install libvirt-clients (scripts/setup-host.sh)")]
    Spawn(String),
    /// No answer within the deadline (virsh was killed).
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// virsh ran and said no: its error lines.
    #[error("{0}")]
    Failed(String),
}

impl VirshError {
    /// The connection itself failed (the host is unreachable), as opposed to
    /// a command the host refused.
    pub fn is_connection(&self) -> bool {
        match self {
            VirshError::Spawn(_) | VirshError::Timeout(_) => true,
            VirshError::Failed(m) => {
                m.contains("failed to connect")
                    || m.contains("unable to connect")
                    || m.contains("Cannot recv data")
                    || m.contains("End of file while reading data")
                    || m.contains("no connection driver")
                    || m.contains("Connection refused")
            }
        }
    }
}

/// `virsh -q -c URI ARGS...`; stdout on success. `stdin` is written to its
/// standard input when given.
pub fn run(uri: &str, args: &[&str], deadline: Duration) -> Result<String, VirshError> {
    let mut cmd = Command::new(virsh_binary());
    cmd.arg("-q").arg("-c").arg(uri).args(args);
    run_command(cmd, deadline)
}

/// `virsh vol-upload`: a local file into a volume (read by virsh, streamed to the host).
pub fn upload(
    uri: &str,
    pool: &str,
    volume: &str,
    file: &Path,
    deadline: Duration,
) -> Result<(), VirshError> {
    let mut cmd = Command::new(virsh_binary());
    cmd.args(["-q", "-c", uri, "vol-upload", "--pool", pool, volume])
        .arg(file);
    run_command(cmd, deadline).map(|_| ())
}

fn run_command(mut cmd: Command, deadline: Duration) -> Result<String, VirshError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C");
    let mut child = cmd.spawn().map_err(|e| VirshError::Spawn(e.to_string()))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    // Readers on their own threads: a chatty virsh never blocks on a full pipe.
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if t0.elapsed() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VirshError::Timeout(deadline));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(3)),
            Err(e) => return Err(VirshError::Failed(format!("waiting for virsh: {e}"))),
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(VirshError::Failed(error_words(&stderr, &stdout)))
    }
}

/// virsh's error lines, without the `error: ` prefixes, on one line.
fn error_words(stderr: &str, stdout: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .map(|l| l.trim().trim_start_matches("error:").trim())
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "virsh failed without a message".into()
    } else {
        lines.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_joined_without_prefixes() {
        let e = error_words(
            "error: failed to connect to the hypervisor\nerror: unable to connect to server at '10.9.9.9:16509': Connection refused\n",
            "",
        );
        assert_eq!(
            e,
            "failed to connect to the hypervisor: unable to connect to server at '10.9.9.9:16509': Connection refused"
        );
        assert!(VirshError::Failed(e).is_connection());
        assert!(!VirshError::Failed("Domain not found".into()).is_connection());
    }
}
