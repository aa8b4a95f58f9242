//! Small filesystem helpers shared by the modules that write the state root
//! and the image cache: owner-only directories, best-effort removal, atomic
//! replacement of a file, and reading an optional JSON file. Nothing
//! castra-specific.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

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

/// Replace `path` with `bytes` so a crash leaves the old content or the new,
/// never half: write `<path>.tmp-<pid>` (unique per process, so concurrent
/// writers do not trample each other's temp file), fsync it, rename it over
/// `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Why an optional JSON file could not be read.
#[derive(Debug)]
pub enum ReadJsonError {
    Read(io::Error),
    Parse(serde_json::Error),
}

/// `Ok(None)` when `path` does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, ReadJsonError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(ReadJsonError::Parse),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ReadJsonError::Read(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"{\"a\":1}").unwrap();
        write_atomic(&path, b"{\"a\":2}").unwrap();
        let v: Option<serde_json::Value> = read_json(&path).unwrap();
        assert_eq!(v.unwrap()["a"], 2);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "a temp file was left behind");
    }

    #[test]
    fn read_json_tells_missing_from_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        assert!(matches!(read_json::<serde_json::Value>(&path), Ok(None)));
        std::fs::write(&path, "{oops").unwrap();
        assert!(matches!(
            read_json::<serde_json::Value>(&path),
            Err(ReadJsonError::Parse(_))
        ));
    }
}
