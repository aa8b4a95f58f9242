//! A pure writer for the "newc" cpio format (the format Linux unpacks as an
//! initramfs): directories, regular files, symlinks and character devices,
//! then the `TRAILER!!!` record. Output is deterministic: inode numbers are
//! assigned in order, every mtime is 0, uid/gid are 0.
//!
//! It does not compress, read files from disk or sort entries: the caller
//! decides the order (parents before children) and supplies the bytes.

/// The magic of a newc header ("new ASCII" format, no checksums).
const MAGIC: &str = "070701";
/// The name of the record that ends an archive.
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// One archive member. Paths are relative (`bin/busybox`, no leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
    CharDev {
        path: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. }
            | Entry::File { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::CharDev { path, .. } => path,
        }
    }
}

/// Serialises `entries` (in the given order) followed by the trailer.
pub fn write_archive(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        // Inode 0 is avoided: some unpackers treat it as "no inode".
        let ino = index as u32 + 1;
        let header = match entry {
            Entry::Dir { path, mode } => Header {
                ino,
                mode: S_IFDIR | (mode & 0o7777),
                nlink: 2,
                name: path,
                data: &[],
                rdev: (0, 0),
            },
            Entry::File { path, mode, data } => Header {
                ino,
                mode: S_IFREG | (mode & 0o7777),
                nlink: 1,
                name: path,
                data,
                rdev: (0, 0),
            },
            Entry::Symlink { path, target } => Header {
                ino,
                mode: S_IFLNK | 0o777,
                nlink: 1,
                name: path,
                data: target.as_bytes(),
                rdev: (0, 0),
            },
            Entry::CharDev {
                path,
                mode,
                major,
                minor,
            } => Header {
                ino,
                mode: S_IFCHR | (mode & 0o7777),
                nlink: 1,
                name: path,
                data: &[],
                rdev: (*major, *minor),
            },
        };
        header.write(&mut out);
    }
    Header {
        ino: 0,
        mode: 0,
        nlink: 1,
        name: TRAILER,
        data: &[],
        rdev: (0, 0),
    }
    .write(&mut out);
    out
}

struct Header<'a> {
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &'a str,
    data: &'a [u8],
    rdev: (u32, u32),
}

impl Header<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        let fields = [
            self.ino,
            self.mode,
            0, // uid
            0, // gid
            self.nlink,
            0, // mtime: fixed for reproducible archives
            self.data.len() as u32,
            0, // devmajor
            0, // devminor
            self.rdev.0,
            self.rdev.1,
            self.name.len() as u32 + 1, // namesize counts the NUL
            0,                          // check (unused by newc)
        ];
        out.extend_from_slice(MAGIC.as_bytes());
        for field in fields {
            out.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        out.extend_from_slice(self.name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(self.data);
        pad4(out);
    }
}

/// Pads with NULs to the next multiple of 4 (the header is 110 bytes, so
/// padding is computed on the absolute offset, as the format requires).
fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<Entry> {
        vec![
            Entry::Dir {
                path: "bin".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "bin/hello".into(),
                mode: 0o755,
                data: b"#!/bin/sh\necho hi\n".to_vec(),
            },
            Entry::Symlink {
                path: "bin/sh".into(),
                target: "busybox".into(),
            },
            Entry::CharDev {
                path: "console".into(),
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        ]
    }

    /// A minimal newc reader, independent of the writer's code paths.
    fn parse(mut bytes: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let start = bytes.as_ptr() as usize;
        let mut out = Vec::new();
        loop {
            assert_eq!(&bytes[..6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&bytes[6 + i * 8..6 + (i + 1) * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, mtime, size, namesize) = (field(1), field(5), field(6), field(11));
            assert_eq!(mtime, 0);
            let name = std::str::from_utf8(&bytes[110..110 + namesize as usize - 1])
                .unwrap()
                .to_string();
            assert_eq!(bytes[110 + namesize as usize - 1], 0);
            let mut off = 110 + namesize as usize;
            let abs = |o: usize| (bytes.as_ptr() as usize - start) + o;
            while abs(off) % 4 != 0 {
                off += 1;
            }
            let data = bytes[off..off + size as usize].to_vec();
            off += size as usize;
            while abs(off) % 4 != 0 {
                off += 1;
            }
            bytes = &bytes[off..];
            if name == TRAILER {
                assert!(bytes.is_empty(), "bytes after the trailer");
                return out;
            }
            out.push((name, mode, field(10), data));
        }
    }

    #[test]
    fn empty_archive_is_just_the_trailer() {
        let bytes = write_archive(&[]);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(
            String::from_utf8_lossy(&bytes[..110 + 11]),
            "07070100000000000000000000000000000000000000010000000000000000000000000000000000000000000000000000000B00000000TRAILER!!!\0"
        );
        assert!(parse(&bytes).is_empty());
    }

    #[test]
    fn entries_round_trip_with_modes_sizes_and_padding() {
        let bytes = write_archive(&sample());
        assert_eq!(bytes.len() % 4, 0);
        let parsed = parse(&bytes);
        let summary: Vec<String> = parsed
            .iter()
            .map(|(name, mode, rdevminor, data)| {
                format!(
                    "{name} {mode:o} rdevminor={rdevminor} {:?}",
                    String::from_utf8_lossy(data)
                )
            })
            .collect();
        insta::assert_snapshot!(summary.join("\n"), @r##"
        bin 40755 rdevminor=0 ""
        bin/hello 100755 rdevminor=0 "#!/bin/sh\necho hi\n"
        bin/sh 120777 rdevminor=0 "busybox"
        console 20600 rdevminor=1 ""
        "##);
    }

    #[test]
    fn output_is_deterministic() {
        assert_eq!(write_archive(&sample()), write_archive(&sample()));
    }

    #[test]
    fn mode_keeps_only_permission_bits() {
        let bytes = write_archive(&[Entry::File {
            path: "f".into(),
            mode: 0o170644,
            data: vec![1, 2, 3],
        }]);
        assert_eq!(parse(&bytes)[0].1, S_IFREG | 0o644);
    }

    /// The real GNU cpio must list exactly our members.
    #[test]
    fn gnu_cpio_lists_the_archive() {
        let bytes = write_archive(&sample());
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--quiet", "-H", "newc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run GNU cpio (scripts/setup-host.sh installs it)");
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "cpio failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        // Keep the type/mode column, the size column and the name (drop owner and date).
        let cols: Vec<String> = listing
            .lines()
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let name_at = w
                    .iter()
                    .position(|x| x.starts_with("bin") || *x == "console");
                format!("{} {}", w[0], w[name_at.unwrap()..].join(" "))
            })
            .collect();
        insta::assert_snapshot!(cols.join("\n"), @r"
        drwxr-xr-x bin
        -rwxr-xr-x bin/hello
        lrwxrwxrwx bin/sh -> busybox
        crw------- console
        ");
    }
}
