//! Building the default guest image: resolve the inputs (kernel package,
//! busybox, scripts, extra files), key the image by their hash, and if no
//! image with that key exists, unpack the kernel, decompress it to a PVH
//! `vmlinux`, pick the modules, pack the initramfs, and move the finished
//! directory into place with one rename. Then point `images/current` at it.
//!
//! It never leaves a half image under its final name: everything is written
//! into a scratch directory that is removed on any error.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::binary::{is_elf, xz_payload_offset};
use super::cpio::write_archive;
use super::error::ImageError;
use super::kernel;
use super::manifest::{
    self, CURRENT, DEBS_DIR, IMAGES_DIR, INITRD_FILE, Inputs, KERNEL_FILE, MANIFEST, Manifest,
};
use super::modules::{ModuleDeps, WANTED, module_name};
use super::sources::{self, ScratchDir, size, write_atomic};
use super::store::{BuildOptions, DEFAULT_CMDLINE, DefaultImage, KernelChoice, read_image};

use super::initramfs::{
    COMPRESSION, Compression, HANDSHAKE_SCRIPT, INIT_SCRIPT, gzip, initramfs_entries,
    read_extra_files,
};

pub fn build(
    root: &Path,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<DefaultImage, ImageError> {
    let images = root.join(IMAGES_DIR);
    let debs = root.join(DEBS_DIR);
    fs::create_dir_all(&images).map_err(ImageError::io(&images))?;

    // 1. Inputs, by content.
    let kernel = match opts.kernel {
        KernelChoice::Debian => {
            let deb = sources::kernel_deb(opts.kernel_deb.as_deref(), &debs, progress)?;
            progress(&format!(
                "kernel package: {} ({})",
                deb.path.display(),
                deb.how
            ));
            KernelInput::Debian(deb)
        }
        KernelChoice::Fast => {
            let source = opts
                .kernel_source
                .clone()
                .unwrap_or_else(|| PathBuf::from(kernel::SOURCE_TARBALL));
            KernelInput::Fast(kernel::build(root, &source, opts.force, progress)?)
        }
    };
    let (busybox, busybox_from) = sources::busybox(opts.busybox.as_deref(), &debs, progress)?;
    let busybox_sha = hex::encode(Sha256::digest(&busybox));
    progress(&format!(
        "busybox: {busybox_from}, {}",
        size(busybox.len() as u64)
    ));
    let extras = read_extra_files(&opts.extra_files)?;
    let (kernel_id, wanted): (&str, &[&str]) = match &kernel {
        KernelInput::Debian(deb) => (&deb.sha256, WANTED),
        // Everything is built in: no modules, no insmod at boot.
        KernelInput::Fast(k) => (&k.key, &[]),
    };
    let inputs = Inputs {
        kernel_kind: opts.kernel.as_str(),
        kernel_deb_sha256: kernel_id,
        busybox_sha256: &busybox_sha,
        init_script: INIT_SCRIPT,
        handshake_script: HANDSHAKE_SCRIPT,
        modules: wanted,
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
    let vmlinux = work.join(KERNEL_FILE);
    let (version, modules, source_line) = match &kernel {
        KernelInput::Debian(deb) => {
            let (version, modules) = debian_kernel(deb, work, &vmlinux, progress)?;
            let line = format!("kernel {} sha256:{}", file_name(&deb.path), deb.sha256);
            (version, modules, line)
        }
        KernelInput::Fast(k) => {
            fs::copy(&k.vmlinux, &vmlinux).map_err(ImageError::io(&k.vmlinux))?;
            let line = format!(
                "kernel linux-source {} (guest/kernel/castra.config) key:{} source sha256:{}",
                k.version, k.key, k.source_sha256
            );
            (k.version.clone(), Vec::new(), line)
        }
    };
    let kernel_size = sources::file_len(&vmlinux)?;

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
        id: manifest::content_id(
            opts.kernel.as_str(),
            &kernel_sha256,
            &initrd_sha256,
            DEFAULT_CMDLINE,
        ),
        kernel: opts.kernel.as_str().to_string(),
        kernel_version: version,
        cmdline: DEFAULT_CMDLINE.to_string(),
        kernel_size,
        initrd_size: initrd_bytes.len() as u64,
        kernel_sha256,
        initrd_sha256,
        compression: COMPRESSION.as_str().to_string(),
        modules: modules.iter().map(|(n, _)| n.clone()).collect(),
        sources: vec![
            source_line,
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

/// Where the kernel comes from.
enum KernelInput {
    Debian(sources::Source),
    Fast(kernel::FastKernel),
}

/// The stock Debian kernel: unpack the package, decompress its bzImage to
/// `vmlinux`, pick the modules. Returns the version and the modules.
#[allow(clippy::type_complexity)]
fn debian_kernel(
    deb: &sources::Source,
    work: &Path,
    vmlinux: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(String, Vec<(String, Vec<u8>)>), ImageError> {
    let unpacked = work.join("deb");
    let started = Instant::now();
    sources::run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb.path)
            .arg(&unpacked),
        "unpack the kernel package",
        "install dpkg (castra's image builder expects Debian tools)",
    )?;
    progress(&format!(
        "extract: {} unpacked in {:.1}s",
        file_name(&deb.path),
        started.elapsed().as_secs_f64()
    ));
    let (vmlinuz, version) = find_vmlinuz(&unpacked, &deb.path)?;
    let started = Instant::now();
    let vmlinuz_len = decompress_kernel(&vmlinuz, vmlinux)?;
    progress(&format!(
        "decompress: vmlinuz-{version} ({}) -> vmlinux ({}) in {:.1}s",
        size(vmlinuz_len),
        size(sources::file_len(vmlinux)?),
        started.elapsed().as_secs_f64()
    ));
    let modules = pick_modules(&unpacked, &version, &deb.path)?;
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
    Ok((version, modules))
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
