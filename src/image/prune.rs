//! `castra image prune`: old builds in the image cache. Removed: default
//! image builds (`images/<key>/`) other than the current one, Debian+Nix
//! builds (`debian-nix/<key>/`) other than its current one, all but the
//! newest of its debootstrap trees (`debian-nix/base-*`), and kernel
//! packages (`debs/linux-image-*-amd64_*.deb`) the current default image was
//! not built from. Kept, whatever their age: anything a running process
//! (a QEMU of any project) names on its command line.
//!
//! [`plan`] decides from the cache listing and the command lines it is given;
//! [`remove`] deletes. [`running_command_lines`] reads /proc.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::manifest::{CURRENT, DEBS_DIR, IMAGES_DIR, MANIFEST};
use crate::fsutil::disk_usage;

/// The Debian+Nix guest's cache directory (guest/debian-nix/build.sh).
pub const DEBIAN_NIX_DIR: &str = "debian-nix";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub path: PathBuf,
    pub bytes: u64,
    /// Why it goes, or why it stays.
    pub why: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PrunePlan {
    pub remove: Vec<Entry>,
    pub keep: Vec<Entry>,
}

impl PrunePlan {
    pub fn bytes(&self) -> u64 {
        self.remove.iter().map(|e| e.bytes).sum()
    }
}

/// Decide what to remove under the cache `root`, given the command lines
/// of running processes (one string each, arguments joined by spaces).
pub fn plan(root: &Path, running: &[String]) -> PrunePlan {
    let mut p = PrunePlan::default();
    let in_use = |path: &Path| {
        let dir = path.to_string_lossy();
        running.iter().any(|c| c.contains(&*dir))
    };
    let mut decide = |path: PathBuf, keep: Option<&str>, gone: &str| {
        let bytes = disk_usage(&path);
        let entry = |why: &str| Entry {
            path: path.clone(),
            bytes,
            why: why.to_string(),
        };
        match keep {
            Some(why) => p.keep.push(entry(why)),
            None if in_use(&path) => p.keep.push(entry("in use by a running process (a VM)")),
            None => p.remove.push(entry(gone)),
        }
    };

    // Default image builds.
    let images = root.join(IMAGES_DIR);
    let current = read_current(&images);
    for dir in subdirs(&images) {
        let key = name_of(&dir);
        let keep = (Some(&key) == current.as_ref()).then_some("the current default image");
        decide(dir, keep, "an older default image build");
    }

    // Debian+Nix builds and debootstrap trees.
    let nix = root.join(DEBIAN_NIX_DIR);
    let nix_current = read_current(&nix);
    let mut bases: Vec<PathBuf> = Vec::new();
    for dir in subdirs(&nix) {
        let name = name_of(&dir);
        if name.starts_with("base-") {
            bases.push(dir);
        } else if name.starts_with('.') {
            decide(dir, None, "a Debian+Nix build that never finished");
        } else {
            let keep =
                (Some(&name) == nix_current.as_ref()).then_some("the current Debian+Nix image");
            decide(dir, keep, "an older Debian+Nix image build");
        }
    }
    bases.sort_by_key(|b| std::fs::metadata(b).and_then(|m| m.modified()).ok());
    let newest = bases.pop();
    for b in bases {
        decide(b, None, "an older debootstrap tree");
    }
    if let Some(b) = newest {
        decide(
            b,
            Some("the newest debootstrap tree (reused by the next build)"),
            "",
        );
    }

    // Kernel packages the current default image was not built from.
    let used_debs: Vec<String> = current
        .as_ref()
        .and_then(|k| std::fs::read_to_string(images.join(k).join(MANIFEST)).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|m| m["sources"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.as_str()?.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    let debs = root.join(DEBS_DIR);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&debs)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for f in files {
        let name = name_of(&f);
        let deb = name.strip_suffix(".sha256").unwrap_or(&name).to_string();
        let is_kernel = deb.starts_with("linux-image-") && !deb.starts_with("linux-image-amd64_");
        if !is_kernel || !deb.ends_with(".deb") {
            continue;
        }
        let keep = used_debs
            .contains(&deb)
            .then_some("the current default image's kernel package");
        decide(f, keep, "a kernel package no current image is built from");
    }
    p
}

/// Delete what the plan removes; returns bytes reclaimed and errors met.
pub fn remove(plan: &PrunePlan) -> (u64, Vec<String>) {
    let mut reclaimed = 0;
    let mut errors = Vec::new();
    for e in &plan.remove {
        let res = if e.path.is_dir() {
            std::fs::remove_dir_all(&e.path)
        } else {
            std::fs::remove_file(&e.path)
        };
        match res {
            Ok(()) => reclaimed += e.bytes,
            Err(err) => errors.push(format!("cannot remove {}: {err}", e.path.display())),
        }
    }
    (reclaimed, errors)
}

/// The command line of every process we can read, arguments joined by spaces.
pub fn running_command_lines() -> Vec<String> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .collect()
        })
        .unwrap_or_default()
}

fn read_current(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(CURRENT))
        .ok()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, bytes: usize) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![1u8; bytes]).unwrap();
    }

    fn names(entries: &[Entry], root: &Path) -> Vec<String> {
        entries
            .iter()
            .map(|e| e.path.strip_prefix(root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn keeps_current_and_running_builds_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for key in ["aaa", "bbb", "ccc"] {
            touch(&root.join("images").join(key).join("vmlinux"), 8192);
        }
        std::fs::write(root.join("images/current"), "bbb\n").unwrap();
        std::fs::write(
            root.join("images/bbb/manifest.json"),
            r#"{"sources":["kernel linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb sha256:x"]}"#,
        )
        .unwrap();
        for deb in [
            "linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb",
            "linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb.sha256",
            "linux-image-6.1.0-56-amd64_6.1.190-1_amd64.deb",
            "linux-image-amd64_6.1.192-3_amd64.deb",
        ] {
            touch(&root.join("debs").join(deb), 4096);
        }
        touch(&root.join("debian-nix/k1/disk.qcow2"), 4096);
        touch(&root.join("debian-nix/k2/disk.qcow2"), 4096);
        touch(&root.join("debian-nix/base-1/root/x"), 4096);
        std::fs::write(root.join("debian-nix/current"), "k2").unwrap();
        // A QEMU runs on image "aaa".
        let running = vec![format!(
            "qemu-system-x86_64 -kernel {}/images/aaa/vmlinux -m 256",
            root.display()
        )];
        let p = plan(root, &running);
        assert_eq!(
            names(&p.remove, root),
            [
                "images/ccc",
                "debian-nix/k1",
                "debs/linux-image-6.1.0-56-amd64_6.1.190-1_amd64.deb"
            ]
        );
        assert_eq!(
            names(&p.keep, root),
            [
                "images/aaa",
                "images/bbb",
                "debian-nix/k2",
                "debian-nix/base-1",
                "debs/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb",
                "debs/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb.sha256",
            ]
        );
        assert!(p.keep[0].why.contains("running"));
        assert!(p.bytes() >= 8192 + 4096 + 4096);
        let (reclaimed, errors) = remove(&p);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(reclaimed, p.bytes());
        assert!(!root.join("images/ccc").exists());
        assert!(root.join("images/aaa/vmlinux").exists());
        assert!(plan(root, &running).remove.is_empty());
    }
}
