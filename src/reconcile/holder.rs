//! Who holds a host port castra wants: the socket's inode from
//! `/proc/net/{tcp,tcp6,udp,udp6}`, the process whose `/proc/<pid>/fd` links
//! to it, and, when that process is another project's `castra broker`, that
//! project's name and config from `project.json` in its state root.
//!
//! Best effort and read-only: a port held by another user's process (whose
//! fds we cannot read) is "another process". The line parser is pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Proto;
use crate::layout::StateLayout;

/// What `castra apply` records about its project in the state root
/// (`project.json`), so another project can name it in a port conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectInfo {
    pub name: String,
    pub config: PathBuf,
    pub broker_port: u16,
}

/// Write `project.json` (best effort: it only improves messages).
pub fn write_project_info(layout: &StateLayout, info: &ProjectInfo) {
    if let Ok(text) = serde_json::to_vec_pretty(info) {
        let _ = crate::fsutil::write_atomic(&layout.project_info(), &text);
    }
}

/// A process holding a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// The broker of another castra project.
    CastraBroker {
        pid: i32,
        project: Option<ProjectInfo>,
        state_root: PathBuf,
    },
    Process {
        pid: i32,
        command: String,
    },
    Unknown,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::CastraBroker {
                pid,
                project: Some(p),
                ..
            } => write!(
                f,
                "the broker of another castra project, \"{}\" ({}, pid {pid})",
                p.name,
                p.config.display()
            ),
            Holder::CastraBroker {
                pid, state_root, ..
            } => write!(
                f,
                "the broker of another castra project (state root {}, pid {pid})",
                state_root.display()
            ),
            Holder::Process { pid, command } => write!(f, "pid {pid} ({command})"),
            Holder::Unknown => f.write_str(
                "another process (castra cannot tell which: it may belong to another user)",
            ),
        }
    }
}

/// Who holds `addr` (or the same port on a wildcard address) for `proto`.
pub fn who_holds(proto: Proto, addr: SocketAddr) -> Holder {
    let files: &[&str] = match proto {
        Proto::Tcp => &["/proc/net/tcp", "/proc/net/tcp6"],
        Proto::Udp => &["/proc/net/udp", "/proc/net/udp6"],
    };
    let inodes: Vec<u64> = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(parse_line)
                .filter(|s| s.holds(proto, addr))
                .map(|s| s.inode)
                .collect::<Vec<_>>()
        })
        .filter(|i| *i != 0)
        .collect();
    match inodes.iter().find_map(|i| pid_with_socket(*i)) {
        Some(pid) => describe(pid),
        None => Holder::Unknown,
    }
}

/// One socket of a `/proc/net` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSocket {
    pub local: SocketAddr,
    /// `0A` is LISTEN for tcp.
    pub state: u8,
    pub inode: u64,
}

impl ProcSocket {
    fn holds(&self, proto: Proto, want: SocketAddr) -> bool {
        let listening = match proto {
            Proto::Tcp => self.state == 0x0A,
            Proto::Udp => true,
        };
        let addr_overlaps = self.local.ip() == want.ip()
            || self.local.ip().is_unspecified()
            || want.ip().is_unspecified();
        listening && self.local.port() == want.port() && addr_overlaps
    }
}

/// Parse one line of `/proc/net/tcp` (or tcp6, udp, udp6):
/// `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`.
pub fn parse_line(line: &str) -> Option<ProcSocket> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (addr, port) = f.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(u32::from_be(
            u32::from_str_radix(addr, 16).ok()?,
        ))),
        32 => {
            // Four 32-bit words, each in host (little-endian) byte order.
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&u32::from_be(word).to_be_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(ProcSocket {
        local: SocketAddr::new(ip, port),
        state: u8::from_str_radix(f.get(3)?, 16).ok()?,
        inode: f.get(9)?.parse().ok()?,
    })
}

fn pid_with_socket(inode: u64) -> Option<i32> {
    let want = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

fn describe(pid: i32) -> Holder {
    let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    if let Some(root) = broker_state_root(&argv) {
        let project = std::fs::read(StateLayout::new(&root).project_info())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        return Holder::CastraBroker {
            pid,
            project,
            state_root: root,
        };
    }
    let command = if argv.is_empty() {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    } else {
        let mut c: String = argv
            .join(" ")
            .chars()
            .map(|ch| if ch.is_control() { ' ' } else { ch })
            .collect();
        if c.len() > 80 {
            c.truncate(c.floor_char_boundary(77));
            c.push_str("...");
        }
        c
    };
    Holder::Process { pid, command }
}

/// `castra broker --state-root <dir> ...` -> `<dir>`.
fn broker_state_root(argv: &[String]) -> Option<PathBuf> {
    let is_castra = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n.to_string_lossy().starts_with("castra"));
    if !is_castra || argv.get(1).map(String::as_str) != Some("broker") {
        return None;
    }
    let i = argv.iter().position(|a| a == "--state-root")?;
    argv.get(i + 1).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_lines() {
        let v4 = "   0: 0100007F:1E46 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0";
        let s = parse_line(v4).unwrap();
        assert_eq!(s.local, "127.0.0.1:7750".parse().unwrap());
        assert_eq!((s.state, s.inode), (0x0A, 123456));
        let v6 = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 42 1 0000000000000000 100 0 0 10 0";
        let s = parse_line(v6).unwrap();
        assert_eq!(s.local, "[::1]:8080".parse().unwrap());
        assert!(parse_line("  sl  local_address rem_address   st").is_none());
    }

    #[test]
    fn wildcards_overlap_and_only_listeners_hold_tcp() {
        let s = ProcSocket {
            local: "0.0.0.0:8080".parse().unwrap(),
            state: 0x0A,
            inode: 1,
        };
        assert!(s.holds(Proto::Tcp, "127.0.0.1:8080".parse().unwrap()));
        assert!(!s.holds(Proto::Tcp, "127.0.0.1:8081".parse().unwrap()));
        let established = ProcSocket { state: 0x01, ..s };
        assert!(!established.holds(Proto::Tcp, "127.0.0.1:8080".parse().unwrap()));
        assert!(established.holds(Proto::Udp, "127.0.0.1:8080".parse().unwrap()));
    }

    #[test]
    fn finds_the_process_listening_on_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        match who_holds(Proto::Tcp, addr) {
            Holder::Process { pid, .. } => assert_eq!(pid, std::process::id() as i32),
            other => panic!("expected this test's pid, got {other:?}"),
        }
    }

    #[test]
    fn recognises_a_castra_broker_command_line() {
        let argv: Vec<String> = ["/usr/bin/castra", "broker", "--state-root", "/p/.castra"]
            .map(String::from)
            .to_vec();
        assert_eq!(broker_state_root(&argv), Some(PathBuf::from("/p/.castra")));
        let other: Vec<String> = ["nc", "-l", "--state-root", "x"].map(String::from).to_vec();
        assert_eq!(broker_state_root(&other), None);
    }
}
