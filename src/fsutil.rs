//! Small filesystem helpers shared by the modules that write the state root
//! and the image cache: owner-only directories, best-effort removal, atomic
//! replacement of a file, and JSON state files (read when present, written
//! atomically, errors that name the file and the fix), disk usage. Nothing
//! castra-specific.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A directory that could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot create {}: {source}", path.display())]
pub struct CreateDirError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Create `dir` and its parents, mode 0700 (state may hold secrets).
pub fn create_private_dir(dir: &Path) -> Result<(), CreateDirError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CreateDirError {
            path: dir.to_owned(),
            source,
        })
}

/// Remove a file if it is there; a missing file is not an error.
pub fn remove_if_exists(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Replace `path` with `bytes` so a crash leaves the old content or the new,
/// never half: write `<path>.tmp-<pid>` (unique per process, so concurrent
/// writers do not trample each other's temp file), fsync it, rename it over
/// `path`, fsync the directory. The crate's one atomic write; the file gets
/// the usual mode (0666 less the umask).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, 0o666)
}

/// [`write_atomic`] for a secret: the file is owner-only (0600) from its
/// creation on, never readable by others even for a moment.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    // A temp file a crashed run of this pid left behind.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A kind of JSON state file: what errors call it and how a user recovers
/// from a broken one.
#[derive(Debug, Clone, Copy)]
pub struct JsonFile {
    /// E.g. "launch record": `<path> is not a valid launch record (...)`.
    pub what: &'static str,
    /// What to do about a file that does not parse.
    pub fix: &'static str,
}

/// A JSON state file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid {what} ({source}); {fix}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        fix: &'static str,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl JsonFile {
    /// `Ok(None)` when `path` does not exist.
    pub fn read<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, JsonFileError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| JsonFileError::Parse {
                        path: path.to_owned(),
                        what: self.what,
                        fix: self.fix,
                        source,
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(JsonFileError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Pretty JSON, replaced atomically ([`write_atomic`]).
    pub fn write<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), JsonFileError> {
        let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
        write_atomic(path, &bytes).map_err(|source| JsonFileError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

/// Bytes allocated on disk under `path` (sparse overlays count what they use).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum())
            .unwrap_or(0)
    } else {
        meta.blocks() * 512
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
        let v: Option<serde_json::Value> = TEST_FILE.read(&path).unwrap();
        assert_eq!(v.unwrap()["a"], 2);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "a temp file was left behind");
    }

    #[test]
    fn a_private_atomic_write_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_atomic_private(&path, b"s3cret").unwrap();
        write_atomic_private(&path, b"other").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"other");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "a temp file was left behind");
    }

    const TEST_FILE: JsonFile = JsonFile {
        what: "test file",
        fix: "delete it",
    };

    #[test]
    fn json_files_tell_missing_from_broken_and_name_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        assert!(matches!(
            TEST_FILE.read::<serde_json::Value>(&path),
            Ok(None)
        ));
        std::fs::write(&path, "{oops").unwrap();
        let e = TEST_FILE.read::<serde_json::Value>(&path).unwrap_err();
        assert!(matches!(e, JsonFileError::Parse { .. }));
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("{} is not a valid test file (", path.display())),
            "{msg}"
        );
        assert!(msg.ends_with("); delete it"), "{msg}");
        TEST_FILE
            .write(&path, &serde_json::json!({"a": 1}))
            .unwrap();
        let v: serde_json::Value = TEST_FILE.read(&path).unwrap().unwrap();
        assert_eq!(v["a"], 1);
    }
}
