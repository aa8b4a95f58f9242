//! The cache of built default images: where it is (`cache_root`), the image `locate`
//! returns (from `images/current` and its manifest, no hashing of big files), and the
//! types a build takes and returns ([`BuildOptions`], [`DefaultImage`]).

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::ImageError;
use super::manifest::{self, INITRD_FILE, KERNEL_FILE, Manifest};

/// Kernel command line of the default image. `quiet` matters: kernel logs on
/// the emulated serial console cost seconds under TCG.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet panic=-1";

/// A built default image, ready for direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DefaultImage {
    /// Uncompressed ELF kernel with a PVH note (for `-M microvm`).
    pub kernel: PathBuf,
    /// newc cpio initramfs.
    pub initrd: PathBuf,
    /// Base kernel command line; castra appends `castra.vm=<name> castra.broker_port=<port>`
    /// and, under TCG, `qemu::guest_clock::tcg_kernel_args_for_host()` (host-specific, so not part of `id`).
    pub cmdline: String,
    /// Content id, `<kernel choice>-<16 hex>` (kernel + initrd + cmdline), for fingerprints.
    pub id: String,
}

/// Which kernel the default image boots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelChoice {
    /// Built from Debian's linux-source-6.1 with `guest/kernel/castra.config` (`kernel.rs`).
    #[default]
    Fast,
    /// Debian's stock `linux-image-amd64`, with its modules in the initramfs.
    Debian,
}

impl KernelChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            KernelChoice::Fast => "fast",
            KernelChoice::Debian => "debian",
        }
    }
}

/// What `build` starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// Rebuild even if an image with the same inputs exists (the fast kernel too).
    pub force: bool,
    /// The kernel to boot (the choice is part of the image id).
    pub kernel: KernelChoice,
    /// The kernel source tarball for the fast kernel (default: `kernel::SOURCE_TARBALL`).
    pub kernel_source: Option<PathBuf>,
    /// A `linux-image-<version>-amd64` .deb to use instead of asking apt.
    pub kernel_deb: Option<PathBuf>,
    /// A static busybox binary or busybox-static .deb (default: the host's
    /// `/bin/busybox` if static, else apt's busybox-static).
    pub busybox: Option<PathBuf>,
    /// Extra files: (host path, absolute guest path, permission bits).
    /// An executable `/bin/castra-agent` is started by the init.
    pub extra_files: Vec<(PathBuf, String, u32)>,
}

/// The image cache: castra's cache directory (`crate::cache`, its one owner).
pub fn cache_root() -> PathBuf {
    crate::cache::root()
}

/// The current default image, from `images/current` and its manifest (no
/// hashing of big files). Missing or half-built images are errors that say
/// to run `castra image build`.
pub fn locate() -> Result<DefaultImage, ImageError> {
    locate_in(&cache_root())
}

fn locate_in(root: &Path) -> Result<DefaultImage, ImageError> {
    let images = root.join(manifest::IMAGES_DIR);
    let pointer = images.join(manifest::CURRENT);
    let key = match fs::read_to_string(&pointer) {
        Ok(key) => key.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImageError::NotBuilt { pointer });
        }
        Err(e) => return Err(ImageError::io(&pointer)(e)),
    };
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ImageError::Broken {
            dir: images,
            reason: format!("{} does not hold an image key", pointer.display()),
        });
    }
    read_image(&images.join(key))
}

/// The manifest of the image `locate` would return (for `castra image path --json`).
pub fn current_manifest() -> Result<(PathBuf, Manifest), ImageError> {
    let image = locate()?;
    let dir = image
        .kernel
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Ok((dir.clone(), read_manifest(&dir)?))
}

fn read_manifest(dir: &Path) -> Result<Manifest, ImageError> {
    let path = dir.join(manifest::MANIFEST);
    let broken = |reason: String| ImageError::Broken {
        dir: dir.to_path_buf(),
        reason,
    };
    let text = fs::read_to_string(&path).map_err(|e| broken(format!("{}: {e}", path.display())))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| broken(format!("{}: {e}", path.display())))?;
    if manifest.format != manifest::MANIFEST_FORMAT {
        return Err(broken(format!(
            "manifest format {} (this castra reads {})",
            manifest.format,
            manifest::MANIFEST_FORMAT
        )));
    }
    Ok(manifest)
}

/// Reads one image directory, checking that its files exist with the sizes
/// the manifest records (cheap stats, no hashing).
pub(super) fn read_image(dir: &Path) -> Result<DefaultImage, ImageError> {
    let manifest = read_manifest(dir)?;
    let broken = |reason: String| ImageError::Broken {
        dir: dir.to_path_buf(),
        reason,
    };
    let kernel = dir.join(KERNEL_FILE);
    let initrd = dir.join(INITRD_FILE);
    for (path, want) in [
        (&kernel, manifest.kernel_size),
        (&initrd, manifest.initrd_size),
    ] {
        match fs::metadata(path) {
            Ok(m) if m.len() == want => {}
            Ok(m) => {
                return Err(broken(format!(
                    "{} is {} bytes, the manifest says {want}",
                    path.display(),
                    m.len()
                )));
            }
            Err(e) => return Err(broken(format!("{}: {e}", path.display()))),
        }
    }
    Ok(DefaultImage {
        kernel,
        initrd,
        cmdline: manifest.cmdline,
        id: manifest.id,
    })
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
