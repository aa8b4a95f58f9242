//! The receiving end of a copy: applies the entries `send` emits under a
//! destination, as `cp -a` / `docker cp` would (an existing directory gets
//! the source inside it, under its own name; otherwise the destination is
//! the new name). Every file is written to a temporary name beside its
//! destination and renamed into place only after its sha256 matched, so a
//! reader never sees half a file; a failed copy removes its temporary file.
//! Directory modes and mtimes are applied last (writing children changes
//! them).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::describe::describe;
use crate::broker::stream::wire::{Control, Entry, EntryKind};

#[derive(Debug)]
struct Open {
    tmp: PathBuf,
    dest: PathBuf,
    file: fs::File,
    hash: Sha256,
    mode: u32,
    mtime: i64,
}

/// Applies a copy's entries under a destination path.
#[derive(Debug)]
pub struct Receiver {
    dst: PathBuf,
    root: Option<PathBuf>,
    current: Option<Open>,
    dirs: Vec<(PathBuf, u32, i64)>,
    /// File bytes written so far.
    pub bytes: u64,
    /// Files, directories and symlinks written.
    pub entries: u64,
}

fn time_of(mtime: i64) -> SystemTime {
    if mtime >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(mtime as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(mtime.unsigned_abs())
    }
}

impl Receiver {
    pub fn new(dst: &Path) -> Receiver {
        Receiver {
            dst: dst.to_path_buf(),
            root: None,
            current: None,
            dirs: Vec::new(),
            bytes: 0,
            entries: 0,
        }
    }

    /// Where the entry at `rel` (`name/sub/...`) goes.
    fn place(&mut self, rel: &str) -> Result<PathBuf, String> {
        let mut parts = rel.split('/');
        let name = parts.next().unwrap_or("");
        let rest: Vec<&str> = parts.collect();
        let bad = |p: &str| p.is_empty() || p == "." || p == "..";
        if bad(name) && name != "." || rest.iter().any(|p| bad(p)) || rel.contains('\0') {
            return Err(format!("refusing an unsafe path in the copy: {rel:?}"));
        }
        let root = match &self.root {
            Some(r) => r.clone(),
            None => {
                let root = if self.dst.is_dir() {
                    self.dst.join(name)
                } else {
                    let parent = match self.dst.parent() {
                        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                        _ => PathBuf::from("."),
                    };
                    if !parent.is_dir() {
                        return Err(format!("{}: no such directory", parent.display()));
                    }
                    self.dst.clone()
                };
                self.root = Some(root.clone());
                root
            }
        };
        Ok(rest.iter().fold(root, |p, part| p.join(part)))
    }

    /// One control message; `Ok(true)` once the copy is complete.
    pub fn control(&mut self, msg: Control) -> Result<bool, String> {
        match msg {
            Control::Entry(entry) => self.entry(entry).map(|()| false),
            Control::EntryEnd { sha256 } => self.finish_file(&sha256).map(|()| false),
            Control::Done { .. } => {
                for (dir, mode, mtime) in self.dirs.drain(..).rev() {
                    fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                        .map_err(|e| describe(&dir, &e))?;
                    if let Ok(f) = fs::File::open(&dir) {
                        let _ = f.set_modified(time_of(mtime));
                    }
                }
                Ok(true)
            }
            Control::Error { message, .. } => Err(message),
            Control::Total { .. } => Ok(false),
            other => Err(format!("unexpected message in a copy: {other:?}")),
        }
    }

    fn entry(&mut self, entry: Entry) -> Result<(), String> {
        if self.current.is_some() {
            return Err("copy stream out of order (entry inside a file)".into());
        }
        let dest = self.place(&entry.path)?;
        self.entries += 1;
        match entry.kind {
            EntryKind::Dir => {
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(format!("{}: exists and is not a directory", dest.display()));
                    }
                    Err(_) => fs::create_dir(&dest).map_err(|e| describe(&dest, &e))?,
                }
                self.dirs.push((dest, entry.mode, entry.mtime));
                Ok(())
            }
            EntryKind::Symlink => {
                let target = entry.target.unwrap_or_default();
                let tmp = tmp_beside(&dest);
                std::os::unix::fs::symlink(&target, &tmp).map_err(|e| describe(&tmp, &e))?;
                rename(&tmp, &dest)
            }
            EntryKind::File => {
                if dest.is_dir() {
                    return Err(format!("{}: destination is a directory", dest.display()));
                }
                let tmp = tmp_beside(&dest);
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .map_err(|e| describe(&tmp, &e))?;
                self.current = Some(Open {
                    tmp,
                    dest,
                    file,
                    hash: Sha256::new(),
                    mode: entry.mode,
                    mtime: entry.mtime,
                });
                Ok(())
            }
        }
    }

    /// A file's bytes.
    pub fn data(&mut self, bytes: &[u8]) -> Result<(), String> {
        let Some(open) = &mut self.current else {
            return Err("copy stream out of order (data outside a file)".into());
        };
        open.hash.update(bytes);
        open.file
            .write_all(bytes)
            .map_err(|e| describe(&open.dest, &e))?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn finish_file(&mut self, sha256: &str) -> Result<(), String> {
        let Some(open) = self.current.take() else {
            return Err("copy stream out of order (end outside a file)".into());
        };
        let got = hex::encode(open.hash.clone().finalize());
        let result = (|| {
            if got != sha256 {
                return Err(format!(
                    "{}: checksum mismatch (sent {sha256}, received {got})",
                    open.dest.display()
                ));
            }
            open.file
                .set_permissions(fs::Permissions::from_mode(open.mode))
                .map_err(|e| describe(&open.dest, &e))?;
            open.file
                .set_modified(time_of(open.mtime))
                .map_err(|e| describe(&open.dest, &e))?;
            open.file.sync_all().map_err(|e| describe(&open.dest, &e))?;
            rename(&open.tmp, &open.dest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&open.tmp);
        }
        result
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(open) = self.current.take() {
            let _ = fs::remove_file(&open.tmp);
        }
    }
}

fn tmp_beside(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut n = [0u8; 4];
    let _ = getrandom::fill(&mut n);
    dest.with_file_name(format!(".{name}.castra-{}", hex::encode(n)))
}

fn rename(tmp: &Path, dest: &Path) -> Result<(), String> {
    fs::rename(tmp, dest).map_err(|e| {
        let _ = fs::remove_file(tmp);
        describe(dest, &e)
    })
}
