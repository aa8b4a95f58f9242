//! The fast guest kernel: Debian's `linux-source-6.1` configured as
//! `make tinyconfig` plus the fragment in `guest/kernel/castra.config` with
//! every other symbol off (`kconfig.rs`), built to an uncompressed `vmlinux` (PVH entry, booted by
//! `-M microvm`), cached by the hash of its inputs.
//!
//! ```text
//! <cache_root>/kernels/
//!   <key>/vmlinux, config, kernel.json   a finished kernel (renamed into place whole)
//!   tree-<source>/linux-source-6.1/     the unpacked build tree, kept so a changed
//!                                       fragment rebuilds only what it touches
//!   tree-<source>.lock                  flock: one build per tree at a time
//! ```
//!
//! The key covers the source tarball's sha256, the fragment, the compiler's
//! version line and this recipe's version; nothing about the machine or the
//! time (the kernel's build stamp is fixed), so CI and a laptop agree on it.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ImageError;
use super::kconfig::{self, FRAGMENT};
use super::sources::{self, ScratchDir, size, write_atomic};

/// Where Debian's `linux-source-6.1` package puts the source.
pub const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
/// Bumped when the steps below change in a way the key does not capture.
const KERNEL_RECIPE: u32 = 2;
const KERNELS_DIR: &str = "kernels";
const RECORD: &str = "kernel.json";
/// The previous build's number of make steps, for the progress percentage.
const STEPS_FILE: &str = ".castra-steps";
/// tinyconfig's two files and the fragment, handed to `make allnoconfig`.
const ALLCONFIG: &str = "castra.allconfig";
/// Written once the tarball is fully unpacked.
const UNPACKED_MARK: &str = ".castra-unpacked";
/// A fixed build stamp: the kernel's version string then names no machine or time.
const BUILD_ENV: &[(&str, &str)] = &[
    ("KBUILD_BUILD_TIMESTAMP", "2023-01-01"),
    ("KBUILD_BUILD_USER", "castra"),
    ("KBUILD_BUILD_HOST", "castra"),
];
/// How often the progress display prints a line while make runs.
const PROGRESS_EVERY_SECS: u64 = 15;

/// A built fast kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FastKernel {
    pub key: String,
    /// `make kernelrelease`, e.g. `6.1.192`.
    pub version: String,
    pub source_sha256: String,
    pub vmlinux_size: u64,
    pub build_seconds: f64,
    #[serde(skip)]
    pub vmlinux: PathBuf,
}

/// The build tools the kernel needs, as (what to look for, Debian package).
/// A path is checked as a file, a bare name on `PATH`.
const NEEDS: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("bc", "bc"),
    ("bison", "bison"),
    ("flex", "flex"),
    ("tar", "tar"),
    ("xz", "xz-utils"),
    ("perl", "perl"),
    ("/usr/include/libelf.h", "libelf-dev"),
    ("/usr/include/stdio.h", "libc6-dev"),
    (SOURCE_TARBALL, "linux-source-6.1"),
];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            fs::metadata(dir.join(tool)).is_ok_and(|m| {
                m.is_file() && {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o111 != 0
                }
            })
        })
    })
}

/// Every missing build dependency at once, so one install fixes them all.
pub fn missing_dependencies(source: &Path) -> Vec<(String, String)> {
    NEEDS
        .iter()
        .map(|&(what, package)| {
            if what == SOURCE_TARBALL {
                (source.display().to_string(), package)
            } else {
                (what.to_string(), package)
            }
        })
        .filter(|(what, _)| {
            if what.starts_with('/') {
                !Path::new(what).is_file()
            } else {
                !on_path(what)
            }
        })
        .map(|(what, package)| (what, package.to_string()))
        .collect()
}

/// The kernel's cache key.
pub fn kernel_key(source_sha256: &str, fragment: &str, compiler: &str) -> String {
    let mut h = Sha256::new();
    for (k, v) in [
        ("recipe", KERNEL_RECIPE.to_string().as_str()),
        ("source", source_sha256),
        ("fragment", fragment),
        ("compiler", compiler),
    ] {
        h.update(format!("{k}={}:", v.len()).as_bytes());
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// Builds the fast kernel, or returns the cached one built from the same inputs.
pub fn build(
    root: &Path,
    source: &Path,
    force: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<FastKernel, ImageError> {
    let missing = missing_dependencies(source);
    if !missing.is_empty() {
        return Err(ImageError::KernelDeps { missing });
    }
    let settings = kconfig::parse_fragment(FRAGMENT)?;
    let kernels = root.join(KERNELS_DIR);
    fs::create_dir_all(&kernels).map_err(ImageError::io(&kernels))?;
    let source_sha256 = source_sha256(&kernels, source)?;
    let compiler = first_line(&sources::run(
        Command::new("gcc").arg("--version"),
        "name the compiler",
        "install gcc",
    )?);
    let key = kernel_key(&source_sha256, FRAGMENT, &compiler);
    let dir = kernels.join(&key);
    if !force && let Ok(k) = read(&dir) {
        progress(&format!(
            "kernel: {} is up to date (inputs unchanged): {}",
            k.version,
            dir.display()
        ));
        return Ok(k);
    }

    // One build per tree: a second castra waits here, then finds the kernel built.
    let tree = kernels.join(format!("tree-{}", &source_sha256[..16]));
    let lock_path = kernels.join(format!("tree-{}.lock", &source_sha256[..16]));
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(ImageError::io(&lock_path))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| {
        ImageError::io(&lock_path)(std::io::Error::from_raw_os_error(e as i32))
    })?;
    if !force && let Ok(k) = read(&dir) {
        return Ok(k);
    }

    let started = Instant::now();
    let src = unpack(source, &tree, progress)?;
    progress("kernel: configuring (tinyconfig + guest/kernel/castra.config, the rest off)");
    // `make tinyconfig` is allnoconfig plus the two tiny.config files; giving allnoconfig
    // those and the fragment as KCONFIG_ALLCONFIG applies the fragment on top of tinyconfig
    // with every symbol it does not name off (a merge + olddefconfig would instead turn
    // on everything newly visible that defaults to y: IPv6, ethtool, PTP, ...).
    let mut allconfig = String::new();
    for tiny in ["kernel/configs/tiny.config", "arch/x86/configs/tiny.config"] {
        let path = src.join(tiny);
        allconfig.push_str(&fs::read_to_string(&path).map_err(ImageError::io(&path))?);
        allconfig.push('\n');
    }
    allconfig.push_str(FRAGMENT);
    write_atomic(&src.join(ALLCONFIG), allconfig.as_bytes())?;
    make(
        &src,
        &[&format!("KCONFIG_ALLCONFIG={ALLCONFIG}"), "allnoconfig"],
        "configure the kernel (allnoconfig with tinyconfig + the fragment)",
    )?;
    let config_path = src.join(".config");
    let config = fs::read_to_string(&config_path).map_err(ImageError::io(&config_path))?;
    let lost = kconfig::lost(&settings, &config);
    if !lost.is_empty() {
        let what = lost
            .iter()
            .map(|(s, have)| {
                format!(
                    "{}={} (line {}; .config has {})",
                    s.symbol,
                    s.value,
                    s.line,
                    have.as_deref().unwrap_or("nothing")
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ImageError::KernelConfig { tree: src, what });
    }
    compile(&src, progress)?;
    let version = first_line(&make(&src, &["-s", "kernelrelease"], "name the kernel")?);

    let scratch = ScratchDir::new(&kernels, "kernel")?;
    let built = src.join("vmlinux");
    let vmlinux = scratch.path().join("vmlinux");
    fs::copy(&built, &vmlinux).map_err(ImageError::io(&built))?;
    fs::copy(&config_path, scratch.path().join("config")).map_err(ImageError::io(&config_path))?;
    let record = FastKernel {
        key: key.clone(),
        version,
        source_sha256,
        vmlinux_size: sources::file_len(&vmlinux)?,
        build_seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        vmlinux: PathBuf::new(),
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|e| ImageError::Broken {
        dir: scratch.path().to_path_buf(),
        reason: format!("cannot encode {RECORD}: {e}"),
    })?;
    let record_path = scratch.path().join(RECORD);
    fs::write(&record_path, json).map_err(ImageError::io(&record_path))?;
    if dir.exists() {
        let old = ScratchDir::new(&kernels, "old")?;
        fs::rename(&dir, old.path().join("kernel")).map_err(ImageError::io(&dir))?;
    }
    fs::rename(scratch.path(), &dir).map_err(ImageError::io(&dir))?;
    scratch.keep();
    let k = read(&dir)?;
    progress(&format!(
        "kernel: built {} ({}) in {:.0}s: {}",
        k.version,
        size(k.vmlinux_size),
        k.build_seconds,
        dir.display()
    ));
    Ok(k)
}

/// The tarball's sha256, remembered beside the kernels with its size and
/// mtime: hashing 130 MiB on every `image build` costs seconds (tens in a
/// debug build), and the package manager replaces the file when it changes.
fn source_sha256(kernels: &Path, source: &Path) -> Result<String, ImageError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(source).map_err(ImageError::io(source))?;
    let stamp = format!(
        "{} {} {} {}\n",
        source.display(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    let memo = kernels.join("source.sha256");
    if let Ok(text) = fs::read_to_string(&memo)
        && let Some(sum) = text.strip_prefix(&stamp)
        && sum.trim().len() == 64
    {
        return Ok(sum.trim().to_string());
    }
    let sum = sources::sha256_file(source)?;
    write_atomic(&memo, format!("{stamp}{sum}\n").as_bytes())?;
    Ok(sum)
}

/// A finished kernel directory, checked by size.
fn read(dir: &Path) -> Result<FastKernel, ImageError> {
    let path = dir.join(RECORD);
    let broken = |reason: String| ImageError::Broken {
        dir: dir.to_path_buf(),
        reason,
    };
    let text = fs::read_to_string(&path).map_err(|e| broken(format!("{}: {e}", path.display())))?;
    let mut k: FastKernel =
        serde_json::from_str(&text).map_err(|e| broken(format!("{}: {e}", path.display())))?;
    k.vmlinux = dir.join("vmlinux");
    let len = sources::file_len(&k.vmlinux)?;
    if len != k.vmlinux_size {
        return Err(broken(format!(
            "{} is {len} bytes, {RECORD} says {}",
            k.vmlinux.display(),
            k.vmlinux_size
        )));
    }
    Ok(k)
}

/// The unpacked source directory inside `tree`, unpacking the tarball first if needed.
fn unpack(
    source: &Path,
    tree: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, ImageError> {
    if tree.join(UNPACKED_MARK).is_file()
        && let Some(dir) = only_subdir(tree)
    {
        return Ok(dir);
    }
    if tree.exists() {
        fs::remove_dir_all(tree).map_err(ImageError::io(tree))?;
    }
    let parent = tree.parent().unwrap_or(Path::new("."));
    let scratch = ScratchDir::new(parent, "tree")?;
    progress(&format!(
        "kernel: unpacking {} ({})",
        source.display(),
        size(sources::file_len(source)?)
    ));
    let started = Instant::now();
    sources::run(
        Command::new("tar")
            .arg("-xf")
            .arg(source)
            .arg("-C")
            .arg(scratch.path()),
        "unpack the kernel source",
        "install tar and xz-utils",
    )?;
    let mark = scratch.path().join(UNPACKED_MARK);
    fs::write(&mark, b"").map_err(ImageError::io(&mark))?;
    fs::rename(scratch.path(), tree).map_err(ImageError::io(tree))?;
    scratch.keep();
    progress(&format!(
        "kernel: unpacked in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    only_subdir(tree).ok_or_else(|| ImageError::Input {
        path: source.to_path_buf(),
        reason: "the tarball does not hold one top directory".into(),
    })
}

fn only_subdir(dir: &Path) -> Option<PathBuf> {
    let mut dirs = fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path());
    let first = dirs.next()?;
    dirs.next().is_none().then_some(first)
}

fn make_command(src: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.current_dir(src)
        .envs(BUILD_ENV.iter().copied())
        // A make (or cargo) above us must not hand its jobserver or flags down.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    cmd
}

fn make(src: &Path, args: &[&str], purpose: &str) -> Result<Vec<u8>, ImageError> {
    sources::run(
        make_command(src).args(args),
        purpose,
        "install make (scripts/setup-host.sh)",
    )
}

/// `make -j<cores> vmlinux`, printing a progress line every few seconds.
fn compile(src: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), ImageError> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let steps_file = src.join(STEPS_FILE);
    let expected = fs::read_to_string(&steps_file)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let mut child = make_command(src)
        .arg(format!("-j{jobs}"))
        .arg("vmlinux")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ImageError::io(src))?;
    let stderr = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            let mut tail: Vec<String> = Vec::new();
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                if tail.len() == 12 {
                    tail.remove(0);
                }
                tail.push(line);
            }
            tail
        })
    });
    let started = Instant::now();
    progress(&format!(
        "kernel: compiling with make -j{jobs} (minutes on a small machine; cached afterwards)"
    ));
    let mut done = 0usize;
    let mut shown = 0u64;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let Some((verb, target)) = kconfig::build_step(&line) else {
                continue;
            };
            done += 1;
            let secs = started.elapsed().as_secs();
            if secs >= shown + PROGRESS_EVERY_SECS {
                shown = secs;
                progress(&kconfig::progress_line(
                    done,
                    expected,
                    secs,
                    &format!("{verb} {target}"),
                ));
            }
        }
    }
    let status = child.wait().map_err(ImageError::io(src))?;
    let tail = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if !status.success() {
        return Err(ImageError::Command {
            command: format!("make -j{jobs} vmlinux (in {})", src.display()),
            status: status.to_string(),
            detail: tail.join("\n"),
        });
    }
    if done > 0 {
        let _ = fs::write(&steps_file, done.to_string());
    }
    Ok(())
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_covers_source_fragment_and_compiler() {
        let base = kernel_key("s", "CONFIG_A=y\n", "gcc 12");
        assert_eq!(base, kernel_key("s", "CONFIG_A=y\n", "gcc 12"));
        assert_ne!(base, kernel_key("t", "CONFIG_A=y\n", "gcc 12"));
        assert_ne!(base, kernel_key("s", "CONFIG_A=n\n", "gcc 12"));
        assert_ne!(base, kernel_key("s", "CONFIG_A=y\n", "gcc 13"));
    }

    #[test]
    fn a_missing_source_is_named_with_its_package() {
        let missing = missing_dependencies(Path::new("/nonexistent/linux-source-6.1.tar.xz"));
        assert!(
            missing.contains(&(
                "/nonexistent/linux-source-6.1.tar.xz".into(),
                "linux-source-6.1".into()
            )),
            "{missing:?}"
        );
        let err = ImageError::KernelDeps { missing }.to_string();
        assert!(err.contains("scripts/setup-host.sh"), "{err}");
        assert!(err.contains("--kernel debian"), "{err}");
        assert!(err.contains("linux-source-6.1"), "{err}");
    }
}
