//! Children a test starts, behind a guard that kills and reaps them whatever
//! happens (a failed assertion unwinds through the guard's drop), and a line
//! feed that waits for a line with a deadline instead of sleeping.

use std::io::{BufRead, BufReader, Read};
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A spawned child that is SIGKILLed and reaped on drop.
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    pub fn spawn(cmd: &mut Command) -> KillOnDrop {
        KillOnDrop(Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program())),
        ))
    }

    /// Wait for it to exit by itself and collect its piped output.
    pub fn wait_with_output(mut self) -> Output {
        let child = self.0.take().expect("child");
        child.wait_with_output().expect("wait for the child")
    }
}

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("child")
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("child")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The lines of a child's pipe, read by a thread, each with the time it came.
pub struct LineFeed {
    rx: mpsc::Receiver<(Instant, String)>,
    /// Every line received so far (for failure messages).
    pub seen: Vec<String>,
}

impl LineFeed {
    pub fn new(pipe: impl Read + Send + 'static) -> LineFeed {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        LineFeed {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next line containing `needle` (and when it came); panics, showing
    /// what came, when none does within `within` or the pipe closes.
    pub fn wait_for(&mut self, needle: &str, within: Duration) -> (Instant, String) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((at, line)) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return (at, line);
                    }
                }
                Err(e) => panic!(
                    "no line with {needle:?} within {within:?} ({e}); got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// Poll `probe` until it yields a value; panics with `what` and the last
/// observation after `within` (a bound that only catches a hang).
pub fn wait_until<T, O: std::fmt::Debug>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Result<T, O>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; last seen: {last:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until process `pid` has exited: gone from /proc, or a zombie (its
/// files, sockets and ports are released by then). A SIGKILLed process
/// takes a moment to get there.
pub fn wait_dead(pid: i64, within: Duration) {
    wait_until(
        &format!("process {pid} exits"),
        within,
        || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => Ok(()),
            Ok(stat) if stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z')) => Ok(()),
            Ok(stat) => Err(stat),
        },
    )
}
