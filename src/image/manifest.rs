//! The image cache's small files: the input key that names an image directory
//! (a hash of everything the image is built from), the `manifest.json` inside
//! each finished image, and the `current` pointer that `locate` follows.
//!
//! ```text
//! <cache_root>/
//!   images/current             the key of the image `locate` returns (one line)
//!   images/<key>/manifest.json Manifest (written last, before the atomic rename)
//!   images/<key>/vmlinux       uncompressed kernel (PVH entry, for -M microvm)
//!   images/<key>/initrd.img    newc cpio initramfs
//!   debs/                      downloaded .deb files (+ .sha256 sidecars)
//! ```
//!
//! Key computation and manifest (de)serialisation are pure; reading and
//! writing these files is in `mod.rs` and `build.rs`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const IMAGES_DIR: &str = "images";
pub const DEBS_DIR: &str = "debs";
pub const CURRENT: &str = "current";
pub const MANIFEST: &str = "manifest.json";
pub const KERNEL_FILE: &str = "vmlinux";
pub const INITRD_FILE: &str = "initrd.img";

/// Bumped whenever the build recipe changes in a way the inputs below do not
/// capture (so old images are not reused by mistake).
pub const RECIPE_VERSION: u32 = 1;

/// Manifest format version; `locate` refuses other versions.
pub const MANIFEST_FORMAT: u32 = 1;

/// Everything an image is built from, by content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs<'a> {
    /// `fast` or `debian`.
    pub kernel_kind: &'a str,
    /// The Debian kernel package's sha256, or the fast kernel's key.
    pub kernel_deb_sha256: &'a str,
    pub busybox_sha256: &'a str,
    pub init_script: &'a str,
    pub handshake_script: &'a str,
    pub modules: &'a [&'a str],
    pub cmdline: &'a str,
    pub compression: &'a str,
    /// (guest path, mode, sha256 of content), in the caller's order.
    pub extra_files: Vec<(String, u32, String)>,
}

/// The hex sha256 of a canonical, line-based rendering of the inputs.
pub fn input_key(inputs: &Inputs<'_>) -> String {
    let mut h = Sha256::new();
    let mut line = |k: &str, v: &str| {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.len().to_string().as_bytes());
        h.update(b":");
        h.update(v.as_bytes());
        h.update(b"\n");
    };
    line("recipe", &RECIPE_VERSION.to_string());
    line("kernel_kind", inputs.kernel_kind);
    line("kernel_deb", inputs.kernel_deb_sha256);
    line("busybox", inputs.busybox_sha256);
    line("init", inputs.init_script);
    line("handshake", inputs.handshake_script);
    line("modules", &inputs.modules.join(","));
    line("cmdline", inputs.cmdline);
    line("compression", inputs.compression);
    for (guest, mode, sha) in &inputs.extra_files {
        line("extra", &format!("{guest} {mode:o} {sha}"));
    }
    hex::encode(h.finalize())
}

/// The record of one finished image (`images/<key>/manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub key: String,
    /// Short hex content id: sha256 over the kernel's and initrd's hashes and
    /// the command line, first 16 hex digits.
    pub id: String,
    /// `fast` (built from linux-source) or `debian` (the stock package).
    #[serde(default = "debian")]
    pub kernel: String,
    pub kernel_version: String,
    pub cmdline: String,
    pub kernel_size: u64,
    pub initrd_size: u64,
    pub kernel_sha256: String,
    pub initrd_sha256: String,
    pub compression: String,
    pub modules: Vec<String>,
    pub sources: Vec<String>,
}

fn debian() -> String {
    "debian".into()
}

/// The content id of an image from its parts' hashes: `<kind>-<16 hex>`, so
/// the kernel choice shows wherever the id does (plans, launch records).
pub fn content_id(kind: &str, kernel_sha256: &str, initrd_sha256: &str, cmdline: &str) -> String {
    let mut h = Sha256::new();
    for part in [kernel_sha256, initrd_sha256, cmdline] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    format!("{kind}-{}", &hex::encode(h.finalize())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs<'static> {
        Inputs {
            kernel_kind: "fast",
            kernel_deb_sha256: "aa",
            busybox_sha256: "bb",
            init_script: "#!/bin/sh\n",
            handshake_script: "#!/bin/sh\n",
            modules: &["virtio", "virtio_net"],
            cmdline: "console=ttyS0",
            compression: "none",
            extra_files: vec![],
        }
    }

    #[test]
    fn key_is_stable_and_covers_every_input() {
        let base = input_key(&inputs());
        assert_eq!(base, input_key(&inputs()));
        assert_eq!(base.len(), 64);
        let changed = [
            Inputs {
                kernel_deb_sha256: "ab",
                ..inputs()
            },
            Inputs {
                kernel_kind: "debian",
                ..inputs()
            },
            Inputs {
                busybox_sha256: "bc",
                ..inputs()
            },
            Inputs {
                init_script: "#!/bin/sh \n",
                ..inputs()
            },
            Inputs {
                handshake_script: "",
                ..inputs()
            },
            Inputs {
                modules: &["virtio"],
                ..inputs()
            },
            Inputs {
                cmdline: "console=ttyS1",
                ..inputs()
            },
            Inputs {
                compression: "gzip",
                ..inputs()
            },
            Inputs {
                extra_files: vec![("/bin/castra-agent".into(), 0o755, "cc".into())],
                ..inputs()
            },
        ];
        for (i, c) in changed.iter().enumerate() {
            assert_ne!(input_key(c), base, "change {i} did not change the key");
        }
    }

    #[test]
    fn extra_file_mode_and_path_matter() {
        let with = |path: &str, mode| {
            input_key(&Inputs {
                extra_files: vec![(path.into(), mode, "cc".into())],
                ..inputs()
            })
        };
        assert_ne!(with("/bin/a", 0o755), with("/bin/a", 0o644));
        assert_ne!(with("/bin/a", 0o755), with("/bin/b", 0o755));
    }

    #[test]
    fn fields_cannot_bleed_into_each_other() {
        let a = Inputs {
            init_script: "x\nhandshake=1:y",
            handshake_script: "",
            ..inputs()
        };
        let b = Inputs {
            init_script: "x",
            handshake_script: "y",
            ..inputs()
        };
        assert_ne!(input_key(&a), input_key(&b));
    }

    #[test]
    fn content_id_is_short_hex() {
        let id = content_id("fast", "k", "i", "c");
        let hex = id.strip_prefix("fast-").unwrap();
        assert_eq!(hex.len(), 16);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, content_id("fast", "k", "i", "c2"));
        assert!(content_id("debian", "k", "i", "c").starts_with("debian-"));
    }
}
