//! The one follower of bus log files in the crate (`castra bus tail`, and
//! the host side of bootstrap waiting for a guest's reports): reads a log
//! from its oldest kept generation (or from the live file's current end) and
//! follows the live file across rotation. It keeps the file it reads open,
//! and when the live name points at another file (the broker renamed it to
//! `.1` and started a new one) it reads the old one to its end, then goes on
//! with the next newer generation (by inode), up to the live file again. A
//! torn last line waits for its newline. With a start, rotated files that
//! end before it are passed over unread (`last.rs`).
//!
//! It reads files only: it never waits on the broker, and it decides nothing
//! about what a record means.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::last::last_record;
use super::{LogRecord, generations};

/// A bus log file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct FollowError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn cannot(path: &Path) -> impl FnOnce(io::Error) -> FollowError + '_ {
    move |source| FollowError {
        path: path.to_owned(),
        source,
    }
}

/// Whether a record is at or after where reading starts.
pub type Start = Box<dyn Fn(&LogRecord) -> bool + Send>;

/// Follows one bus log (a live file and its rotated generations).
pub struct Follower {
    path: PathBuf,
    /// Where reading starts, if not at the oldest record.
    start: Option<Start>,
    /// The file being read, its inode, and the position after the last whole line.
    current: Option<(File, u64, u64)>,
    /// The inode of the last file read to its end, to find its successor.
    finished: Option<u64>,
}

/// Inode of a path, if it exists.
fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

impl Follower {
    /// From the oldest kept generation of the log whose live file is `path`.
    pub fn new(path: PathBuf) -> Self {
        Follower {
            path,
            start: None,
            current: None,
            finished: None,
        }
    }

    /// From the oldest generation, passing over rotated files that hold no
    /// record `start` admits (records are in order within and across files).
    pub fn with_start(path: PathBuf, start: Start) -> Self {
        Follower {
            start: Some(start),
            ..Follower::new(path)
        }
    }

    /// Only what is appended from now on: from the live file's current end
    /// (from the oldest generation when there is no live file yet).
    pub fn at_end(path: PathBuf) -> Result<Self, FollowError> {
        let mut f = Follower::new(path);
        match File::open(&f.path) {
            Ok(file) => {
                let meta = file.metadata().map_err(cannot(&f.path))?;
                // all.log's end is where its records end, before the zeros
                // the broker writes ahead of them.
                let end = super::prealloc::content_end(&file).map_err(cannot(&f.path))?;
                f.current = Some((file, meta.ino(), end));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(cannot(&f.path)(e)),
        }
        Ok(f)
    }

    /// Whether `file`, opened as `path`, holds nothing at or after the
    /// start: a rotated generation (never written again) whose last valid
    /// record is before it, or that holds none. The live file never is.
    pub fn passes_over(&self, path: &Path, file: &File) -> Result<bool, FollowError> {
        let Some(start) = &self.start else {
            return Ok(false);
        };
        if path == self.path {
            return Ok(false);
        }
        let len = file.metadata().map_err(cannot(path))?.len();
        let last = last_record(file, len).map_err(cannot(path))?;
        Ok(last.is_none_or(|rec| !start(&rec)))
    }

    /// The file to read next: the generation after the finished one, else
    /// the oldest kept one (at the start, or if the finished one was
    /// rotated away meanwhile). Files that end before the start are
    /// passed over as if read to their end.
    fn next_file(&mut self) -> Result<Option<(File, u64)>, FollowError> {
        let gens = generations(&self.path);
        let inodes: Vec<Option<u64>> = gens.iter().map(|p| inode(p)).collect();
        let next = match self.finished {
            None => 0,
            Some(done) => inodes
                .iter()
                .position(|i| *i == Some(done))
                .map_or(0, |i| i + 1),
        };
        for path in gens.iter().skip(next) {
            match File::open(path) {
                Ok(f) => {
                    let ino = f.metadata().map_err(cannot(path))?.ino();
                    if self.passes_over(path, &f)? {
                        self.finished = Some(ino);
                        continue;
                    }
                    return Ok(Some((f, ino)));
                }
                // Renamed meanwhile: the next newer name holds the next file.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(cannot(path)(e)),
            }
        }
        Ok(None)
    }

    /// Every complete line added since the last call.
    pub fn poll(&mut self) -> Result<Vec<String>, FollowError> {
        self.poll_upto(u64::MAX)
    }

    /// Complete lines added since the last call, about `budget` bytes of
    /// them at most (at least one line): call again until it returns none
    /// to read a large backlog in bounded memory.
    pub fn poll_upto(&mut self, budget: u64) -> Result<Vec<String>, FollowError> {
        let mut lines = Vec::new();
        let mut left = budget;
        loop {
            let live_ino = inode(&self.path);
            match &mut self.current {
                None => match self.next_file()? {
                    Some((file, ino)) => self.current = Some((file, ino, 0)),
                    None => return Ok(lines),
                },
                Some((file, ino, pos)) => {
                    let rotated = live_ino != Some(*ino);
                    let (new, next) = read_lines_upto(file, *pos, &self.path, left)?;
                    let used = next - *pos;
                    *pos = next;
                    lines.extend(new);
                    if used >= left {
                        // The budget ran out: the rest of this file next time.
                        return Ok(lines);
                    }
                    left -= used;
                    if !rotated {
                        return Ok(lines);
                    }
                    // Not the live file: it is complete (the broker rotates
                    // between commits); go on with the next newer one.
                    self.finished = Some(*ino);
                    self.current = None;
                }
            }
        }
    }

    /// [`Follower::poll`], as records (lines that are not one are left out).
    pub fn poll_records(&mut self) -> Result<Vec<LogRecord>, FollowError> {
        Ok(self
            .poll()?
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

/// Complete lines after `pos` (a torn last line waits for its newline), and
/// the new position. A line that is not UTF-8 is corrupt (no record can be)
/// and left out. A file that shrank (cut at a broker restart) is read again
/// from where it now ends.
pub fn read_lines(
    file: &mut File,
    pos: u64,
    path: &Path,
) -> Result<(Vec<String>, u64), FollowError> {
    read_lines_upto(file, pos, path, u64::MAX)
}

/// [`read_lines`], stopping after the line that reaches `budget` bytes.
fn read_lines_upto(
    file: &mut File,
    pos: u64,
    path: &Path,
    budget: u64,
) -> Result<(Vec<String>, u64), FollowError> {
    let start = pos;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut pos = pos.min(len);
    file.seek(SeekFrom::Start(pos)).map_err(cannot(path))?;
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(cannot(path))?;
        if n == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        pos += n as u64;
        if let Ok(line) = std::str::from_utf8(&buf) {
            lines.push(line.trim_end().to_owned());
        }
        if pos - start >= budget {
            break;
        }
    }
    Ok((lines, pos))
}

#[cfg(test)]
#[path = "follow_tests.rs"]
mod tests;
