//! VM logs: which files there are (serial console, QEMU's own log), printing
//! their tails, and following them as they grow (surviving rotation on restart).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::layout::StateLayout;

/// How often `follow` looks for new bytes.
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSource {
    /// Prefix shown before each line when several logs are interleaved.
    pub label: String,
    pub path: PathBuf,
}

/// The logs of the given VMs (serial, and QEMU's own log when `qemu`).
pub fn sources(layout: &StateLayout, vms: &[String], qemu: bool) -> Vec<LogSource> {
    let mut out = Vec::new();
    for vm in vms {
        let p = layout.vm(vm);
        out.push(LogSource {
            label: vm.clone(),
            path: p.serial_log(),
        });
        if qemu {
            out.push(LogSource {
                label: format!("{vm}/qemu"),
                path: p.qemu_log(),
            });
        }
    }
    out
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Print the last `n` lines of each source (prefixed when `prefix`).
pub fn print_tail(
    out: &mut dyn Write,
    sources: &[LogSource],
    n: usize,
    prefix: bool,
) -> std::io::Result<()> {
    for s in sources {
        let Ok(bytes) = std::fs::read(&s.path) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for line in last_lines(&text, n) {
            write_line(out, s, line.trim_end_matches('\r'), prefix)?;
        }
    }
    Ok(())
}

fn write_line(out: &mut dyn Write, s: &LogSource, line: &str, prefix: bool) -> std::io::Result<()> {
    if prefix {
        writeln!(out, "{} | {line}", s.label)
    } else {
        writeln!(out, "{line}")
    }
}

/// Follow sources forever from their current ends. A file that shrinks or is
/// replaced (a VM restart rotates its serial log) is read again from the start.
pub fn follow(out: &mut dyn Write, sources: &[LogSource], prefix: bool) -> std::io::Result<()> {
    let mut state: Vec<(u64, Option<u64>, String)> = sources
        .iter()
        .map(|s| (file_len(&s.path), inode(&s.path), String::new()))
        .collect();
    loop {
        for (s, (pos, ino, partial)) in sources.iter().zip(state.iter_mut()) {
            let now_ino = inode(&s.path);
            let len = file_len(&s.path);
            if now_ino != *ino || len < *pos {
                *pos = 0;
                *ino = now_ino;
            }
            if len > *pos {
                let mut f = File::open(&s.path)?;
                f.seek(SeekFrom::Start(*pos))?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                *pos += buf.len() as u64;
                partial.push_str(&String::from_utf8_lossy(&buf));
                while let Some(i) = partial.find('\n') {
                    let line: String = partial.drain(..=i).collect();
                    write_line(out, s, line.trim_end_matches(['\n', '\r']), prefix)?;
                }
                out.flush()?;
            }
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn inode(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_takes_the_tail() {
        assert_eq!(last_lines("a\nb\nc\n", 2), vec!["b", "c"]);
        assert_eq!(last_lines("a\n", 5), vec!["a"]);
        assert!(last_lines("", 3).is_empty());
    }

    #[test]
    fn tail_prefixes_each_vm() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StateLayout::new(dir.path());
        for vm in ["a", "b"] {
            let p = layout.vm(vm);
            std::fs::create_dir_all(&p.dir).unwrap();
            std::fs::write(p.serial_log(), format!("boot {vm}\r\nready {vm}\n")).unwrap();
        }
        let src = sources(&layout, &["a".into(), "b".into()], false);
        let mut out = Vec::new();
        print_tail(&mut out, &src, 1, true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a | ready a\nb | ready b\n"
        );
    }
}
