//! Tests of the bus log follower: rotation between looks (once, twice),
//! torn lines, and following from the live file's end across a rotation.

use super::*;
use std::io::Write;

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn a_follower_reads_the_old_file_to_its_end_then_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("all.log");
    let mut reader = Follower::new(live.clone());
    assert!(reader.poll().unwrap().is_empty());
    std::fs::write(&live, "a\nb\n").unwrap();
    assert_eq!(reader.poll().unwrap(), ["a", "b"]);
    // The broker appends, rotates, and starts a new file before we look again.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&live)
        .unwrap();
    f.write_all(b"c\n").unwrap();
    std::fs::rename(&live, dir.path().join("all.log.1")).unwrap();
    std::fs::write(&live, "d\ne").unwrap();
    assert_eq!(reader.poll().unwrap(), ["c", "d"]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&live)
        .unwrap();
    f.write_all(b"\n").unwrap();
    assert_eq!(reader.poll().unwrap(), ["e"]);
    assert!(reader.poll().unwrap().is_empty());

    // Two rotations between looks: nothing in between is skipped.
    for (gen_text, name) in [("f\n", "all.log.2"), ("g\n", "all.log.1")] {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&live)
            .unwrap();
        f.write_all(gen_text.as_bytes()).unwrap();
        if name == "all.log.2" {
            std::fs::rename(dir.path().join("all.log.1"), dir.path().join(name)).unwrap();
            std::fs::rename(&live, dir.path().join("all.log.1")).unwrap();
        } else {
            std::fs::rename(dir.path().join("all.log.1"), dir.path().join("all.log.2")).unwrap();
            std::fs::rename(&live, dir.path().join(name)).unwrap();
        }
        std::fs::write(&live, "").unwrap();
    }
    std::fs::write(&live, "h\n").unwrap();
    assert_eq!(reader.poll().unwrap(), ["f", "g", "h"]);
    // A new reader starts at the oldest kept generation.
    let mut fresh = Follower::new(live.clone());
    assert_eq!(fresh.poll().unwrap(), ["d", "e", "f", "g", "h"]);
}

fn rec(seq: u64) -> String {
    format!(r#"{{"seq":{seq},"vm":"web","topic":"t","ts_ms":1,"payload":{{"n":{seq}}}}}"#)
}

fn seqs(f: &mut Follower) -> Vec<u64> {
    f.poll_records().unwrap().iter().map(|r| r.seq).collect()
}

#[test]
fn from_the_end_torn_lines_wait_and_a_rotation_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("web.log");
    // No file yet: everything that comes is new.
    let mut early = Follower::at_end(live.clone()).unwrap();
    append(&live, &format!("{}\n", rec(1)));
    let mut f = Follower::at_end(live.clone()).unwrap();
    assert_eq!(seqs(&mut early), [1]);
    assert!(seqs(&mut f).is_empty(), "what was there before is not new");
    // A torn line waits for its newline.
    let two = rec(2);
    append(&live, &two[..two.len() - 5]);
    assert!(seqs(&mut f).is_empty());
    append(&live, &format!("{}\n{}\n", &two[two.len() - 5..], rec(3)));
    assert_eq!(seqs(&mut f), [2, 3]);
    // The broker appends, rotates and goes on in a new file between looks.
    append(&live, &format!("{}\n", rec(4)));
    std::fs::rename(&live, dir.path().join("web.log.1")).unwrap();
    append(&live, &format!("{}\n", rec(5)));
    assert_eq!(seqs(&mut f), [4, 5]);
    assert_eq!(seqs(&mut early), [2, 3, 4, 5]);
    assert!(seqs(&mut f).is_empty());
}
