//! The VM's copy-on-write overlay over a base disk: made with `qemu-img`
//! when missing, made again when the base changed since the last launch.
//! A base disk is never written. Preflight has already checked that the
//! base exists; these checks stay because every step re-checks.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::ImageSpec;
use crate::fsutil::remove_if_exists;
use crate::layout::VmPaths;

use super::step_error::StepError;

pub(super) fn must_exist(vm: &str, key: &'static str, path: &Path) -> Result<(), StepError> {
    if path.exists() {
        Ok(())
    } else {
        Err(StepError::Missing {
            vm: vm.into(),
            key,
            path: path.to_owned(),
        })
    }
}

/// The VM's copy-on-write overlay over `base` (made if missing; remade
/// when the previous launch had another base disk, or none).
pub(super) fn overlay_over(
    vm: &str,
    base: &Path,
    previous: Option<&ImageSpec>,
    paths: &VmPaths,
) -> Result<PathBuf, StepError> {
    must_exist(vm, "image.disk", base)?;
    let overlay = paths.overlay();
    if previous.is_some_and(|p| disk_base(p) != Some(base)) {
        // The base changed: the old overlay belongs to another disk.
        remove_if_exists(&overlay);
    }
    if !overlay.exists() {
        create_overlay(base, &overlay)?;
    }
    Ok(overlay)
}

/// The base disk an image runs on, if any.
fn disk_base(image: &ImageSpec) -> Option<&Path> {
    match image {
        ImageSpec::Default => None,
        ImageSpec::Kernel { disk, .. } => disk.as_deref(),
        ImageSpec::Disk { path } => Some(path),
    }
}

fn create_overlay(base: &Path, overlay: &Path) -> Result<(), StepError> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(overlay)
        .output()
        .map_err(StepError::QemuImg)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(StepError::Overlay {
            overlay: overlay.to_owned(),
            base: base.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
