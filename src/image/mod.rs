//! castra's default guest image: a Debian kernel (uncompressed `vmlinux`,
//! booted through its PVH entry by `-M microvm`) and a busybox initramfs
//! whose init (`guest/init.sh`) loads the virtio modules, configures the
//! user-mode network, and powers off on the ACPI power button.
//!
//! `locate` is the fast path every `apply` takes (it reads two small files);
//! `build` makes or reuses the image in the user's cache directory. This
//! module does not launch QEMU: the argv builder turns a `DefaultImage` into
//! `-kernel/-initrd/-append` (adding `castra.vm=` and `castra.broker_port=`,
//! and under TCG `qemu::guest_clock::tcg_kernel_args_for_host()`: see there for why).

pub mod agent;
mod binary;
mod build;
pub mod cpio;
mod error;
mod initramfs;
pub mod kconfig;
pub mod kernel;
mod manifest;
pub mod modules;
pub mod prune;
mod sources;
mod store;

pub use error::ImageError;
pub use manifest::{INITRD_FILE, KERNEL_FILE, Manifest};
pub use store::{
    BuildOptions, DEFAULT_CMDLINE, DefaultImage, KernelChoice, cache_root, current_manifest, locate,
};

/// Builds the default image, or reuses the one built from the same inputs.
pub fn build(
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<DefaultImage, ImageError> {
    build::build(&store::cache_root(), opts, progress)
}
