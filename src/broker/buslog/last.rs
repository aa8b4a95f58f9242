//! Where a rotated bus log file ends: its last valid record, read backwards
//! from the end in blocks, so a follower with a start (`castra bus tail
//! --since`) can pass over whole rotated files that end before it without
//! reading them. Only for rotated generations (the broker never appends to
//! them again); the live file is always read. Deciding what to skip is
//! `follow.rs`'s job.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::LogRecord;

/// How much is read at a time, backwards from the end.
const BLOCK: u64 = 64 * 1024;

/// The last valid record among the complete lines of the first `len` bytes
/// of `file`: bytes after the last newline (a torn line) and lines that are
/// not records (corrupt) are passed over, as a forward read passes over
/// them. `None` when the file holds no valid record.
pub fn last_record(file: &File, len: u64) -> io::Result<Option<LogRecord>> {
    // `buf` holds the file's bytes [start, start + buf.len()), all before
    // the newline that ends the line being looked for (once one was found).
    let mut buf: Vec<u8> = Vec::new();
    let mut start = len;
    let mut have_end = false;
    loop {
        match buf.iter().rposition(|&b| b == b'\n') {
            Some(i) => {
                if have_end && let Some(rec) = parse(&buf[i + 1..]) {
                    return Ok(Some(rec));
                }
                have_end = true;
                buf.truncate(i);
            }
            None if start == 0 => return Ok(if have_end { parse(&buf) } else { None }),
            None => {
                let from = start.saturating_sub(BLOCK);
                let mut block = vec![0; (start - from) as usize];
                file.read_exact_at(&mut block, from)?;
                // Before the first newline, the bytes read so far are a torn tail.
                if have_end {
                    block.extend_from_slice(&buf);
                }
                buf = block;
                start = from;
            }
        }
    }
}

/// A line as a record, as `tail` reads it (invalid UTF-8 or JSON: none).
fn parse(line: &[u8]) -> Option<LogRecord> {
    let text = std::str::from_utf8(line).ok()?;
    serde_json::from_str(text.trim_end()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, pad: usize) -> String {
        format!(
            "{{\"seq\":{seq},\"vm\":\"web\",\"topic\":\"t\",\"ts_ms\":{},\"payload\":\"{}\"}}\n",
            1000 + seq,
            "x".repeat(pad)
        )
    }

    /// The last record's seq of a file holding `text`.
    fn last_seq(text: &[u8]) -> Option<u64> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all.log.1");
        std::fs::write(&path, text).unwrap();
        let file = File::open(&path).unwrap();
        last_record(&file, text.len() as u64)
            .unwrap()
            .map(|r| r.seq)
    }

    #[test]
    fn the_last_whole_valid_line_wins() {
        let two = line(1, 3) + &line(2, 3);
        assert_eq!(last_seq(two.as_bytes()), Some(2));
        // A torn tail and a corrupt last line are passed over.
        assert_eq!(last_seq(format!("{two}{{\"seq\":3,").as_bytes()), Some(2));
        assert_eq!(last_seq(format!("{two}\0\0\0\n").as_bytes()), Some(2));
        let mut rot = two.clone().into_bytes();
        rot.extend_from_slice(b"{\"seq\":9\xff}\n");
        assert_eq!(last_seq(&rot), Some(2));
        // The first line of the file, and files without a record.
        assert_eq!(last_seq(line(7, 0).as_bytes()), Some(7));
        assert_eq!(
            last_seq(format!("{}garbage\n", line(7, 0)).as_bytes()),
            Some(7)
        );
        assert_eq!(last_seq(b""), None);
        assert_eq!(last_seq(b"no newline at all"), None);
        assert_eq!(last_seq(b"\n\nnot json\n"), None);
    }

    #[test]
    fn lines_longer_than_a_block_and_block_edges() {
        // One line spanning several blocks, after a short one.
        let long = line(1, 10) + &line(2, 3 * BLOCK as usize);
        assert_eq!(last_seq(long.as_bytes()), Some(2));
        // A corrupt line of several blocks before the end: the one before it.
        let text = line(1, 10) + &"z".repeat(2 * BLOCK as usize) + "\n";
        assert_eq!(last_seq(text.as_bytes()), Some(1));
        // The newline before the last line just inside, at, and just
        // outside the first block read.
        let base = line(7, 0).len();
        for d in [-2i64, -1, 0, 1, 2] {
            let last = line(7, (BLOCK as i64 + d) as usize - base);
            assert_eq!(last.len() as i64, BLOCK as i64 + d);
            let text = line(5, 0) + &line(6, 100) + &last;
            assert_eq!(last_seq(text.as_bytes()), Some(7), "{d}");
            // The same with a torn tail of about a block after it.
            let torn = format!("{text}{}", "y".repeat((BLOCK as i64 + d) as usize));
            assert_eq!(last_seq(torn.as_bytes()), Some(7), "torn {d}");
            // And a corrupt last line of that size: the one before it.
            let bad = line(5, 0) + &line(6, 100) + &"q".repeat(last.len() - 1) + "\n";
            assert_eq!(last_seq(bad.as_bytes()), Some(6), "corrupt {d}");
        }
    }

    #[test]
    fn only_the_first_len_bytes_count() {
        let text = line(1, 3) + &line(2, 3);
        let first = line(1, 3).len() as u64;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all.log.1");
        std::fs::write(&path, &text).unwrap();
        let file = File::open(&path).unwrap();
        let at = |len| last_record(&file, len).unwrap().map(|r| r.seq);
        assert_eq!((at(first), at(first - 1), at(0)), (Some(1), None, None));
    }
}
