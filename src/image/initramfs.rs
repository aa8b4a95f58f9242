//! The initramfs of the default image: its fixed layout (directories, busybox links, the
//! init and handshake scripts from `guest/`), the extra files a build adds (the agent),
//! the modules' load order, and its compression. `build.rs` gathers the inputs and
//! writes the archive this returns.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use super::cpio::Entry;
use super::error::ImageError;

/// The guest's PID 1.
pub const INIT_SCRIPT: &str = include_str!("../../guest/init.sh");
/// The handshake-only broker client the init runs when there is no agent.
pub const HANDSHAKE_SCRIPT: &str = include_str!("../../guest/handshake.sh");
/// Where the init looks for the module load order.
pub(super) const MODULE_ORDER: &str = "lib/modules/castra.order";

/// How the initramfs is stored. Uncompressed boots faster under TCG (the
/// guest kernel's gunzip is emulated; QEMU loads the file into guest memory
/// either way) at the cost of a bigger file in the cache: see guest/README.md.
pub(super) const COMPRESSION: Compression = Compression::None;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // Gzip is kept for measurements; see COMPRESSION.
pub(super) enum Compression {
    None,
    Gzip,
}

impl Compression {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
        }
    }
}

/// An extra file read into memory, checked.
pub(super) struct ExtraFile {
    pub(super) guest: String,
    pub(super) mode: u32,
    pub(super) data: Vec<u8>,
}

pub(super) fn read_extra_files(
    files: &[(PathBuf, String, u32)],
) -> Result<Vec<ExtraFile>, ImageError> {
    files
        .iter()
        .map(|(host, guest, mode)| {
            let bad = |reason: &str| ImageError::ExtraFile {
                guest: guest.clone(),
                reason: reason.to_string(),
            };
            if !guest.starts_with('/') || guest.ends_with('/') {
                return Err(bad("the guest path must be absolute and name a file"));
            }
            if guest.split('/').any(|c| c == ".." || c == ".") {
                return Err(bad("the guest path must not contain . or .."));
            }
            if *mode > 0o7777 {
                return Err(bad(
                    "the mode must be permission bits only (at most 0o7777)",
                ));
            }
            let data = fs::read(host).map_err(ImageError::io(host))?;
            Ok(ExtraFile {
                guest: guest.clone(),
                mode: *mode,
                data,
            })
        })
        .collect()
}

/// Directories every image has.
const BASE_DIRS: &[&str] = &[
    "bin",
    "dev",
    "etc",
    "lib",
    "lib/modules",
    "proc",
    "root",
    "run",
    "sbin",
    "sys",
    "tmp",
    "usr",
    "usr/bin",
    "usr/sbin",
];

/// The initramfs contents, parents before children.
pub(super) fn initramfs_entries(
    busybox: Vec<u8>,
    modules: &[(String, Vec<u8>)],
    extras: Vec<ExtraFile>,
) -> Result<Vec<Entry>, ImageError> {
    let mut entries: Vec<Entry> = BASE_DIRS
        .iter()
        .map(|d| Entry::Dir {
            path: d.to_string(),
            mode: if *d == "tmp" { 0o1777 } else { 0o755 },
        })
        .collect();
    // The kernel opens /dev/console for PID 1 before any devtmpfs is mounted.
    entries.push(Entry::CharDev {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    entries.push(Entry::File {
        path: "bin/busybox".into(),
        mode: 0o755,
        data: busybox,
    });
    entries.push(Entry::Symlink {
        path: "bin/sh".into(),
        target: "busybox".into(),
    });
    entries.push(Entry::File {
        path: "init".into(),
        mode: 0o755,
        data: INIT_SCRIPT.as_bytes().to_vec(),
    });
    entries.push(Entry::File {
        path: "bin/castra-handshake".into(),
        mode: 0o755,
        data: HANDSHAKE_SCRIPT.as_bytes().to_vec(),
    });
    entries.push(Entry::File {
        path: "etc/hostname".into(),
        mode: 0o644,
        data: b"castra-guest\n".to_vec(),
    });
    for (name, data) in modules {
        entries.push(Entry::File {
            path: format!("lib/modules/{name}"),
            mode: 0o644,
            data: data.clone(),
        });
    }
    let order: String = modules.iter().map(|(n, _)| format!("{n}\n")).collect();
    entries.push(Entry::File {
        path: MODULE_ORDER.into(),
        mode: 0o644,
        data: order.into_bytes(),
    });
    for extra in extras {
        let rel = extra.guest.trim_start_matches('/').to_string();
        if entries.iter().any(|e| e.path() == rel) {
            return Err(ImageError::ExtraFile {
                guest: extra.guest,
                reason: "the image already has this path".into(),
            });
        }
        // Parent directories the base layout lacks.
        let mut parent = String::new();
        let components: Vec<&str> = rel.split('/').collect();
        for component in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            if !entries.iter().any(|e| e.path() == parent) {
                entries.push(Entry::Dir {
                    path: parent.clone(),
                    mode: 0o755,
                });
            }
        }
        entries.push(Entry::File {
            path: rel,
            mode: extra.mode,
            data: extra.data,
        });
    }
    Ok(entries)
}

pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::cpio::write_archive;
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};

    fn paths(entries: &[Entry]) -> Vec<String> {
        entries.iter().map(|e| e.path().to_string()).collect()
    }

    #[test]
    fn layout_of_the_initramfs() {
        let modules = vec![
            ("virtio_ring.ko".to_string(), vec![1]),
            ("virtio.ko".to_string(), vec![2]),
        ];
        let extras = vec![ExtraFile {
            guest: "/opt/castra/bin/tool".into(),
            mode: 0o700,
            data: b"x".to_vec(),
        }];
        let entries = initramfs_entries(b"bb".to_vec(), &modules, extras).unwrap();
        insta::assert_snapshot!(paths(&entries).join("\n"));
        let order = entries.iter().find_map(|e| match e {
            Entry::File { path, data, .. } if path == MODULE_ORDER => Some(data.clone()),
            _ => None,
        });
        assert_eq!(
            order.as_deref(),
            Some(b"virtio_ring.ko\nvirtio.ko\n".as_slice())
        );
    }

    #[test]
    fn extra_file_cannot_replace_init() {
        let extras = vec![ExtraFile {
            guest: "/init".into(),
            mode: 0o755,
            data: vec![],
        }];
        let err = initramfs_entries(vec![], &[], extras).unwrap_err();
        assert_eq!(
            err.to_string(),
            "extra file \"/init\": the image already has this path"
        );
    }

    #[test]
    fn extra_file_paths_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("agent");
        fs::write(&host, b"bin").unwrap();
        let check = |guest: &str, mode| {
            read_extra_files(&[(host.clone(), guest.to_string(), mode)])
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(check("/bin/castra-agent", 0o755), None);
        assert!(check("bin/x", 0o755).unwrap().contains("absolute"));
        assert!(check("/bin/../init", 0o755).unwrap().contains(".."));
        assert!(
            check("/bin/x", 0o100755)
                .unwrap()
                .contains("permission bits")
        );
        let missing = read_extra_files(&[(dir.path().join("nope"), "/bin/x".into(), 0o755)]);
        assert!(missing.err().unwrap().to_string().contains("nope"));
    }

    #[test]
    fn init_script_contract() {
        // The lines other parts of castra and the tests rely on.
        for needle in [
            "castra-guest: ready vm=$CASTRA_VM uptime=",
            "castra.vm=*",
            "castra.broker_port=*",
            "/lib/modules/castra.order",
            "/bin/castra-agent",
            "poweroff -f",
            "opt/castra/token/raw",
        ] {
            assert!(INIT_SCRIPT.contains(needle), "init.sh lost {needle:?}");
        }
        assert!(INIT_SCRIPT.starts_with("#!/bin/sh\n"));
        assert!(HANDSHAKE_SCRIPT.starts_with("#!/bin/sh\n"));
    }

    const BUSYBOX: &str = "run busybox (scripts/setup-host.sh installs busybox-static)";

    #[test]
    fn scripts_parse_with_busybox_sh() {
        for (name, script) in [("init", INIT_SCRIPT), ("handshake", HANDSHAKE_SCRIPT)] {
            let out = Command::new("busybox")
                .args(["sh", "-n", "-c", script])
                .output()
                .expect(BUSYBOX);
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Runs guest/handshake.sh under busybox sh with `broker_says` as the
    /// connection's input; returns (exit code, what it sent, its stderr).
    fn handshake(broker_says: &str, token: Option<&str>) -> (i32, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("raw");
        if let Some(t) = token {
            fs::write(&token_file, t).unwrap();
        }
        let mut child = Command::new("busybox")
            .args(["sh", "-c", HANDSHAKE_SCRIPT])
            .env("CASTRA_VM", "web")
            .env("CASTRA_TOKEN_FILE", &token_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect(BUSYBOX);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(broker_says.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    #[test]
    fn handshake_script_speaks_protocol_v1() {
        let ok = handshake("castra-broker 1 ready\nok\n", Some("s3cret"));
        assert_eq!(
            ok,
            (
                0,
                "hello vm:web token=s3cret\n".into(),
                "castra-guest: broker handshake: ok\n".into()
            )
        );
        let no_token = handshake("castra-broker 1 ready\nok\n", None);
        assert_eq!(no_token.1, "hello vm:web\n");
        let refused = handshake("castra-broker 1 ready\nerror: bad token\n", Some("x"));
        assert_eq!(refused.0, 2);
        assert_eq!(
            refused.2,
            "castra-guest: broker handshake: error: bad token\n"
        );
        let stranger = handshake("SSH-2.0-OpenSSH\n", Some("x"));
        assert_eq!(stranger.0, 1);
        assert_eq!(stranger.1, "", "must not send the token to a non-broker");
    }

    #[test]
    fn gzip_round_trips() {
        let data = write_archive(&[Entry::Dir {
            path: "bin".into(),
            mode: 0o755,
        }]);
        let packed = gzip(&data);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(packed.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }
}
