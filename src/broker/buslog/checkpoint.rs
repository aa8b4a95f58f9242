//! The bus log checkpoint: how much of every publisher's `<vm>.log` is
//! durable.
//!
//! all.log is the write-ahead log: every commit is `fdatasync`ed there before
//! its publishes are acknowledged. The same lines are written to each
//! publisher's `<vm>.log` in the same commit (so a broker crash, which keeps
//! the page cache, never loses them), but those files are synced only at a
//! checkpoint: at most every [`super::writer::CHECKPOINT_EVERY`], before any file
//! rotates, and when the broker stops. A checkpoint syncs every `<vm>.log`
//! written since the last one, then writes `checkpoint.json` atomically:
//! "every record up to `through_seq` is durable in its `<vm>.log`, whose live
//! file is `files[vm]` bytes long". After a crash of the whole machine,
//! [`fix_for`] cuts each `<vm>.log` back to that length and recovery appends
//! the records after `through_seq` from all.log again, so both the shared and
//! the per-VM logs hold every acknowledged message.
//!
//! This module owns the file format and the pure per-file decision; the
//! scanning and rewriting is `recover.rs`, the syncing is `writer.rs`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::JsonFile;

/// The checkpoint's file name in the bus log directory.
pub const FILE: &str = "checkpoint.json";

/// The durable state of the per-VM logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every record with this seq or lower is durable in its `<vm>.log`
    /// (the live file or a rotated one).
    pub through_seq: u64,
    /// Durable length of each publisher's live `<vm>.log`; a publisher not
    /// named here has no durable bytes in its live file.
    pub files: BTreeMap<String, u64>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

const JSON: JsonFile = JsonFile {
    what: "checkpoint",
    fix: "it is written atomically, so this is disk trouble or a hand edit: \
          remove it to rebuild from the logs as they are",
};

/// The checkpoint, `None` when there is none (a new directory, or logs
/// written before checkpoints existed, when every file was synced per commit).
pub fn read(dir: &Path) -> io::Result<Option<Checkpoint>> {
    JSON.read(&path(dir)).map_err(io::Error::other)
}

/// Write it atomically (temp file, fsync, rename, directory fsync).
pub fn write(dir: &Path, checkpoint: &Checkpoint) -> io::Result<()> {
    JSON.write(&path(dir), checkpoint).map_err(io::Error::other)
}

/// What recovery does with one publisher's live log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    /// Exactly the durable length: nothing to cut.
    Keep,
    /// Cut to this length: what follows was written after the checkpoint
    /// (its lines come back from all.log).
    CutTo(u64),
    /// Shorter than the checkpoint says, and not because it rotated since:
    /// durable bytes were lost (disk trouble). Kept as it is, reported.
    Short { durable: u64 },
}

/// `durable`: the checkpoint's length for this file (`None`: not named, 0);
/// `live`: its length now; `rotated`: the length of its newest rotated file,
/// if any (a rotation after the checkpoint leaves the durable bytes there).
pub fn fix_for(durable: Option<u64>, live: u64, rotated: Option<u64>) -> Fix {
    let durable = durable.unwrap_or(0);
    if live == durable {
        Fix::Keep
    } else if live > durable {
        Fix::CutTo(durable)
    } else if rotated.is_some_and(|r| r >= durable) {
        // Rotated between the checkpoint and the next one: the live file
        // is younger than the checkpoint, all of it after `through_seq`.
        Fix::CutTo(0)
    } else {
        Fix::Short { durable }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_file_is_cut_back_to_its_durable_length() {
        let cases: &[(Option<u64>, u64, Option<u64>, Fix)] = &[
            // Clean stop: the checkpoint matches.
            (Some(100), 100, None, Fix::Keep),
            (None, 0, None, Fix::Keep),
            // Written after the checkpoint (maybe with holes): cut.
            (Some(100), 180, None, Fix::CutTo(100)),
            (None, 75, None, Fix::CutTo(0)),
            (Some(100), 180, Some(300), Fix::CutTo(100)),
            // Rotated after the checkpoint: the live file is all new.
            (Some(300), 0, Some(300), Fix::CutTo(0)),
            (Some(300), 40, Some(300), Fix::CutTo(0)),
            // Durable bytes missing: reported, not touched.
            (Some(300), 40, None, Fix::Short { durable: 300 }),
            (Some(300), 40, Some(120), Fix::Short { durable: 300 }),
        ];
        for &(durable, live, rotated, want) in cases {
            assert_eq!(
                fix_for(durable, live, rotated),
                want,
                "durable {durable:?}, live {live}, rotated {rotated:?}"
            );
        }
    }

    #[test]
    fn round_trips_and_reports_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let c = Checkpoint {
            through_seq: 42,
            files: [("web".to_owned(), 4096), ("host".to_owned(), 10)].into(),
        };
        write(dir.path(), &c).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(c));
        std::fs::write(path(dir.path()), "{\"through_seq\":").unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("checkpoint.json is not a valid checkpoint"),
            "{e}"
        );
        assert!(e.contains("remove it"), "{e}");
    }
}
