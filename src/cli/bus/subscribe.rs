//! `castra bus subscribe`: a host consumer. Opens a bus session on the
//! broker's Unix socket (the same protocol a guest speaks), subscribes,
//! prints each delivered message as one line (or one JSON object) and acks
//! it (`broker::consumer`, shared with `castra-agent subscribe`), and
//! heartbeats while idle. Ends with 0 after `-n COUNT` messages, on
//! SIGINT/SIGTERM, or when stdout is closed; with 1 when the broker is not
//! running or ends the session (its reason and what to do are printed).

use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

use crate::broker::consumer::{Format, print_message};
use crate::broker::host_client::{HostSession, SessionError};
use crate::broker::session::HEARTBEAT_INTERVAL_MS;
use crate::broker::wire::frame::ClientFrame;
use crate::layout::StateLayout;

pub const AFTER_HELP: &str = "\
Examples:
  castra bus subscribe --topic jobs                  print every message on jobs as it arrives
  castra bus subscribe --topic vm:web --json -n 1    wait for one message to web, as JSON

Lines: <utc> #<seq> <from> <topic> <payload> (from is vm:<name> or host); --json prints
each `message` frame: {\"type\":\"message\",\"seq\",\"topic\",\"from\",\"ts_ms\",\"payload\"}.
Only messages published while subscribed arrive (older ones: `castra bus tail`). Each is
acked once printed; a consumer that stops reading or acking is cut off as a slow consumer
like a guest (docs/BUS.md, back-pressure). Exit 0 after COUNT messages, on Ctrl-C or when
stdout closes; 1 when the broker is not running or ends the session.";

#[derive(clap::Args, Debug)]
pub struct SubscribeArgs {
    /// Topic to receive (repeat for several): `broadcast`, `vm:<name>` (any VM's) or any name.
    #[arg(long, required = true, value_name = "TOPIC")]
    topic: Vec<String>,
    /// Print each message frame as one JSON object a line.
    #[arg(long)]
    json: bool,
    /// Exit 0 after COUNT messages.
    #[arg(short = 'n', long, value_name = "COUNT")]
    count: Option<u64>,
}

pub fn run(args: &SubscribeArgs, layout: &StateLayout) -> Result<ExitCode> {
    // Block SIGINT/SIGTERM before any thread starts; one thread waits for them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)?;

    let mut session = HostSession::open(&layout.broker_socket())?;
    let stopped = Arc::new(AtomicBool::new(false));
    let stream = session.try_clone_stream()?;
    let flag = stopped.clone();
    std::thread::Builder::new()
        .name("castra-signals".into())
        .spawn(move || {
            if signals.wait().is_ok() {
                flag.store(true, Ordering::SeqCst);
                // Wakes the reader: the session ends, its subscriptions with it.
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        })?;
    let ended = |e: SessionError| -> Result<ExitCode> {
        if stopped.load(Ordering::SeqCst) {
            Ok(ExitCode::SUCCESS)
        } else {
            Err(e.into())
        }
    };

    if let Err(e) = session.subscribe(&args.topic) {
        return ended(e);
    }
    eprintln!(
        "castra: subscribed to {} (session {})",
        args.topic.join(", "),
        session.session
    );
    let format = if args.json {
        Format::Json
    } else {
        Format::Line
    };
    let interval = Duration::from_millis(HEARTBEAT_INTERVAL_MS);
    let mut last_sent = Instant::now();
    let mut received = 0u64;
    let mut out = io::stdout().lock();
    loop {
        if args.count.is_some_and(|n| received >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        let wait = (last_sent + interval).saturating_duration_since(Instant::now());
        let frame = match session.next(wait) {
            Ok(f) => f,
            Err(e) => return ended(e),
        };
        let sent = match frame {
            None => session.send(&ClientFrame::Heartbeat),
            Some(frame) => match print_message(&frame, format, &mut out) {
                Ok(Some(ack)) => {
                    received += 1;
                    session.send(&ack)
                }
                // Heartbeat acks, errors (a bye follows): nothing to do.
                Ok(None) => continue,
                // A closed stdout (`| head`) ends the command in `main`, quietly.
                Err(e) => return Err(e.into()),
            },
        };
        match sent {
            Ok(()) => last_sent = Instant::now(),
            Err(e) => return ended(e),
        }
    }
}
