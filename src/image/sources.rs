//! Where the image's raw materials come from: Debian packages fetched with
//! `apt-get download` into `<cache_root>/debs` (or taken from apt's own
//! archive cache, or given by path), and a static busybox.
//!
//! Pure parsing of apt's output is kept apart from the commands that produce
//! it. This module does not unpack kernels or build archives.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::binary::is_static_elf64;
use super::error::ImageError;

/// apt's archive cache, checked before downloading (so a machine that has
/// the packages cached builds with no network).
const APT_ARCHIVES: &str = "/var/cache/apt/archives";
/// Where busybox-static installs its binary.
const HOST_BUSYBOX: &str = "/bin/busybox";

/// One line of `apt-get download --print-uris`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptUri {
    pub uri: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

/// Parses `'URI' FILENAME SIZE SHA256:HEX` lines.
pub fn parse_print_uris(text: &str) -> Vec<AptUri> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let uri = words.next()?.trim_matches('\'').to_string();
            let filename = words.next()?.to_string();
            let size = words.next()?.parse().ok()?;
            let sha256 = words.next()?.strip_prefix("SHA256:")?.to_lowercase();
            Some(AptUri {
                uri,
                filename,
                size,
                sha256,
            })
        })
        .collect()
}

/// The first `linux-image-*` package named in a meta package's `Depends`
/// field (`linux-image-6.1.0-56-amd64 (= 6.1.192-2)`).
pub fn kernel_package_from_depends(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|alt| alt.split_whitespace().next().unwrap_or(""))
        .find(|name| name.starts_with("linux-image-"))
        .map(str::to_string)
}

/// A file the image is built from, with its content hash.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub sha256: String,
    /// How it was obtained, for progress lines ("cached", "downloaded", ...).
    pub how: String,
}

pub fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut file = fs::File::open(path).map_err(ImageError::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(ImageError::io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Runs a command, returning stdout; a missing binary or a failure becomes an
/// `ImageError` that names the command and its stderr.
pub fn run(cmd: &mut Command, purpose: &str, hint: &str) -> Result<Vec<u8>, ImageError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let tool = cmd.get_program().to_string_lossy().to_string();
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ImageError::ToolMissing {
                tool: tool.clone(),
                purpose: purpose.to_string(),
                hint: hint.to_string(),
            }
        } else {
            ImageError::Command {
                command: shown.clone(),
                status: "could not start".into(),
                detail: e.to_string(),
            }
        }
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let detail = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output")
            .to_string();
        return Err(ImageError::Command {
            command: shown,
            status: out.status.to_string(),
            detail,
        });
    }
    Ok(out.stdout)
}

/// Fetches one Debian package into `debs_dir`, reusing a verified copy there
/// or in apt's archive cache. `flag` names the CLI option that bypasses apt.
pub fn fetch_deb(
    package: &str,
    debs_dir: &Path,
    flag: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Source, ImageError> {
    fs::create_dir_all(debs_dir).map_err(ImageError::io(debs_dir))?;
    // `--print-uris` prints nothing for files already in the working
    // directory, so ask from an empty scratch directory.
    let scratch = ScratchDir::new(debs_dir, "query")?;
    let hint = format!("castra downloads Debian packages with apt; pass {flag} PATH instead");
    let text = run(
        Command::new("apt-get")
            .args(["download", "--print-uris", package])
            .current_dir(scratch.path()),
        &format!("look up the {package} package"),
        &hint,
    )
    .map_err(|e| match e {
        ImageError::Command { ref detail, .. } if detail.contains("Unable to locate") => {
            ImageError::NoPackage {
                package: package.to_string(),
                flag: flag.to_string(),
            }
        }
        other => other,
    })?;
    let entry = parse_print_uris(&String::from_utf8_lossy(&text))
        .into_iter()
        .next()
        .ok_or_else(|| ImageError::NoPackage {
            package: package.to_string(),
            flag: flag.to_string(),
        })?;
    let dest = debs_dir.join(&entry.filename);
    let sidecar = debs_dir.join(format!("{}.sha256", entry.filename));

    // 1. Our own cache, verified when it was stored.
    if let (Ok(meta), Ok(sum)) = (fs::metadata(&dest), fs::read_to_string(&sidecar))
        && meta.len() == entry.size
        && sum.trim() == entry.sha256
    {
        return Ok(Source {
            path: dest,
            sha256: entry.sha256,
            how: format!("cached, {}", size(entry.size)),
        });
    }

    // 2. apt's archive cache, or 3. the network.
    let staged = scratch.path().join(&entry.filename);
    let apt_copy = Path::new(APT_ARCHIVES).join(&entry.filename);
    let how = if fs::metadata(&apt_copy).ok().map(|m| m.len()) == Some(entry.size) {
        fs::copy(&apt_copy, &staged).map_err(ImageError::io(&apt_copy))?;
        "from apt's cache"
    } else {
        progress(&format!(
            "download: {} ({}) with apt-get",
            entry.filename,
            size(entry.size)
        ));
        run(
            Command::new("apt-get")
                .args(["download", "-q", package])
                .current_dir(scratch.path()),
            &format!("download the {package} package"),
            &hint,
        )?;
        "downloaded"
    };
    let actual = sha256_file(&staged)?;
    if actual != entry.sha256 {
        return Err(ImageError::HashMismatch {
            path: staged,
            expected: entry.sha256,
            actual,
        });
    }
    fs::rename(&staged, &dest).map_err(ImageError::io(&dest))?;
    write_atomic(&sidecar, format!("{actual}\n").as_bytes())?;
    Ok(Source {
        path: dest,
        sha256: actual,
        how: format!("{how}, {}", size(entry.size)),
    })
}

/// The kernel package: `--kernel-deb` if given, else the package the
/// `linux-image-amd64` meta package depends on.
pub fn kernel_deb(
    given: Option<&Path>,
    debs_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Source, ImageError> {
    if let Some(path) = given {
        return Ok(Source {
            path: path.to_path_buf(),
            sha256: sha256_file(path)?,
            how: format!("given, {}", size(file_len(path)?)),
        });
    }
    let meta = fetch_deb("linux-image-amd64", debs_dir, "--kernel-deb", progress)?;
    let depends = run(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&meta.path)
            .arg("Depends"),
        "read the kernel meta package",
        "install dpkg (castra's image builder expects Debian tools)",
    )?;
    let depends = String::from_utf8_lossy(&depends);
    let package = kernel_package_from_depends(&depends).ok_or_else(|| ImageError::Input {
        path: meta.path.clone(),
        reason: format!("its Depends names no linux-image-* package: {depends:?}"),
    })?;
    fetch_deb(&package, debs_dir, "--kernel-deb", progress)
}

/// The busybox binary's bytes and where they came from: `--busybox` (a
/// static binary or a busybox-static .deb), else the host's busybox-static,
/// else a downloaded busybox-static package.
pub fn busybox(
    given: Option<&Path>,
    debs_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<u8>, String), ImageError> {
    let (bytes, from) = match given {
        Some(path) if path.extension().is_some_and(|e| e == "deb") => (
            busybox_from_deb(path, debs_dir)?,
            path.display().to_string(),
        ),
        Some(path) => (
            fs::read(path).map_err(ImageError::io(path))?,
            path.display().to_string(),
        ),
        None => match fs::read(HOST_BUSYBOX) {
            Ok(bytes) if is_static_elf64(&bytes) == Some(true) => {
                (bytes, format!("{HOST_BUSYBOX} (host busybox-static)"))
            }
            _ => {
                let deb = fetch_deb("busybox-static", debs_dir, "--busybox", progress)?;
                (
                    busybox_from_deb(&deb.path, debs_dir)?,
                    format!("{} ({})", deb.path.display(), deb.how),
                )
            }
        },
    };
    let origin = given
        .map(Path::to_path_buf)
        .unwrap_or(PathBuf::from(HOST_BUSYBOX));
    match is_static_elf64(&bytes) {
        Some(true) => Ok((bytes, from)),
        Some(false) => Err(ImageError::Input {
            path: origin,
            reason: "busybox is dynamically linked; the initramfs has no libc (use busybox-static)"
                .into(),
        }),
        None => Err(ImageError::Input {
            path: origin,
            reason: "not an x86-64 ELF executable".into(),
        }),
    }
}

fn busybox_from_deb(deb: &Path, scratch_parent: &Path) -> Result<Vec<u8>, ImageError> {
    fs::create_dir_all(scratch_parent).map_err(ImageError::io(scratch_parent))?;
    let scratch = ScratchDir::new(scratch_parent, "busybox")?;
    run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(scratch.path()),
        "unpack the busybox package",
        "install dpkg, or pass --busybox with a static busybox binary",
    )?;
    let binary = scratch.path().join("bin/busybox");
    fs::read(&binary).map_err(|_| ImageError::Input {
        path: deb.to_path_buf(),
        reason: "the package has no bin/busybox".into(),
    })
}

pub fn file_len(path: &Path) -> Result<u64, ImageError> {
    Ok(fs::metadata(path).map_err(ImageError::io(path))?.len())
}

/// Human size: `67.3 MiB`, `928 KiB`, `12 B`.
pub fn size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB {
        format!("{:.1} MiB", b / KIB / KIB)
    } else if b >= KIB {
        format!("{:.0} KiB", b / KIB)
    } else {
        format!("{bytes} B")
    }
}

/// Writes a file through a temporary sibling and a rename (`fsutil::write_atomic`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    crate::fsutil::write_atomic(path, bytes).map_err(ImageError::io(path))
}

/// A uniquely named directory removed (with its contents) on drop unless
/// `keep` is called.
pub struct ScratchDir {
    path: PathBuf,
    armed: bool,
}

impl ScratchDir {
    pub fn new(parent: &Path, label: &str) -> Result<ScratchDir, ImageError> {
        let mut random = [0u8; 6];
        // Uniqueness, not secrecy: fall back to the pid alone if the OS RNG fails.
        let _ = getrandom::fill(&mut random);
        let path = parent.join(format!(
            ".tmp-{label}-{}-{}",
            std::process::id(),
            hex::encode(random)
        ));
        fs::create_dir_all(&path).map_err(ImageError::io(&path))?;
        Ok(ScratchDir { path, armed: true })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Stops the drop-time removal (the directory has been renamed away).
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_lines() {
        let text = "'http://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1.35.0-4%2bdeb12u1%2bb1_amd64.deb' busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb 928188 SHA256:3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744\n\
            garbage line\n";
        let parsed = parse_print_uris(text);
        assert_eq!(
            parsed,
            vec![AptUri {
                uri: "http://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1.35.0-4%2bdeb12u1%2bb1_amd64.deb".into(),
                filename: "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb".into(),
                size: 928188,
                sha256: "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744".into(),
            }]
        );
    }

    #[test]
    fn kernel_package_from_meta_depends() {
        assert_eq!(
            kernel_package_from_depends("linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n").as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(
            kernel_package_from_depends("initramfs-tools | linux-initramfs-tool, linux-image-6.12.3-amd64-unsigned (= 6.12.3-1)").as_deref(),
            Some("linux-image-6.12.3-amd64-unsigned")
        );
        assert_eq!(kernel_package_from_depends("libc6 (>= 2.36)"), None);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(size(70550672), "67.3 MiB");
        assert_eq!(size(928188), "906 KiB");
        assert_eq!(size(12), "12 B");
    }

    #[test]
    fn scratch_dir_is_removed_unless_kept() {
        let parent = tempfile::tempdir().unwrap();
        let a = ScratchDir::new(parent.path(), "a").unwrap();
        let a_path = a.path().to_path_buf();
        fs::write(a_path.join("f"), b"x").unwrap();
        drop(a);
        assert!(!a_path.exists());
        let b = ScratchDir::new(parent.path(), "b").unwrap();
        let b_path = b.path().to_path_buf();
        b.keep();
        assert!(b_path.exists());
    }

    #[test]
    fn failing_and_missing_commands_are_named() {
        let err = run(&mut Command::new("false"), "test", "hint").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`false` failed (exit status: 1)"),
            "{err}"
        );
        let err = run(
            &mut Command::new("castra-no-such-tool"),
            "do a thing",
            "install it",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`castra-no-such-tool` is not installed (needed to do a thing); install it"
        );
    }
}
