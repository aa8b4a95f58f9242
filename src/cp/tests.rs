//! Copies through the real sender and receiver on real temp directories
//! (no stream: the frames are handed over in memory).

use super::*;
use std::os::unix::fs::MetadataExt;
use std::time::SystemTime;

type Frames = Vec<(Channel, Vec<u8>)>;

fn frames_of(src: &Path, recursive: bool) -> Result<Frames, String> {
    let mut frames = Vec::new();
    send(
        src,
        recursive,
        Channel::Input,
        &mut |ch, b| {
            frames.push((ch, b.to_vec()));
            Ok(())
        },
        &mut |_| {},
    )?;
    Ok(frames)
}

fn apply(frames: Frames, dst: &Path) -> Result<Receiver, String> {
    let mut r = Receiver::new(dst);
    for (ch, payload) in frames {
        match ch {
            Channel::Control => {
                if r.control(Control::parse(&payload).unwrap())? {
                    return Ok(r);
                }
            }
            _ => r.data(&payload)?,
        }
    }
    Err("no done".into())
}

#[test]
fn tree_round_trip_keeps_bytes_modes_mtimes_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tree");
    fs::create_dir_all(src.join("sub/deep")).unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    fs::write(src.join("sub/big.bin"), &big).unwrap();
    fs::write(src.join("exe"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("exe"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(src.join("sub/deep/empty"), b"").unwrap();
    std::os::unix::fs::symlink("sub/big.bin", src.join("link")).unwrap();
    let old = fs::File::open(src.join("exe")).unwrap();
    old.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    fs::set_permissions(src.join("sub/deep"), fs::Permissions::from_mode(0o750)).unwrap();

    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let r = apply(frames_of(&src, true).unwrap(), &out).unwrap();
    assert_eq!(r.bytes, big.len() as u64 + 10);
    let got = out.join("tree");
    assert_eq!(fs::read(got.join("sub/big.bin")).unwrap(), big);
    let exe = fs::metadata(got.join("exe")).unwrap();
    assert_eq!(exe.mode() & 0o7777, 0o755);
    assert_eq!(exe.mtime(), 1_000_000);
    assert_eq!(
        fs::metadata(got.join("sub/deep")).unwrap().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        fs::read_link(got.join("link")).unwrap(),
        Path::new("sub/big.bin")
    );
    assert_eq!(fs::read(got.join("sub/deep/empty")).unwrap(), b"");
    // No temporary files left behind.
    let leftovers: Vec<_> = fs::read_dir(got.join("sub"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A second copy onto a new name (destination does not exist).
    let renamed = tmp.path().join("renamed");
    apply(frames_of(&src, true).unwrap(), &renamed).unwrap();
    assert_eq!(fs::read(renamed.join("sub/big.bin")).unwrap(), big);
}

#[test]
fn single_file_onto_a_name_a_dir_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f.txt");
    fs::write(&f, b"hello\0\xff").unwrap();
    apply(frames_of(&f, false).unwrap(), &tmp.path().join("g.txt")).unwrap();
    assert_eq!(fs::read(tmp.path().join("g.txt")).unwrap(), b"hello\0\xff");
    let d = tmp.path().join("d");
    fs::create_dir(&d).unwrap();
    apply(frames_of(&f, false).unwrap(), &d).unwrap();
    assert_eq!(fs::read(d.join("f.txt")).unwrap(), b"hello\0\xff");

    let err = frames_of(tmp.path(), false).unwrap_err();
    assert!(err.contains("is a directory (use -r)"), "{err}");
    let err = frames_of(&tmp.path().join("nope"), false).unwrap_err();
    assert!(err.contains("no such file or directory"), "{err}");
    let err = apply(frames_of(&f, false).unwrap(), &tmp.path().join("x/y")).unwrap_err();
    assert!(err.contains("no such directory"), "{err}");
    // A file onto a directory of the same name inside the destination.
    fs::create_dir(d.join("sub")).unwrap();
    fs::create_dir(d.join("sub/f.txt")).unwrap();
    let err = apply(frames_of(&f, false).unwrap(), &d.join("sub")).unwrap_err();
    assert!(err.contains("destination is a directory"), "{err}");
}

#[test]
fn a_corrupted_file_is_never_renamed_into_place() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f");
    fs::write(&f, b"good bytes").unwrap();
    let mut frames = frames_of(&f, false).unwrap();
    for (ch, payload) in &mut frames {
        if *ch == Channel::Input {
            payload[0] ^= 1;
        }
    }
    let dst = tmp.path().join("copy");
    let err = apply(frames, &dst).unwrap_err();
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!dst.exists());
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "temp file left"
    );
}

#[test]
fn unsafe_paths_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for path in ["a/../../etc", "a//b", "..", "a/./b"] {
        let mut r = Receiver::new(tmp.path());
        let entry = Control::Entry(Entry {
            kind: EntryKind::Dir,
            path: path.into(),
            mode: 0o755,
            mtime: 0,
            size: None,
            target: None,
        });
        let err = r.control(entry).unwrap_err();
        assert!(err.contains("unsafe path"), "{path}: {err}");
    }
}
