//! `castra bus tail`: print and follow the bus log files, from the oldest
//! kept rotated generation to the live file, filtered by publisher, topic
//! and start (`--since`). Reads files only, so it never waits on the broker.
//! With `--since`, a rotated file whose last record (`rotated.rs`, read from
//! its end) is before the start is passed over unread: records in a file are
//! in sequence order, and in time order (the writer never stamps back in a
//! run; only a clock set back while the broker was stopped breaks it, see
//! docs/BUS.md), so none of its records would be printed.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::rotated::last_record;
use super::since::Since;
use crate::broker::buslog::{LogRecord, generations};
use crate::broker::consumer::render_line;
use crate::broker::stamp::unix_ms;
use crate::layout::StateLayout;

/// How often `tail -f` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(50);

pub const AFTER_HELP: &str = "\
Examples:
  castra bus tail -f --topic jobs          follow one topic
  castra bus tail --since 10m              what was published in the last 10 minutes
  castra bus tail --since 2026-11-23T10:00:00Z --vm web --json
  castra bus tail -f --since seq:120       from sequence number 120 on, then follow

Lines: <utc> #<seq> <publisher> <topic> [id=<id>] <payload>; --json prints the log's own
lines ({\"seq\",\"vm\",\"topic\",\"ts_ms\",\"payload\",\"id\"?}).";

#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// Keep printing new messages as they are logged.
    #[arg(short, long)]
    follow: bool,
    /// Only messages published by this VM (`host` for host publishes).
    #[arg(long)]
    vm: Option<String>,
    /// Only messages on this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only messages from WHEN on: a duration ago (`10m`, `2h`), an RFC 3339
    /// time (`2026-11-23T10:00:00Z`) or `seq:N`.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Print the log's JSON lines as they are.
    #[arg(long)]
    json: bool,
    /// Start with the last N messages (default: all; with --since, the last N of those).
    #[arg(short = 'n', long, value_name = "N")]
    lines: Option<usize>,
}

/// Whether a record passes the filters.
fn selected(rec: &LogRecord, topic: Option<&str>, since: Option<&Since>) -> bool {
    topic.is_none_or(|t| rec.topic == t) && since.is_none_or(|s| s.admits(rec))
}

/// One readable line for a log record.
fn render(rec: &LogRecord) -> String {
    render_line(
        rec.ts_ms,
        rec.seq,
        &rec.from(),
        &rec.topic,
        rec.id.as_ref(),
        &rec.payload,
    )
}

pub fn run(args: &TailArgs, layout: &StateLayout) -> Result<ExitCode> {
    let since = match &args.since {
        Some(when) => Some(Since::parse(when, unix_ms()).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let path: PathBuf = match &args.vm {
        Some(vm) => layout.bus_vm_log(vm),
        None => layout.bus_all_log(),
    };
    if !args.follow && generations(&path).len() == 1 && !path.exists() {
        bail!(
            "no bus log at {} yet: nothing was published{}",
            path.display(),
            args.vm
                .as_ref()
                .map(|v| format!(" by {v}"))
                .unwrap_or_default()
        );
    }
    let mut out = io::stdout().lock();
    // Rotated generations first (oldest to newest), then the live file.
    let mut reader = LiveReader::new(path, since);
    let mut lines = reader.poll()?;
    let mut first = true;
    loop {
        if print(args, since.as_ref(), &lines, first, &mut out).is_err() {
            // stdout closed (`| head`): done, like a broken pipe.
            return Ok(ExitCode::SUCCESS);
        }
        first = false;
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(FOLLOW_POLL);
        lines = reader.poll()?;
    }
}

/// Print the records among `lines` that pass the filters (of the first
/// batch, only the last `-n`); an error only when `out` is closed.
fn print(
    args: &TailArgs,
    since: Option<&Since>,
    lines: &[String],
    first: bool,
    out: &mut impl Write,
) -> io::Result<()> {
    let mut recs: Vec<(&str, LogRecord)> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok().map(|r| (l.as_str(), r)))
        .filter(|(_, r)| selected(r, args.topic.as_deref(), since))
        .collect();
    if first && let Some(n) = args.lines {
        let skip = recs.len().saturating_sub(n);
        recs.drain(..skip);
    }
    for (line, rec) in recs {
        if args.json {
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", render(&rec))?;
        }
    }
    let _ = out.flush();
    Ok(())
}

/// Reads a log from its oldest kept generation to the live file, then
/// follows the live file across rotation: it keeps the file it reads open,
/// and when the live name points at another file (the broker renamed it to
/// `.1` and started a new one) it reads the old one to its end, then goes on
/// with the next newer generation (by inode), up to the live file again.
/// With a start, it passes over rotated files that end before it.
struct LiveReader {
    path: PathBuf,
    /// Where `--since` starts, if given.
    start: Option<Since>,
    /// The file being read, its inode, and the position after the last whole line.
    current: Option<(File, u64, u64)>,
    /// The inode of the last file read to its end, to find its successor.
    finished: Option<u64>,
}

/// Inode of a path, if it exists.
fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

impl LiveReader {
    fn new(path: PathBuf, start: Option<Since>) -> Self {
        LiveReader {
            path,
            start,
            current: None,
            finished: None,
        }
    }

    /// Whether `file`, opened as `path`, holds nothing at or after the
    /// start: a rotated generation (never written again) whose last valid
    /// record is before it, or that holds none. The live file never is.
    fn passes_over(&self, path: &Path, file: &File) -> Result<bool> {
        let Some(start) = &self.start else {
            return Ok(false);
        };
        if path == self.path {
            return Ok(false);
        }
        let cannot = || format!("cannot read {}", path.display());
        let len = file.metadata().with_context(cannot)?.len();
        let last = last_record(file, len).with_context(cannot)?;
        Ok(last.is_none_or(|rec| !start.admits(&rec)))
    }

    /// The file to read next: the generation after the finished one, else
    /// the oldest kept one (at the start, or if the finished one was
    /// rotated away meanwhile). Files that end before the start are
    /// passed over as if read to their end.
    fn next_file(&mut self) -> Result<Option<(File, u64)>> {
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
                    let ino = f
                        .metadata()
                        .with_context(|| format!("cannot read {}", path.display()))?
                        .ino();
                    if self.passes_over(path, &f)? {
                        self.finished = Some(ino);
                        continue;
                    }
                    return Ok(Some((f, ino)));
                }
                // Renamed meanwhile: the next newer name holds the next file.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot read {}", path.display()));
                }
            }
        }
        Ok(None)
    }

    /// Every complete line added since the last call.
    fn poll(&mut self) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let live_ino = inode(&self.path);
            match &mut self.current {
                None => match self.next_file()? {
                    Some((file, ino)) => self.current = Some((file, ino, 0)),
                    None => return Ok(lines),
                },
                Some((file, ino, pos)) => {
                    let rotated = live_ino != Some(*ino);
                    let (new, next) = read_lines(file, *pos, &self.path)?;
                    *pos = next;
                    lines.extend(new);
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
}

/// Complete lines after `pos` (a torn last line waits for its newline), and
/// the new position. A line that is not UTF-8 is corrupt (no record can be)
/// and left out. A file that shrank (cut at a broker restart) is read again
/// from where it now ends.
fn read_lines(file: &mut File, pos: u64, path: &Path) -> Result<(Vec<String>, u64)> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut pos = pos.min(len);
    file.seek(SeekFrom::Start(pos))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        pos += n as u64;
        if let Ok(line) = std::str::from_utf8(&buf) {
            lines.push(line.trim_end().to_owned());
        }
    }
    Ok((lines, pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::buslog::{self, Append, Rotation, read_records};
    use serde_json::json;
    use std::sync::mpsc;

    /// Complete lines of a whole file after `pos`, and the new position.
    fn read_new(path: &Path, pos: u64) -> Result<(Vec<String>, u64)> {
        match File::open(path) {
            Ok(mut f) => read_lines(&mut f, pos, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((Vec::new(), 0)),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    #[test]
    fn lines_render_and_torn_tails_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all.log");
        let rec = |seq, vm: &str, topic: &str, id| LogRecord {
            seq,
            vm: vm.into(),
            topic: topic.into(),
            ts_ms: 1_714_566_896_789,
            payload: json!({"n": seq}),
            id,
        };
        let a = rec(1, "web", "broadcast", None);
        let b = rec(2, "host", "vm:web", Some(json!("x1")));
        // A corrupt line that is not UTF-8 between them is left out.
        let (ja, jb) = (
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap(),
        );
        let mut text = format!("{ja}\n").into_bytes();
        text.extend_from_slice(b"{\"seq\":9,\"payload\":\"\xff\"}\n");
        text.extend_from_slice(format!("{jb}\n{{\"seq\":3,").as_bytes());
        std::fs::write(&path, &text).unwrap();
        let (lines, pos) = read_new(&path, 0).unwrap();
        assert_eq!(lines, [ja, jb]);
        assert_eq!(pos as usize, text.len() - "{\"seq\":3,".len());
        let (none, same) = read_new(&path, pos).unwrap();
        assert!(none.is_empty());
        assert_eq!(same, pos);
        assert!(selected(&b, Some("vm:web"), None) && !selected(&a, Some("vm:web"), None));
        assert!(
            selected(&b, None, Some(&Since::Seq(2))) && !selected(&a, None, Some(&Since::Seq(2)))
        );
        insta::assert_snapshot!(format!("{}\n{}", render(&a), render(&b)), @r#"
            2024-05-01T12:34:56.789Z #1 vm:web broadcast {"n":1}
            2024-05-01T12:34:56.789Z #2 host vm:web id="x1" {"n":2}
            "#);
    }

    #[test]
    fn a_follower_reads_the_old_file_to_its_end_then_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("all.log");
        let mut reader = LiveReader::new(live.clone(), None);
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
                std::fs::rename(dir.path().join("all.log.1"), dir.path().join("all.log.2"))
                    .unwrap();
                std::fs::rename(&live, dir.path().join(name)).unwrap();
            }
            std::fs::write(&live, "").unwrap();
        }
        std::fs::write(&live, "h\n").unwrap();
        assert_eq!(reader.poll().unwrap(), ["f", "g", "h"]);
        // A new reader starts at the oldest kept generation.
        let mut fresh = LiveReader::new(live.clone(), None);
        assert_eq!(fresh.poll().unwrap(), ["d", "e", "f", "g", "h"]);
    }

    /// A bus log written by the real writer: `n` publishes from `web` and
    /// the host on two topics, one commit each, 2 ms apart (distinct
    /// timestamps), in files rotated at 600 bytes (~6 records each).
    fn written_log(root: &Path, n: u64) -> StateLayout {
        let layout = StateLayout::new(root);
        let rotation = Rotation {
            max_bytes: 600,
            keep: 30,
        };
        let (bus, tx) = buslog::start(&layout, rotation, Box::new(|_| {})).unwrap();
        let (atx, arx) = mpsc::channel();
        for i in 0..n {
            let atx = atx.clone();
            tx.send_blocking(Append {
                vm: (i % 3 != 0).then(|| "web".to_owned()),
                topic: if i % 2 == 0 { "jobs" } else { "vm:web" }.into(),
                payload: json!({ "n": i }),
                id: (i % 5 == 0).then(|| json!(format!("id-{i}"))),
                done: Box::new(move |r| {
                    let _ = atx.send(r);
                }),
            })
            .unwrap();
            assert_eq!(arx.recv().unwrap(), Ok(i + 1));
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(tx);
        bus.join();
        layout
    }

    /// What a non-following tail prints, with or without passing over files.
    fn output(args: &TailArgs, path: &Path, since: Since, pass_over: bool) -> String {
        let mut reader = LiveReader::new(path.to_owned(), pass_over.then_some(since));
        let lines = reader.poll().unwrap();
        let mut out = Vec::new();
        print(args, Some(&since), &lines, true, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Replace line `index` (0-based; negative from the end) of a file with
    /// as many bytes of `fill` (bit rot: the length stays).
    fn rot_line(path: &Path, index: isize, fill: u8) {
        let text = std::fs::read(path).unwrap();
        let mut lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        lines.pop(); // after the last newline
        let i = if index < 0 {
            (lines.len() as isize + index) as usize
        } else {
            index as usize
        };
        lines[i] = vec![fill; lines[i].len()];
        let mut joined = lines.join(&b'\n');
        joined.push(b'\n');
        std::fs::write(path, joined).unwrap();
    }

    #[test]
    fn passing_over_rotated_files_prints_exactly_what_reading_them_does() {
        let dir = tempfile::tempdir().unwrap();
        let layout = written_log(dir.path(), 70);
        let all = layout.bus_all_log();
        let gens = generations(&all);
        assert!(gens.len() >= 8, "{gens:?}");
        // Every seq and time there was, taken before the damage below.
        let starts: Vec<Since> = gens
            .iter()
            .flat_map(|g| read_records(g).unwrap())
            .flat_map(|r| {
                [
                    Since::Seq(r.seq),
                    Since::Seq(r.seq + 1),
                    Since::Time(r.ts_ms),
                    Since::Time(r.ts_ms + 1),
                ]
            })
            .chain([Since::Seq(0), Since::Time(0)])
            .chain([Since::Seq(u64::MAX), Since::Time(u64::MAX)])
            .collect();
        // Damage as a crash and bit rot leave it: a rotated file whose last
        // line is corrupt, one with a corrupt line in the middle, one of
        // web.log whose last line is NULs, a torn tail on the live files.
        rot_line(&gens[2], -1, b'x');
        rot_line(&gens[4], 2, b'\0');
        rot_line(&gens[1], 3, 0xff);
        rot_line(&generations(&layout.bus_vm_log("web"))[1], -1, b'\0');
        for live in [all.clone(), layout.bus_vm_log("web")] {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&live)
                .unwrap();
            f.write_all(br#"{"seq":71,"vm":"web","#).unwrap();
        }

        let args = |vm: Option<&str>, topic: Option<&str>, json, lines| TailArgs {
            follow: false,
            vm: vm.map(str::to_owned),
            topic: topic.map(str::to_owned),
            since: None,
            json,
            lines,
        };
        let variants = [
            args(None, None, false, None),
            args(None, None, true, None),
            args(None, Some("jobs"), false, Some(3)),
            args(Some("web"), None, true, None),
            args(Some("host"), Some("vm:web"), false, Some(2)),
        ];
        for a in &variants {
            let path = match &a.vm {
                Some(vm) => layout.bus_vm_log(vm),
                None => all.clone(),
            };
            for since in &starts {
                assert_eq!(
                    output(a, &path, *since, true),
                    output(a, &path, *since, false),
                    "{a:?} {since:?}"
                );
            }
        }
        let passed_over = |since| {
            let reader = LiveReader::new(all.clone(), Some(since));
            gens.iter()
                .map(|g| reader.passes_over(g, &File::open(g).unwrap()).unwrap())
                .collect::<Vec<bool>>()
        };
        // Before everything: nothing is passed over; after everything:
        // every rotated file, never the live one.
        assert!(passed_over(Since::Time(0)).iter().all(|o| !o));
        let after = passed_over(Since::Seq(71));
        assert!(after[..gens.len() - 1].iter().all(|o| *o) && !after[gens.len() - 1]);
        // In the middle of a rotated file: the older ones are passed over,
        // and the output is that file's rest onwards.
        let fourth: Vec<LogRecord> = read_records(&gens[3]).unwrap();
        for since in [Since::Seq(fourth[2].seq), Since::Time(fourth[2].ts_ms)] {
            let over = passed_over(since);
            assert_eq!(over[..4], [true, true, true, false], "{since:?}");
            assert!(over[4..].iter().all(|o| !o), "{since:?}");
            let text = output(&variants[0], &all, since, true);
            assert!(text.starts_with(&render(&fourth[2])), "{text}");
            // Through seq 70, without the corrupt line in gens[4].
            assert_eq!(text.lines().count() as u64, 70 - fourth[2].seq);
        }
    }
}
