//! `castra bus publish` and `castra bus tail`: the host's side of the bus.
//! Publish goes through the broker's Unix socket and succeeds only on the
//! durable ack; tail reads (and follows) the bus log files directly, so it
//! never waits on the broker. Rendering of log lines is pure (tested here).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::broker::buslog::LogRecord;
use crate::broker::events::utc;
use crate::broker::frame::DEFAULT_FRAME_LIMIT;
use crate::broker::host_client;
use crate::config::Project;
use crate::layout::StateLayout;

/// How often `tail -f` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(50);

#[derive(clap::Args, Debug)]
pub struct BusArgs {
    #[command(subcommand)]
    command: BusCommand,
}

#[derive(clap::Subcommand, Debug)]
enum BusCommand {
    /// Publish one message; exit 0 only once the broker has made it durable (prints its seq).
    Publish(PublishArgs),
    /// Print (and follow) the bus log; reads files only, never waits on the broker.
    Tail(TailArgs),
}

#[derive(clap::Args, Debug)]
struct PublishArgs {
    /// Topic: `broadcast`, `vm:<name>` (that VM's subscribers) or any name.
    #[arg(long, default_value = crate::broker::topic::BROADCAST)]
    topic: String,
    /// The payload as JSON; `-` or nothing reads it from stdin.
    payload: Option<String>,
    /// Send the payload as a JSON string instead of parsing it as JSON.
    #[arg(long)]
    text: bool,
    /// An id echoed in the ack and stored in the log (a string).
    #[arg(long)]
    id: Option<String>,
}

#[derive(clap::Args, Debug)]
struct TailArgs {
    /// Keep printing new messages as they are logged.
    #[arg(short, long)]
    follow: bool,
    /// Only messages published by this VM (`host` for host publishes).
    #[arg(long)]
    vm: Option<String>,
    /// Only messages on this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Print the log's JSON lines as they are.
    #[arg(long)]
    json: bool,
    /// Start with the last N messages (default: all).
    #[arg(short = 'n', long, value_name = "N")]
    lines: Option<usize>,
}

pub fn run(args: &BusArgs, project: &Project) -> Result<ExitCode> {
    let layout = StateLayout::new(&project.state_root);
    match &args.command {
        BusCommand::Publish(p) => publish(p, &layout),
        BusCommand::Tail(t) => tail(t, &layout),
    }
}

fn publish(args: &PublishArgs, layout: &StateLayout) -> Result<ExitCode> {
    let raw = match args.payload.as_deref() {
        Some("-") | None => {
            let mut s = String::new();
            io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the payload from stdin")?;
            s
        }
        Some(p) => p.to_owned(),
    };
    let payload = if args.text {
        Value::String(raw.strip_suffix('\n').unwrap_or(&raw).to_owned())
    } else {
        serde_json::from_str(&raw)
            .map_err(|e| host_client::PublishError::InvalidJson(e.to_string()))?
    };
    let seq = host_client::publish(
        &layout.broker_socket(),
        &args.topic,
        payload,
        args.id.clone().map(Value::String),
        DEFAULT_FRAME_LIMIT as usize,
    )?;
    println!("{seq}");
    Ok(ExitCode::SUCCESS)
}

/// Whether a record passes the filters.
fn selected(rec: &LogRecord, topic: Option<&str>) -> bool {
    topic.is_none_or(|t| rec.topic == t)
}

/// One readable line: `<utc> #<seq> <from> <topic> <payload>`.
fn render(rec: &LogRecord) -> String {
    let id = rec
        .id
        .as_ref()
        .map(|i| format!(" id={i}"))
        .unwrap_or_default();
    format!(
        "{} #{} {} {}{id} {}",
        utc(rec.ts_ms),
        rec.seq,
        rec.from(),
        rec.topic,
        rec.payload
    )
}

fn tail(args: &TailArgs, layout: &StateLayout) -> Result<ExitCode> {
    let path: PathBuf = match &args.vm {
        Some(vm) => layout.bus_vm_log(vm),
        None => layout.bus_all_log(),
    };
    if !args.follow && !path.exists() {
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
    let mut pos = 0u64;
    let mut first = true;
    loop {
        let (lines, next) = read_new(&path, pos)?;
        pos = next;
        let mut recs: Vec<(&str, LogRecord)> = lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok().map(|r| (l.as_str(), r)))
            .filter(|(_, r)| selected(r, args.topic.as_deref()))
            .collect();
        if first && let Some(n) = args.lines {
            let skip = recs.len().saturating_sub(n);
            recs.drain(..skip);
        }
        first = false;
        for (line, rec) in recs {
            let text = if args.json {
                line.to_owned()
            } else {
                render(&rec)
            };
            if writeln!(out, "{text}").is_err() {
                return Ok(ExitCode::SUCCESS);
            }
        }
        let _ = out.flush();
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Complete lines after `pos` (a torn last line waits for its newline), and
/// the new position. A file that shrank (cut at a broker restart) is read
/// again from where it now ends.
fn read_new(path: &Path, pos: u64) -> Result<(Vec<String>, u64)> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut pos = pos.min(len);
    file.seek(SeekFrom::Start(pos))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader
            .read_line(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 || !buf.ends_with('\n') {
            break;
        }
        pos += n as u64;
        lines.push(buf.trim_end().to_owned());
    }
    Ok((lines, pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let text = format!(
            "{}\n{}\n{{\"seq\":3,",
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        std::fs::write(&path, &text).unwrap();
        let (lines, pos) = read_new(&path, 0).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(pos as usize, text.len() - "{\"seq\":3,".len());
        let (none, same) = read_new(&path, pos).unwrap();
        assert!(none.is_empty());
        assert_eq!(same, pos);
        assert!(selected(&b, Some("vm:web")) && !selected(&a, Some("vm:web")));
        insta::assert_snapshot!(format!("{}\n{}", render(&a), render(&b)), @r#"
            2024-05-01T12:34:56.789Z #1 vm:web broadcast {"n":1}
            2024-05-01T12:34:56.789Z #2 host vm:web id="x1" {"n":2}
            "#);
    }
}
