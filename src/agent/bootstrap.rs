//! The agent's bootstrap handling: a request published by the host on
//! `vm:<name>` starts one thread that runs it (`bootstrap::runner`) and
//! publishes its reports on `castra.bootstrap` through a bus session of its
//! own (reconnecting once per report, harder for the final one), so the
//! agent's main session keeps heartbeating whatever the script does.
//! Only requests from the host are run, each run id once.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::bus::BusClient;
use super::client::Target;
use crate::bootstrap::runner::{self, Limits};
use crate::bootstrap::wire::{self, Report, Request, RunStatus};
use crate::broker::wire::frame::{AckKind, AckStatus, BrokerFrame, ClientFrame};

/// Run ids remembered (a resent request is not run twice).
const REMEMBERED: usize = 64;
/// How long a report waits for its durable ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(15);

/// Shared across the agent's sessions.
#[derive(Clone, Default)]
pub struct Bootstraps {
    seen: Arc<Mutex<VecDeque<String>>>,
}

impl Bootstraps {
    /// Handle one delivered message; true when it was a bootstrap request.
    pub fn handle(&self, target: &Target, topic: &str, from: &str, payload: &Value) -> bool {
        if from != "host" || topic != format!("vm:{}", target.hello.vm) {
            return false;
        }
        let Some(req) = wire::parse_request(payload) else {
            return false;
        };
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.contains(&req.run) {
                eprintln!(
                    "castra-agent: bootstrap {} already taken (resend ignored)",
                    req.run
                );
                return true;
            }
            if seen.len() >= REMEMBERED {
                seen.pop_front();
            }
            seen.push_back(req.run.clone());
        }
        let target = target.clone();
        std::thread::spawn(move || run(target, req));
        true
    }
}

fn run(target: Target, req: Request) {
    eprintln!(
        "castra-agent: bootstrap {} ({}) starting",
        req.run, req.kind
    );
    let mut out = Outbox {
        target: target.clone(),
        client: None,
    };
    let (env, secrets) = match open_env(&target, &req) {
        Ok(opened) => opened,
        Err(why) => {
            let _ = out.finish(Report::Finished {
                run: req.run.clone(),
                status: RunStatus::Failed,
                exit_code: None,
                truncated: false,
                output_bytes: 0,
                elapsed_ms: 0,
                error: Some(why),
            });
            return;
        }
    };
    let limits = Limits {
        idle_interval: target.heartbeat_interval,
        ..Limits::default()
    };
    // One outbox for reports and heartbeats; both closures borrow it through a cell.
    let cell = std::cell::RefCell::new(&mut out);
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    runner::run(
        &req,
        &env,
        &secrets,
        &limits,
        &mut |report| {
            let mut out = cell.borrow_mut();
            match &report {
                Report::Finished { status, error, .. } => {
                    eprintln!(
                        "castra-agent: bootstrap {} finished: {:?}{}",
                        req.run,
                        status,
                        error
                            .as_deref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    );
                    out.finish(report)
                }
                _ => out.publish(&wire::payload(&report)),
            }
        },
        &mut || cell.borrow_mut().heartbeat(),
    );
}

/// The environment with secrets opened, and the secret values (to mask).
fn open_env(
    target: &Target,
    req: &Request,
) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
    let mut env = req.env.clone();
    let mut secrets = Vec::new();
    if req.sealed_env.is_empty() {
        return Ok((env, secrets));
    }
    let token = target
        .hello
        .token
        .as_deref()
        .ok_or("secret env values arrived but the agent has no token to open them")?;
    for (k, sealed) in &req.sealed_env {
        let v = wire::open(token, &req.run, k, sealed)
            .ok_or_else(|| format!("cannot open the secret value of {k}"))?;
        if !v.is_empty() {
            secrets.push(v.clone());
        }
        env.insert(k.clone(), v);
    }
    secrets.sort_by_key(|v| std::cmp::Reverse(v.len()));
    Ok((env, secrets))
}

/// A bus session for reports, opened on first use and reopened after a failure.
struct Outbox {
    target: Target,
    client: Option<BusClient>,
}

impl Outbox {
    fn client(&mut self) -> io::Result<&mut BusClient> {
        if self.client.is_none() {
            let c = BusClient::connect(&self.target)
                .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e))?;
            self.client = Some(c);
        }
        self.client
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no session"))
    }

    fn try_publish(&mut self, payload: &Value) -> io::Result<()> {
        let c = self.client()?;
        c.send(&ClientFrame::Publish {
            topic: wire::TOPIC.to_owned(),
            payload: payload.clone(),
            id: None,
        })?;
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match c.next(left)? {
                None => return Err(io::Error::new(io::ErrorKind::TimedOut, "no publish ack")),
                Some(BrokerFrame::Ack {
                    ack: AckKind::Publish,
                    status,
                    ..
                }) => {
                    return match status {
                        AckStatus::Ok => Ok(()),
                        AckStatus::Error => Err(io::Error::other("publish refused")),
                    };
                }
                Some(BrokerFrame::Bye { reason }) => {
                    return Err(io::Error::other(format!("bye {reason}")));
                }
                Some(_) => {}
            }
        }
    }

    /// Publish, reconnecting once on failure.
    fn publish(&mut self, payload: &Value) -> io::Result<()> {
        match self.try_publish(payload) {
            Ok(()) => Ok(()),
            Err(_) => {
                self.client = None;
                self.try_publish(payload)
                    .inspect_err(|_| self.client = None)
            }
        }
    }

    /// The final report: retried for about a minute (the host waits for it).
    fn finish(&mut self, report: Report) -> io::Result<()> {
        let payload = wire::payload(&report);
        let mut last = Ok(());
        for _ in 0..20 {
            last = self.publish(&payload);
            if last.is_ok() {
                return last;
            }
            std::thread::sleep(Duration::from_secs(3));
        }
        eprintln!("castra-agent: could not report the end of a bootstrap: {last:?}");
        last
    }

    fn heartbeat(&mut self) -> io::Result<()> {
        let r = self.client().and_then(|c| c.send(&ClientFrame::Heartbeat));
        if r.is_err() {
            self.client = None;
        }
        r
    }
}
