//! all.log's space written ahead as zeros. Every commit `fdatasync`s
//! all.log; when the append grew the file, that sync also has to write the
//! inode (the new size, the new blocks: a second write to another place on
//! the disk, and ext4 here has no journal to fold it into). So the writer
//! keeps zeros written and synced past the end of the records, and a
//! commit writes its lines over them: its sync then writes only the data
//! pages. Measured on this machine (write + fdatasync of one 100-byte
//! line, 2,000 times): 2.7 ms -> 1.4 ms of wall time and 101 -> 72 us of
//! CPU per sync (loaded machine, see docs/BUS.md section 10).
//!
//! What is past the records is only ever zeros, so a reader stops there as
//! at a torn last line (no newline), startup recovery trims it
//! ([`trim_zero_tail`]), and the writer cuts the file to its records before
//! a rotation and when it stops.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::broker::stamp::log;

/// Zeros written ahead at a time (at most the rotation size).
pub const CHUNK: u64 = 256 * 1024;

/// Smallest chunk, for tiny rotation sizes (tests).
const MIN_CHUNK: u64 = 4096;

/// Zeros in one write.
const ZEROS: usize = 64 * 1024;

/// The chunk for a log that rotates at `max_bytes`.
pub fn chunk_for(max_bytes: u64) -> u64 {
    CHUNK.min(max_bytes).max(MIN_CHUNK)
}

/// all.log opened to be written at the end of its records (no `O_APPEND`:
/// the end is not the file's size while zeros follow the records).
pub fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// The writer's zeros ahead of all.log's records.
pub struct Ahead {
    chunk: u64,
    /// The last try failed (logged once until one works again).
    failed: bool,
    /// Where the records ended at the last commit, and the commits' mean
    /// size in bytes (exponentially weighted).
    last_len: Option<u64>,
    mean: u64,
}

/// Commits bigger than this on average get no zeros ahead: their sync
/// writes several pages anyway, so the inode is a small part of it, while
/// the zeros double what reaches the disk (measured: 1 KiB records from 64
/// publishers, ~20 KiB a commit, lost up to 3x throughput on this
/// machine's contended disk, stalled behind 2 MiB of zeros).
pub const MEAN_COMMIT_MAX: u64 = 8 * 1024;

impl Ahead {
    /// For a log that rotates at `max_bytes`.
    pub fn new(max_bytes: u64) -> Ahead {
        Ahead {
            chunk: chunk_for(max_bytes),
            failed: false,
            last_len: None,
            mean: 0,
        }
    }

    /// After a commit was acked: when commits are small and little of the
    /// space written ahead is left, write the next chunk and sync it. A
    /// failure costs only that: commits then grow the file (and sync its
    /// inode).
    pub fn refill(&mut self, file: &File, len: u64, alloc: &mut u64, path: &Path) {
        if !self.small_commits(len) {
            return;
        }
        let Some(end) = next_end(len, *alloc, self.chunk) else {
            return;
        };
        match write_ahead(file, alloc, end) {
            Ok(()) => self.failed = false,
            Err(e) if !self.failed => {
                self.failed = true;
                log(&format!(
                    "bus log {}: cannot write space ahead ({e}); commits grow the file",
                    path.display()
                ));
            }
            Err(_) => {}
        }
    }
}

impl Ahead {
    /// Note the records' end after a commit; whether commits are small
    /// enough for zeros ahead to pay ([`MEAN_COMMIT_MAX`]).
    fn small_commits(&mut self, len: u64) -> bool {
        let grew = self.last_len.map_or(0, |last| len.saturating_sub(last));
        self.last_len = Some(len);
        self.mean = (self.mean * 7 + grew) / 8;
        self.mean <= MEAN_COMMIT_MAX
    }
}

/// Cut all.log to its records (the zeros past them go), durably: before a
/// rotation and when the writer stops.
pub fn cut_to(file: &File, len: u64, alloc: &mut u64) {
    if *alloc > len {
        let _ = file.set_len(len).and_then(|()| file.sync_all());
        *alloc = len;
    }
}

/// Where the written-ahead space should end for `len` bytes of records:
/// `None` while more than a quarter chunk is left (nothing to do), else a
/// chunk past the records.
pub fn next_end(len: u64, alloc: u64, chunk: u64) -> Option<u64> {
    (alloc < len + chunk / 4).then_some(len + chunk)
}

/// Write `buf` at `at`, the end of the records; when it does not fit in the
/// space written ahead (`*alloc` bytes), the file simply grows (the sync of
/// this commit then writes the inode too).
pub fn write_records(file: &File, at: u64, alloc: &mut u64, buf: &[u8]) -> io::Result<()> {
    super::faults::write_all_at(file, buf, at)?;
    *alloc = (*alloc).max(at + buf.len() as u64);
    Ok(())
}

/// Write zeros from `*alloc` to `end` and make them durable (size included),
/// so the commits that write over them sync data pages only.
pub fn write_ahead(file: &File, alloc: &mut u64, end: u64) -> io::Result<()> {
    let zeros = [0u8; ZEROS];
    let mut at = *alloc;
    while at < end {
        let n = (end - at).min(ZEROS as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_data()?;
    *alloc = end.max(*alloc);
    Ok(())
}

/// Where the content of `file` ends: after its last byte that is not zero.
pub fn content_end(file: &File) -> io::Result<u64> {
    let mut end = file.metadata()?.len();
    let mut buf = vec![0u8; ZEROS];
    while end > 0 {
        let n = end.min(ZEROS as u64) as usize;
        let from = end - n as u64;
        file.read_exact_at(&mut buf[..n], from)?;
        if let Some(last) = buf[..n].iter().rposition(|&b| b != 0) {
            return Ok(from + last as u64 + 1);
        }
        end = from;
    }
    Ok(0)
}

/// Cut the zeros at the end of `file` (space written ahead by a writer that
/// was killed); returns how many bytes went.
pub fn trim_zero_tail(file: &File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let end = content_end(file)?;
    if end < len {
        file.set_len(end)?;
        file.sync_all()?;
    }
    Ok(len - end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn space_is_written_ahead_a_chunk_at_a_time_once_a_quarter_is_left() {
        assert_eq!(chunk_for(64 << 20), CHUNK);
        assert_eq!(chunk_for(300), MIN_CHUNK);
        assert_eq!(chunk_for(100_000), 100_000);
        let c = 1000;
        assert_eq!(next_end(0, 0, c), Some(1000));
        assert_eq!(next_end(700, 1000, c), None);
        assert_eq!(next_end(751, 1000, c), Some(1751));
        // Records that overran the space (a huge commit): a chunk past them.
        assert_eq!(next_end(1500, 1400, c), Some(2500));
    }

    #[test]
    fn only_small_commits_get_zeros_ahead() {
        let mut a = Ahead::new(64 << 20);
        let mut len = 0;
        // 150-byte commits (one small record each): yes.
        for _ in 0..20 {
            len += 150;
            assert!(a.small_commits(len));
        }
        // 20 KiB commits: no, within a few commits.
        let big: Vec<bool> = (0..10)
            .map(|_| {
                len += 20 * 1024;
                a.small_commits(len)
            })
            .collect();
        // (The mean passes 8 KiB at the fourth.)
        assert_eq!(
            big,
            [
                true, true, true, false, false, false, false, false, false, false
            ]
        );
        // Back to small commits: yes again once the mean has come down.
        let back = (0..30).filter(|_| {
            len += 150;
            a.small_commits(len)
        });
        assert!(back.count() > 10);
        // A rotation (the records' end goes back to 0) adds nothing.
        let before = a.mean;
        a.small_commits(0);
        assert!(a.mean <= before);
    }

    #[test]
    fn records_go_over_the_zeros_and_the_tail_is_found_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all.log");
        let file = File::options()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let mut alloc = 0;
        write_ahead(&file, &mut alloc, 200_000).unwrap();
        assert_eq!((alloc, file.metadata().unwrap().len()), (200_000, 200_000));
        assert_eq!(content_end(&file).unwrap(), 0);
        write_records(&file, 0, &mut alloc, b"{\"seq\":1}\n").unwrap();
        write_records(&file, 10, &mut alloc, b"{\"seq\":2}\n").unwrap();
        assert_eq!(alloc, 200_000, "written over the zeros: the size stays");
        assert_eq!(content_end(&file).unwrap(), 20);
        // Past the space written ahead the file grows.
        write_records(&file, 199_995, &mut alloc, b"0123456789").unwrap();
        assert_eq!((alloc, file.metadata().unwrap().len()), (200_005, 200_005));
        file.set_len(20).unwrap();
        write_ahead(&file, &mut 20, 150_000).unwrap();
        assert_eq!(trim_zero_tail(&file).unwrap(), 150_000 - 20);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"seq\":1}\n{\"seq\":2}\n");
        // A file without zeros at its end is left as it is.
        assert_eq!(trim_zero_tail(&file).unwrap(), 0);
        let mut f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("empty"))
            .unwrap();
        assert_eq!(content_end(&f).unwrap(), 0);
        f.write_all(b"x\0").unwrap();
        assert_eq!(content_end(&f).unwrap(), 1);
    }
}
