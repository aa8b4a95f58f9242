//! Small filesystem helpers shared by the modules that write the state root:
//! owner-only directories and best-effort removal. Nothing castra-specific.

use std::path::Path;

/// Create `dir` and its parents, mode 0700 (state may hold secrets).
pub fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Remove a file if it is there; a missing file is not an error.
pub fn remove_if_exists(path: &Path) {
    let _ = std::fs::remove_file(path);
}
