//! The guest side of a bootstrap run: `/bin/sh -c <script>` with the
//! request's environment, in its own process group, stdout and stderr read
//! line by line and handed out in batches, output capped (the cap is
//! reported, the rest is counted and dropped), killed at the timeout.
//! Knows nothing of the bus: reports go to a callback (the agent publishes
//! them).

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::redact::redact;
use super::wire::{Report, Request, RunStatus};

/// Bounds of one run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Output bytes forwarded in total; past it output is counted, not sent.
    pub max_output: usize,
    /// A longer line is split.
    pub max_line: usize,
    /// A batch is sent when it holds this many bytes...
    pub batch_bytes: usize,
    /// ...or when its oldest line is this old.
    pub batch_interval: Duration,
    /// `idle` is called when nothing was reported for this long.
    pub idle_interval: Duration,
    /// After the shell exits, how long to wait for its pipes to close
    /// (a background child may hold them open).
    pub drain_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_output: 256 * 1024,
            max_line: 4096,
            batch_bytes: 16 * 1024,
            batch_interval: Duration::from_millis(200),
            idle_interval: Duration::from_secs(4),
            drain_grace: Duration::from_secs(1),
        }
    }
}

/// Splits a byte stream into lines of at most `max` bytes (lossy UTF-8).
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max: max.max(1),
        }
    }

    /// Complete lines in `bytes` (without the newline).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                out.push(self.take());
            } else {
                self.buf.push(b);
                if self.buf.len() >= self.max {
                    out.push(self.take());
                }
            }
        }
        out
    }

    /// The unterminated rest, if any.
    pub fn finish(&mut self) -> Option<String> {
        (!self.buf.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.buf)
            .trim_end_matches('\r')
            .to_owned();
        self.buf.clear();
        line
    }
}

enum Piece {
    Line(String),
    Eof,
}

fn reader(mut from: impl Read + Send + 'static, max_line: usize, to: mpsc::Sender<Piece>) {
    std::thread::spawn(move || {
        let mut split = LineSplitter::new(max_line);
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    for line in split.push(&buf[..n]) {
                        if to.send(Piece::Line(line)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if let Some(rest) = split.finish() {
            let _ = to.send(Piece::Line(rest));
        }
        let _ = to.send(Piece::Eof);
    });
}

/// Run `req` with `env` (secrets already opened); every report goes to
/// `emit`, with each of `secrets` masked in the output (reports end up in
/// the durable bus log), and `idle` is called when nothing was reported for
/// a while (the agent heartbeats there). An `Err` from a callback stops the
/// reporting, never the run: the shell still runs to its end or timeout.
pub fn run(
    req: &Request,
    env: &BTreeMap<String, String>,
    secrets: &[&str],
    limits: &Limits,
    emit: &mut dyn FnMut(Report) -> io::Result<()>,
    idle: &mut dyn FnMut() -> io::Result<()>,
) {
    let t0 = Instant::now();
    let run = req.run.clone();
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(&req.script)
        .envs(env)
        .env("CASTRA_BOOTSTRAP_RUN", &run)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = emit(Report::Finished {
                run,
                status: RunStatus::Failed,
                exit_code: None,
                truncated: false,
                output_bytes: 0,
                elapsed_ms: t0.elapsed().as_millis() as u64,
                error: Some(format!("cannot start /bin/sh: {e}")),
            });
            return;
        }
    };
    let mut reporting = emit(Report::Started { run: run.clone() }).is_ok();
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        reader(out, limits.max_line, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        reader(err, limits.max_line, tx.clone());
    }
    drop(tx);
    let deadline = t0 + Duration::from_millis(req.timeout_ms);
    let mut open_pipes = 2;
    let mut batch: Vec<String> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut batch_since = Instant::now();
    let mut last_report = Instant::now();
    let mut sent = 0usize;
    let mut output_bytes = 0u64;
    let mut truncated = false;
    let mut timed_out = false;
    let mut exited_at: Option<Instant> = None;
    let mut status = None;
    loop {
        match rx.recv_timeout(limits.batch_interval.min(Duration::from_millis(100))) {
            Ok(Piece::Line(line)) => {
                let line = redact(&line, secrets);
                let n = line.len() + 1;
                output_bytes += n as u64;
                if sent + n <= limits.max_output {
                    sent += n;
                    batch_bytes += n;
                    if batch.is_empty() {
                        batch_since = Instant::now();
                    }
                    batch.push(line);
                } else if !truncated {
                    truncated = true;
                    batch.push(format!(
                        "[castra: output truncated after {} bytes; the rest is counted, not kept]",
                        sent
                    ));
                }
            }
            Ok(Piece::Eof) => open_pipes -= 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => open_pipes = 0,
        }
        let flush = !batch.is_empty()
            && (batch_bytes >= limits.batch_bytes
                || batch_since.elapsed() >= limits.batch_interval
                || open_pipes == 0);
        if flush {
            let lines = std::mem::take(&mut batch);
            batch_bytes = 0;
            if reporting {
                reporting = emit(Report::Output {
                    run: run.clone(),
                    lines,
                })
                .is_ok();
            }
            last_report = Instant::now();
        } else if reporting && last_report.elapsed() >= limits.idle_interval {
            reporting = idle().is_ok();
            last_report = Instant::now();
        }
        if status.is_none()
            && let Ok(Some(s)) = child.try_wait()
        {
            status = Some(s);
            exited_at = Some(Instant::now());
        }
        if !timed_out && status.is_none() && Instant::now() >= deadline {
            timed_out = true;
            kill_group(child.id());
        }
        let drained =
            open_pipes == 0 || exited_at.is_some_and(|t| t.elapsed() >= limits.drain_grace);
        if status.is_some() && drained {
            break;
        }
    }
    // A background process still holding the pipes goes with the group.
    kill_group(child.id());
    if !batch.is_empty() && reporting {
        let _ = emit(Report::Output {
            run: run.clone(),
            lines: batch,
        });
    }
    let exit_code = status.and_then(|s| s.code());
    let (status, error) = if timed_out {
        (
            RunStatus::Timeout,
            Some(format!("killed after the {} ms timeout", req.timeout_ms)),
        )
    } else if exit_code == Some(0) {
        (RunStatus::Ok, None)
    } else {
        let why = match exit_code {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".to_owned(),
        };
        (RunStatus::Failed, Some(why))
    };
    let _ = emit(Report::Finished {
        run,
        status,
        exit_code,
        truncated,
        output_bytes,
        elapsed_ms: t0.elapsed().as_millis() as u64,
        error,
    });
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(script: &str, timeout_ms: u64) -> Request {
        Request {
            run: "r1".into(),
            kind: "run".into(),
            script: script.into(),
            env: BTreeMap::new(),
            sealed_env: BTreeMap::new(),
            timeout_ms,
        }
    }

    fn run_collect(req: &Request, env: &[(&str, &str)], limits: &Limits) -> Vec<Report> {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut out = Vec::new();
        run(
            req,
            &env,
            &["s3cr3t"],
            limits,
            &mut |r| {
                out.push(r);
                Ok(())
            },
            &mut || Ok(()),
        );
        out
    }

    fn lines(reports: &[Report]) -> Vec<String> {
        reports
            .iter()
            .flat_map(|r| match r {
                Report::Output { lines, .. } => lines.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    fn finished(reports: &[Report]) -> (RunStatus, Option<i32>, bool, u64) {
        match reports.last() {
            Some(Report::Finished {
                status,
                exit_code,
                truncated,
                output_bytes,
                ..
            }) => (*status, *exit_code, *truncated, *output_bytes),
            other => panic!("last report is not finished: {other:?}"),
        }
    }

    #[test]
    fn success_streams_both_streams_with_env() {
        let r = run_collect(
            &request(
                "echo out $GREETING; echo err >&2; printf 'no newline'",
                10_000,
            ),
            &[("GREETING", "hi")],
            &Limits::default(),
        );
        assert_eq!(r[0], Report::Started { run: "r1".into() });
        let mut got = lines(&r);
        got.sort();
        assert_eq!(got, ["err", "no newline", "out hi"]);
        assert_eq!(finished(&r), (RunStatus::Ok, Some(0), false, 22));
    }

    #[test]
    fn failure_reports_the_exit_code() {
        let r = run_collect(
            &request("echo before; exit 3", 10_000),
            &[],
            &Limits::default(),
        );
        assert_eq!(lines(&r), ["before"]);
        assert_eq!(finished(&r).0, RunStatus::Failed);
        assert_eq!(finished(&r).1, Some(3));
        match r.last() {
            Some(Report::Finished { error, .. }) => {
                assert_eq!(error.as_deref(), Some("exit code 3"))
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        let pidfile = dir.path().join("pid");
        // A grandchild that says who it is, then would leave a mark later.
        let script = format!(
            "sh -c 'echo $$ > {}; sleep 2; touch {}' & \
             while [ ! -s {} ]; do :; done; echo start; sleep 30",
            pidfile.display(),
            marker.display(),
            pidfile.display()
        );
        let t = Instant::now();
        let r = run_collect(&request(&script, 1000), &[], &Limits::default());
        // Bound that only catches a hang (the script alone would take 30 s).
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        assert_eq!(lines(&r), ["start"]);
        assert_eq!(finished(&r).0, RunStatus::Timeout);
        // The grandchild is dead (gone, or a zombie nobody reaped yet), so
        // the mark can never come.
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(text) = std::fs::read_to_string(&stat) {
            if text.rsplit(") ").next().is_some_and(|s| s.starts_with('Z')) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a child of the timed-out run survived: {text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !marker.exists(),
            "a child of the timed-out run wrote its mark"
        );
    }

    #[test]
    fn large_output_is_capped_and_counted() {
        let limits = Limits {
            max_output: 10_000,
            batch_bytes: 2048,
            ..Limits::default()
        };
        // 100,000 lines of "xxxxxxxxx" (10 bytes each with the newline).
        let r = run_collect(
            &request(
                "i=0; while [ $i -lt 100000 ]; do echo xxxxxxxxx; i=$((i+1)); done",
                60_000,
            ),
            &[],
            &limits,
        );
        let got = lines(&r);
        assert_eq!(got.len(), 1001, "1000 lines kept, then the truncation note");
        assert!(
            got[1000].contains("output truncated after 10000 bytes"),
            "{}",
            got[1000]
        );
        let (status, _, truncated, bytes) = finished(&r);
        assert_eq!((status, truncated, bytes), (RunStatus::Ok, true, 1_000_000));
        let batches = r
            .iter()
            .filter(|r| matches!(r, Report::Output { .. }))
            .count();
        assert!(batches >= 5, "{batches} batches");
    }

    #[test]
    fn a_background_child_holding_the_pipe_does_not_hang_the_run() {
        let t = Instant::now();
        let r = run_collect(
            &request("sleep 20 & echo done", 60_000),
            &[],
            &Limits::default(),
        );
        // Bound that only catches a hang (waiting for the child: 20 s).
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        assert_eq!(lines(&r), ["done"]);
        assert_eq!(finished(&r).0, RunStatus::Ok);
    }

    #[test]
    fn lines_are_split_at_the_limit() {
        let mut s = LineSplitter::new(4);
        assert_eq!(s.push(b"ab\ncdefgh\r\nij"), ["ab", "cdef", "gh"]);
        assert_eq!(s.finish().as_deref(), Some("ij"));
        assert_eq!(s.finish(), None);
    }
}
