//! `castra-agent publish` and `castra-agent subscribe`: one-shot bus
//! clients for shell scripts in the guest. Each opens its own bus session
//! (a VM may hold several) with the agent's identity and token. Publish
//! waits for the durable ack and prints the seq; subscribe prints every
//! delivered message as one JSON line and acknowledges it (the broker's
//! `consumer.rs`, shared with the host's `castra bus subscribe`),
//! heartbeats, and exits non-zero when the session ends (a script loops to
//! reconnect).

use std::io::{self, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{Ended, Target, handshake};
use crate::broker::consumer::{Format, print_message};
use crate::broker::frame_reader::FrameReader;
use crate::broker::wire::frame::{self, AckKind, AckStatus, BrokerFrame, ClientFrame};

/// How long publish waits for its ack.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// An open bus session (blocking).
pub struct BusClient {
    stream: TcpStream,
    frames: FrameReader,
    pub session: String,
}

fn ended(e: Ended) -> String {
    match e {
        Ended::Unreachable(why) => format!("broker unreachable: {why}"),
        Ended::Refused(reason) => format!("handshake refused: {reason}"),
        Ended::Lost { why, .. } => why,
    }
}

impl BusClient {
    pub fn connect(target: &Target) -> Result<BusClient, String> {
        let (stream, session, rest) = handshake(target).map_err(ended)?;
        Ok(BusClient {
            stream,
            frames: FrameReader::new(rest),
            session,
        })
    }

    pub fn send(&mut self, f: &ClientFrame) -> io::Result<()> {
        self.stream.write_all(&frame::encode(f))
    }

    /// The next broker frame, or `None` when `timeout` passed first. Frame
    /// types this build does not know are skipped.
    pub fn next(&mut self, timeout: Duration) -> io::Result<Option<BrokerFrame>> {
        self.frames.next(&mut self.stream, timeout)
    }
}

/// Publish one message and wait for its durable ack; returns the seq.
pub fn publish(target: &Target, topic: &str, payload: Value) -> Result<u64, String> {
    let mut c = BusClient::connect(target)?;
    c.send(&ClientFrame::Publish {
        topic: topic.to_owned(),
        payload,
        id: None,
    })
    .map_err(|e| format!("sending the publish: {e}"))?;
    let deadline = Instant::now() + PUBLISH_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c
            .next(left)
            .map_err(|e| format!("waiting for the ack: {e}"))?
        {
            None => return Err("no ack within 30 s (not published for sure)".into()),
            Some(BrokerFrame::Ack {
                ack: AckKind::Publish,
                status,
                seq,
                reason,
                ..
            }) => {
                return match (status, seq) {
                    (AckStatus::Ok, Some(seq)) => Ok(seq),
                    _ => Err(format!(
                        "the broker refused the publish: {}",
                        reason.map_or("unknown".into(), |r| r.to_string())
                    )),
                };
            }
            Some(BrokerFrame::Bye { reason }) => {
                return Err(format!("the broker closed the session: {reason}"));
            }
            Some(_) => {}
        }
    }
}

/// Subscribe to `topics` and print each message as one JSON line until the
/// session ends (returns why).
pub fn subscribe(target: &Target, topics: &[String], out: &mut dyn Write) -> Result<(), String> {
    let mut c = BusClient::connect(target)?;
    for topic in topics {
        c.send(&ClientFrame::Subscribe {
            topic: topic.clone(),
        })
        .map_err(|e| format!("subscribing: {e}"))?;
    }
    let interval = target.heartbeat_interval;
    let mut next_beat = Instant::now() + interval;
    let mut acked = 0;
    loop {
        let left = next_beat.saturating_duration_since(Instant::now());
        match c.next(left).map_err(|e| e.to_string())? {
            None => {
                c.send(&ClientFrame::Heartbeat).map_err(|e| e.to_string())?;
                next_beat = Instant::now() + interval;
            }
            Some(BrokerFrame::Ack {
                ack: AckKind::Subscribe,
                status: AckStatus::Error,
                reason,
                ..
            }) => {
                return Err(format!(
                    "subscribe refused: {}",
                    reason.map_or("unknown".into(), |r| r.to_string())
                ));
            }
            Some(BrokerFrame::Ack {
                ack: AckKind::Subscribe,
                ..
            }) => {
                acked += 1;
                if acked == topics.len() {
                    eprintln!(
                        "castra-agent: subscribed session={} topics={}",
                        c.session,
                        topics.join(",")
                    );
                }
            }
            Some(BrokerFrame::Bye { reason }) => {
                return Err(format!("the broker closed the session: {reason}"));
            }
            // Messages; heartbeat acks and errors print nothing.
            Some(f) => {
                let ack = print_message(&f, Format::Json, out)
                    .map_err(|e| format!("writing to stdout: {e}"))?;
                if let Some(ack) = ack {
                    c.send(&ack).map_err(|e| e.to_string())?;
                }
            }
        }
    }
}
