//! `castra bus tail`: print and follow the bus log files, from the oldest
//! kept rotated generation to the live file, filtered by publisher, topic
//! and start (`--since`). Reads files only, so it never waits on the broker.
//! Following (across rotation) is `broker::buslog::follow`'s job. With
//! `--since`, a rotated file whose last record (read from its end) is before
//! the start is passed over unread: records in a file are
//! in sequence order, and in time order (the writer never stamps back in a
//! run; only a clock set back while the broker was stopped breaks it, see
//! docs/BUS.md), so none of its records would be printed.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};

use super::since::Since;
use crate::broker::buslog::follow::Follower;
use crate::broker::buslog::{LogRecord, generations};
use crate::broker::consumer::render_line;
use crate::broker::stamp::unix_ms;
use crate::layout::StateLayout;

/// How much of the log is read at a time (bytes).
const READ_CHUNK: u64 = 1 << 20;

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
    // Rotated generations first (oldest to newest), then the live file, a
    // chunk at a time: memory stays bounded by the chunk and by `-n`,
    // whatever the log's size. A closed stdout (`| head`) ends the command
    // in `main`, quietly.
    let mut reader = follower(path, since);
    let mut missed = Missed::new(args.vm.is_none());
    print_backlog(args, since.as_ref(), &mut reader, &mut missed, &mut out)?;
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        std::thread::sleep(FOLLOW_POLL);
        loop {
            let lines = reader.poll_upto(READ_CHUNK)?;
            if lines.is_empty() {
                break;
            }
            for text in selected_lines(args, since.as_ref(), &lines, &mut missed) {
                writeln!(out, "{text}")?;
            }
        }
        let _ = out.flush();
    }
}

/// The crate's bus log follower, passing over rotated files before `since`.
fn follower(path: PathBuf, since: Option<Since>) -> Follower {
    match since {
        Some(s) => Follower::with_start(path, Box::new(move |r| s.admits(r))),
        None => Follower::new(path),
    }
}

/// What the log holds now, a chunk at a time (of it, only the last `-n`).
fn print_backlog(
    args: &TailArgs,
    since: Option<&Since>,
    reader: &mut Follower,
    missed: &mut Missed,
    out: &mut impl Write,
) -> Result<()> {
    let mut last: VecDeque<String> = VecDeque::new();
    loop {
        let lines = reader.poll_upto(READ_CHUNK)?;
        if lines.is_empty() {
            break;
        }
        for text in selected_lines(args, since, &lines, missed) {
            match args.lines {
                Some(n) => {
                    if last.len() >= n {
                        last.pop_front();
                    }
                    if n > 0 {
                        last.push_back(text);
                    }
                }
                None => writeln!(out, "{text}")?,
            }
        }
    }
    for text in last {
        writeln!(out, "{text}")?;
    }
    let _ = out.flush();
    Ok(())
}

/// all.log numbers its records without gaps, so a jump in `seq` while
/// reading it means records were rotated away before this reader got to
/// them (a follower that fell behind by more rotations than are kept). A
/// VM's log holds only its own records: no gaps are judged there.
pub struct Missed {
    judge: bool,
    last: Option<u64>,
}

impl Missed {
    pub fn new(all_log: bool) -> Missed {
        Missed {
            judge: all_log,
            last: None,
        }
    }

    /// The range skipped before `seq`, if any.
    fn see(&mut self, seq: u64) -> Option<(u64, u64)> {
        let gap = match self.last {
            Some(last) if self.judge && seq > last + 1 => Some((last + 1, seq - 1)),
            _ => None,
        };
        self.last = Some(self.last.map_or(seq, |l| l.max(seq)));
        gap
    }
}

/// The records among `lines` that pass the filters, as printed.
/// Records never read (rotated away first) are reported on stderr.
fn selected_lines(
    args: &TailArgs,
    since: Option<&Since>,
    lines: &[String],
    missed: &mut Missed,
) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok().map(|r| (l.as_str(), r)))
        .inspect(|(_, r): &(&str, LogRecord)| {
            if let Some((from, to)) = missed.see(r.seq) {
                eprintln!(
                    "castra bus tail: missed {} records (#{from}..#{to}): their files were rotated \
                     away before they were read (--bus-log-keep keeps more)",
                    to - from + 1
                );
            }
        })
        .filter(|(_, r)| selected(r, args.topic.as_deref(), since))
        .map(|(line, rec)| {
            if args.json {
                line.to_owned()
            } else {
                render(&rec)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_in_all_logs_seq_is_a_missed_range() {
        let mut m = Missed::new(true);
        assert_eq!([1, 2, 3].map(|s| m.see(s)), [None; 3]);
        assert_eq!(m.see(10), Some((4, 9)));
        assert_eq!(m.see(11), None);
        let mut vm = Missed::new(false);
        assert_eq!([1, 5].map(|s| vm.see(s)), [None; 2]);
    }
    use crate::broker::buslog::follow::read_lines;
    use crate::broker::buslog::{self, Append, Rotation, read_records};
    use serde_json::json;
    use std::fs::File;
    use std::path::Path;
    use std::sync::mpsc;

    /// Complete lines of a whole file after `pos`, and the new position.
    fn read_new(path: &Path, pos: u64) -> (Vec<String>, u64) {
        read_lines(&mut File::open(path).unwrap(), pos, path).unwrap()
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
        let (lines, pos) = read_new(&path, 0);
        assert_eq!(lines, [ja, jb]);
        assert_eq!(pos as usize, text.len() - "{\"seq\":3,".len());
        let (none, same) = read_new(&path, pos);
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
        let mut reader = follower(path.to_owned(), pass_over.then_some(since));
        let mut out = Vec::new();
        let mut missed = Missed::new(true);
        print_backlog(args, Some(&since), &mut reader, &mut missed, &mut out).unwrap();
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
            let reader = follower(all.clone(), Some(since));
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
