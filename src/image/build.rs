//! Building the default guest image: resolve the inputs (kernel package,
//! busybox, scripts, extra files), key the image by their hash, and if no
//! image with that key exists, unpack the kernel, decompress it to a PVH
//! `vmlinux`, pick the modules, pack the initramfs, and move the finished
//! directory into place with one rename. Then point `images/current` at it.
//!
//! It never leaves a half image under its final name: everything is written
//! into a scratch directory that is removed on any error.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::binary::{is_elf, xz_payload_offset};
use super::cpio::{Entry, write_archive};
use super::error::ImageError;
use super::manifest::{
    self, CURRENT, DEBS_DIR, IMAGES_DIR, INITRD_FILE, Inputs, KERNEL_FILE, MANIFEST, Manifest,
};
use super::modules::{ModuleDeps, WANTED, module_name};
use super::sources::{self, ScratchDir, size, write_atomic};
use super::{BuildOptions, DEFAULT_CMDLINE, DefaultImage, read_image};

/// The guest's PID 1.
pub const INIT_SCRIPT: &str = include_str!("../../guest/init.sh");
/// The handshake-only broker client the init runs when there is no agent.
pub const HANDSHAKE_SCRIPT: &str = include_str!("../../guest/handshake.sh");
/// Where the init looks for the module load order.
const MODULE_ORDER: &str = "lib/modules/castra.order";

/// How the initramfs is stored. Uncompressed boots faster under TCG (the
/// guest kernel's gunzip is emulated; QEMU loads the file into guest memory
/// either way) at the cost of a bigger file in the cache: see guest/README.md.
const COMPRESSION: Compression = Compression::None;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // Gzip is kept for measurements; see COMPRESSION.
enum Compression {
    None,
    Gzip,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
        }
    }
}

pub fn build(
    root: &Path,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<DefaultImage, ImageError> {
    let images = root.join(IMAGES_DIR);
    let debs = root.join(DEBS_DIR);
    fs::create_dir_all(&images).map_err(ImageError::io(&images))?;

    // 1. Inputs, by content.
    let kernel = sources::kernel_deb(opts.kernel_deb.as_deref(), &debs, progress)?;
    progress(&format!(
        "kernel package: {} ({})",
        kernel.path.display(),
        kernel.how
    ));
    let (busybox, busybox_from) = sources::busybox(opts.busybox.as_deref(), &debs, progress)?;
    let busybox_sha = hex::encode(Sha256::digest(&busybox));
    progress(&format!(
        "busybox: {busybox_from}, {}",
        size(busybox.len() as u64)
    ));
    let extras = read_extra_files(&opts.extra_files)?;
    let inputs = Inputs {
        kernel_deb_sha256: &kernel.sha256,
        busybox_sha256: &busybox_sha,
        init_script: INIT_SCRIPT,
        handshake_script: HANDSHAKE_SCRIPT,
        modules: WANTED,
        cmdline: DEFAULT_CMDLINE,
        compression: COMPRESSION.as_str(),
        extra_files: extras
            .iter()
            .map(|x| {
                (
                    x.guest.clone(),
                    x.mode,
                    hex::encode(Sha256::digest(&x.data)),
                )
            })
            .collect(),
    };
    let key = manifest::input_key(&inputs);
    let dir = images.join(&key);

    // 2. Unchanged inputs: nothing to build.
    if !opts.force
        && let Ok(image) = read_image(&dir)
    {
        point_current(&images, &key)?;
        progress(&format!(
            "image {} is up to date (inputs unchanged): {}",
            image.id,
            dir.display()
        ));
        return Ok(image);
    }

    // 3. Build in a scratch directory.
    let scratch = ScratchDir::new(&images, "build")?;
    let work = scratch.path();
    let unpacked = work.join("deb");
    let started = Instant::now();
    sources::run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&kernel.path)
            .arg(&unpacked),
        "unpack the kernel package",
        "install dpkg (castra's image builder expects Debian tools)",
    )?;
    progress(&format!(
        "extract: {} unpacked in {:.1}s",
        file_name(&kernel.path),
        started.elapsed().as_secs_f64()
    ));

    let (vmlinuz, version) = find_vmlinuz(&unpacked, &kernel.path)?;
    let vmlinux = work.join(KERNEL_FILE);
    let started = Instant::now();
    let vmlinuz_len = decompress_kernel(&vmlinuz, &vmlinux)?;
    let kernel_size = sources::file_len(&vmlinux)?;
    progress(&format!(
        "decompress: vmlinuz-{version} ({}) -> vmlinux ({}) in {:.1}s",
        size(vmlinuz_len),
        size(kernel_size),
        started.elapsed().as_secs_f64()
    ));

    let modules = pick_modules(&unpacked, &version, &kernel.path)?;
    let module_bytes: u64 = modules.iter().map(|(_, d)| d.len() as u64).sum();
    progress(&format!(
        "modules: {} ({}): {}",
        modules.len(),
        size(module_bytes),
        modules
            .iter()
            .map(|(n, _)| n.trim_end_matches(".ko"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    fs::remove_dir_all(&unpacked).map_err(ImageError::io(&unpacked))?;

    let entries = initramfs_entries(busybox, &modules, extras)?;
    let count = entries.len();
    let archive = write_archive(&entries);
    let initrd_bytes = match COMPRESSION {
        Compression::None => archive,
        Compression::Gzip => gzip(&archive),
    };
    let initrd = work.join(INITRD_FILE);
    fs::write(&initrd, &initrd_bytes).map_err(ImageError::io(&initrd))?;
    progress(&format!(
        "pack: {INITRD_FILE} {} ({count} entries, compression {})",
        size(initrd_bytes.len() as u64),
        COMPRESSION.as_str()
    ));

    // 4. Manifest last, then one rename makes the image visible.
    let kernel_sha256 = sources::sha256_file(&vmlinux)?;
    let initrd_sha256 = hex::encode(Sha256::digest(&initrd_bytes));
    let manifest = Manifest {
        format: manifest::MANIFEST_FORMAT,
        key: key.clone(),
        id: manifest::content_id(&kernel_sha256, &initrd_sha256, DEFAULT_CMDLINE),
        kernel_version: version,
        cmdline: DEFAULT_CMDLINE.to_string(),
        kernel_size,
        initrd_size: initrd_bytes.len() as u64,
        kernel_sha256,
        initrd_sha256,
        compression: COMPRESSION.as_str().to_string(),
        modules: modules.iter().map(|(n, _)| n.clone()).collect(),
        sources: vec![
            format!(
                "kernel {} sha256:{}",
                file_name(&kernel.path),
                kernel.sha256
            ),
            format!("busybox {busybox_from} sha256:{busybox_sha}"),
        ],
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ImageError::Broken {
        dir: work.to_path_buf(),
        reason: format!("cannot encode the manifest: {e}"),
    })?;
    let manifest_path = work.join(MANIFEST);
    fs::write(&manifest_path, json).map_err(ImageError::io(&manifest_path))?;

    if dir.exists() {
        if !opts.force && read_image(&dir).is_ok() {
            // A concurrent build of the same inputs finished first; keep its image.
            point_current(&images, &key)?;
            return read_image(&dir);
        }
        // --force, or a broken image under this key: move it aside first.
        let old = ScratchDir::new(&images, "old")?;
        fs::rename(&dir, old.path().join("image")).map_err(ImageError::io(&dir))?;
    }
    match fs::rename(work, &dir) {
        Ok(()) => scratch.keep(),
        // Another build of the same inputs won the race; its image is as good.
        Err(_) if read_image(&dir).is_ok() => {}
        Err(e) => return Err(ImageError::io(&dir)(e)),
    }
    point_current(&images, &key)?;
    let image = read_image(&dir)?;
    progress(&format!("built image {}: {}", image.id, dir.display()));
    Ok(image)
}

fn point_current(images: &Path, key: &str) -> Result<(), ImageError> {
    let current = images.join(CURRENT);
    if fs::read_to_string(&current).is_ok_and(|k| k.trim() == key) {
        return Ok(());
    }
    write_atomic(&current, format!("{key}\n").as_bytes())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| path.display().to_string())
}

/// `boot/vmlinuz-<version>` in an unpacked kernel package.
fn find_vmlinuz(unpacked: &Path, deb: &Path) -> Result<(PathBuf, String), ImageError> {
    let boot = unpacked.join("boot");
    let found = fs::read_dir(&boot).ok().and_then(|entries| {
        entries.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("vmlinuz-")
                .map(|v| (e.path(), v.to_string()))
        })
    });
    found.ok_or_else(|| ImageError::Input {
        path: deb.to_path_buf(),
        reason: "no boot/vmlinuz-* inside; pass the real linux-image-<version>-amd64 package, \
                 not the linux-image-amd64 meta package"
            .into(),
    })
}

/// Writes the uncompressed ELF kernel found in a bzImage's XZ payload
/// (`xz -dc --single-stream` from the payload offset). Returns the input size.
fn decompress_kernel(vmlinuz: &Path, out: &Path) -> Result<u64, ImageError> {
    let bzimage = fs::read(vmlinuz).map_err(ImageError::io(vmlinuz))?;
    let offset = xz_payload_offset(&bzimage).map_err(|source| ImageError::Kernel {
        path: vmlinuz.to_path_buf(),
        source,
    })?;
    let output = fs::File::create(out).map_err(ImageError::io(out))?;
    // xz reads the payload straight from the file at its offset: no pipe, so
    // xz stopping at the end of the stream cannot hit us with SIGPIPE.
    let mut input = fs::File::open(vmlinuz).map_err(ImageError::io(vmlinuz))?;
    input
        .seek(SeekFrom::Start(offset as u64))
        .map_err(ImageError::io(vmlinuz))?;
    let result = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::from(input))
        .stdout(output)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::ToolMissing {
                tool: "xz".into(),
                purpose: "decompress the kernel".into(),
                hint: "install xz-utils".into(),
            },
            _ => ImageError::io(out)(e),
        })?;
    let status = result.status;
    let stderr = String::from_utf8_lossy(&result.stderr);
    if !status.success() {
        return Err(ImageError::Command {
            command: format!("xz -dc --single-stream (payload of {})", vmlinuz.display()),
            status: status.to_string(),
            detail: stderr.trim().to_string(),
        });
    }
    let mut head = [0u8; 4];
    let ok = fs::File::open(out)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok();
    if !ok || !is_elf(&head) {
        return Err(ImageError::Input {
            path: vmlinuz.to_path_buf(),
            reason: "the decompressed payload is not an ELF vmlinux".into(),
        });
    }
    Ok(bzimage.len() as u64)
}

/// The wanted modules and their dependencies, in load order, as
/// (`<name>.ko`, uncompressed bytes).
fn pick_modules(
    unpacked: &Path,
    version: &str,
    deb: &Path,
) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    let base = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| unpacked.join(d).join(version))
        .find(|p| p.is_dir())
        .ok_or_else(|| ImageError::Input {
            path: deb.to_path_buf(),
            reason: format!("no lib/modules/{version} inside"),
        })?;
    let dep_file = base.join("modules.dep");
    if !dep_file.exists() {
        // Debian ships no modules.dep (postinst runs depmod); make one.
        let root = base
            .parent()
            .and_then(Path::parent)
            .and_then(|p| {
                if p.ends_with("lib") {
                    p.parent()
                } else {
                    Some(p)
                }
            })
            .unwrap_or(unpacked);
        sources::run(
            Command::new("depmod").arg("-b").arg(root).arg(version),
            "compute kernel module dependencies",
            "install kmod",
        )?;
    }
    let text = fs::read_to_string(&dep_file).map_err(ImageError::io(&dep_file))?;
    let to_err = |source| ImageError::Modules {
        deb: deb.to_path_buf(),
        source,
    };
    let order = ModuleDeps::parse(&text)
        .and_then(|d| d.load_order(WANTED))
        .map_err(to_err)?;
    order
        .iter()
        .map(|rel| {
            let path = base.join(rel);
            let raw = fs::read(&path).map_err(ImageError::io(&path))?;
            let data = if rel.ends_with(".ko") {
                raw
            } else if rel.ends_with(".ko.xz") {
                sources::run(
                    Command::new("xz").args(["-dc"]).arg(&path),
                    "decompress a kernel module",
                    "install xz-utils",
                )?
            } else {
                return Err(ImageError::Input {
                    path,
                    reason: "unsupported module compression (only .ko and .ko.xz)".into(),
                });
            };
            Ok((format!("{}.ko", module_name(rel)), data))
        })
        .collect()
}

/// An extra file read into memory, checked.
struct ExtraFile {
    guest: String,
    mode: u32,
    data: Vec<u8>,
}

fn read_extra_files(files: &[(PathBuf, String, u32)]) -> Result<Vec<ExtraFile>, ImageError> {
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
fn initramfs_entries(
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

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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
