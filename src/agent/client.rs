//! One connection of the guest agent, synchronous (std only): connect, read
//! the greeting, send the hello, announce itself on [`AGENT_TOPIC`], subscribe
//! to its own `vm:<name>` topic and `broadcast` (each delivered message is
//! printed on the guest console, handed to `on_message` and acked), then keep
//! the session alive with heartbeats until it ends. Uses the broker's own wire code (hello lines,
//! line reader, frames). Reconnecting is the caller's job.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::broker::frame_reader::FrameReader;
use crate::broker::wire::frame::{self, AckKind, BrokerFrame, ClientFrame};
use crate::broker::wire::hello::{GREETING_PREFIX, Hello, MAX_HELLO_LINE, Reply};
use crate::broker::wire::line::{LinePush, LineReader};
use crate::broker::wire::reason::Reason;

/// The topic the agent announces each new session on.
pub const AGENT_TOPIC: &str = "castra.agent";

/// How the agent reaches the broker.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub hello: Hello,
    pub heartbeat_interval: Duration,
    pub connect_timeout: Duration,
}

/// Why a connection ended.
#[derive(Debug)]
pub enum Ended {
    /// TCP connect or the greeting failed: the broker is not there.
    Unreachable(String),
    /// The broker refused the hello.
    Refused(Reason),
    /// A session was open, then ended (bye reason, or what failed).
    Lost { session: String, why: String },
}

/// Connect and run one session; `on_open` is called with the session id
/// once the broker grants it. Returns when the connection is over.
/// `on_message(topic, from, payload)` sees every delivered message.
pub fn run_once(
    target: &Target,
    on_open: &mut dyn FnMut(&str),
    on_message: &mut dyn FnMut(&str, &str, &serde_json::Value),
    on_stream: &mut dyn FnMut(&str),
) -> Ended {
    let (mut stream, session, rest) = match handshake(target) {
        Ok(open) => open,
        Err(ended) => return ended,
    };
    on_open(&session);
    let vm = target.hello.vm.clone();
    let opening = [
        ClientFrame::Subscribe {
            topic: format!("vm:{vm}"),
        },
        ClientFrame::Subscribe {
            topic: "broadcast".into(),
        },
        ClientFrame::Publish {
            topic: AGENT_TOPIC.into(),
            payload: serde_json::json!({ "event": "connected", "vm": vm, "session": session }),
            id: None,
        },
    ];
    for f in &opening {
        if let Err(e) = stream.write_all(&frame::encode(f)) {
            return Ended::Lost {
                session,
                why: e.to_string(),
            };
        }
    }
    let why = match heartbeat_loop(
        &mut stream,
        target.heartbeat_interval,
        &rest,
        on_message,
        on_stream,
    ) {
        Ok(reason) => format!("bye {reason}"),
        Err(e) => e.to_string(),
    };
    Ended::Lost { session, why }
}

/// Connect, read the greeting, send the hello: the open stream, the session
/// id, and the bytes that followed the reply (the first frames, if any).
pub fn handshake(target: &Target) -> Result<(TcpStream, String, Vec<u8>), Ended> {
    let mut stream = match TcpStream::connect_timeout(&target.addr, target.connect_timeout) {
        Ok(s) => s,
        Err(e) => return Err(Ended::Unreachable(format!("connect {}: {e}", target.addr))),
    };
    let _ = stream.set_nodelay(true);
    let step_timeout = target.connect_timeout.max(Duration::from_secs(1));
    if let Err(e) = stream.set_read_timeout(Some(step_timeout)) {
        return Err(Ended::Unreachable(e.to_string()));
    }
    let greeting = match read_line(&mut stream) {
        Ok((line, _)) => line,
        Err(e) => return Err(Ended::Unreachable(format!("no greeting: {e}"))),
    };
    if !greeting.starts_with(GREETING_PREFIX.as_bytes()) {
        return Err(Ended::Unreachable(
            "not a castra broker (unexpected greeting)".into(),
        ));
    }
    let mut hello = target.hello.clone();
    if !hello.boot.is_empty() {
        hello
            .boot
            .push(("hello".to_owned(), super::timeline::uptime_ms()));
    }
    let hello = format!("{}\n", hello.to_line());
    if let Err(e) = stream.write_all(hello.as_bytes()) {
        return Err(Ended::Unreachable(format!("sending hello: {e}")));
    }
    let (reply, rest) = match read_line(&mut stream) {
        Ok(r) => r,
        Err(e) => return Err(Ended::Unreachable(format!("no reply to hello: {e}"))),
    };
    match Reply::parse(&String::from_utf8_lossy(&reply)) {
        Some(Reply::Session(id)) => Ok((stream, id, rest)),
        Some(Reply::Error(reason)) => Err(Ended::Refused(reason)),
        Some(Reply::Ok) => Err(Ended::Lost {
            session: String::new(),
            why: "broker granted a handshake only (no bus-v1?)".into(),
        }),
        None => Err(Ended::Unreachable("unintelligible reply to hello".into())),
    }
}

/// A payload for the console: bootstrap requests are long and may carry
/// sealed secrets, so only their run id is shown.
fn shown(payload: &serde_json::Value) -> String {
    match crate::bootstrap::wire::parse_request(payload) {
        Some(req) => format!("{{\"bootstrap\":{{\"run\":\"{}\",..}}}}", req.run),
        None => payload.to_string(),
    }
}

/// Read one line (bounded); returns it and the bytes after it.
pub(crate) fn read_line(stream: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut reader = LineReader::new(MAX_HELLO_LINE);
    let mut buf = [0u8; MAX_HELLO_LINE];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        match reader.push(&buf[..n]) {
            LinePush::NeedMore => {}
            LinePush::Line { line, rest } => return Ok((line, rest)),
            LinePush::TooLong => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
        }
    }
}

/// Heartbeat every `interval`; returns the broker's bye reason, or the error
/// that ended the session (EOF, no ack for 3 intervals, bad frame).
fn heartbeat_loop(
    stream: &mut TcpStream,
    interval: Duration,
    first: &[u8],
    on_message: &mut dyn FnMut(&str, &str, &serde_json::Value),
    on_stream: &mut dyn FnMut(&str),
) -> io::Result<Reason> {
    let heartbeat = frame::encode(&ClientFrame::Heartbeat);
    let mut frames = FrameReader::new(first.to_vec());
    let mut last_ack = Instant::now();
    stream.write_all(&heartbeat)?;
    let mut next = Instant::now() + interval;
    loop {
        let until_beat = next.saturating_duration_since(Instant::now());
        match frames.next(stream, until_beat)? {
            Some(BrokerFrame::Ack {
                ack: AckKind::Heartbeat,
                ..
            }) => last_ack = Instant::now(),
            Some(BrokerFrame::Bye { reason }) => return Ok(reason),
            Some(BrokerFrame::Message {
                seq,
                topic,
                from,
                payload,
                ..
            }) => {
                eprintln!(
                    "castra-agent: message seq={seq} topic={topic} from={from} payload={}",
                    shown(&payload)
                );
                on_message(&topic, &from, &payload);
                stream.write_all(&frame::encode(&ClientFrame::Ack { seq }))?;
            }
            // The broker asks for a stream (exec, shell, cp): it alone can,
            // on this authenticated session.
            Some(BrokerFrame::StreamOpen { stream: id }) => on_stream(&id),
            // Other acks, errors (a bye follows): skip.
            Some(BrokerFrame::Ack { .. }) | Some(BrokerFrame::Error { .. }) | None => {}
        }
        let now = Instant::now();
        if now >= next {
            if now.duration_since(last_ack) > 3 * interval {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no heartbeat ack for 3 intervals",
                ));
            }
            stream.write_all(&heartbeat)?;
            next += interval;
            if next < now {
                next = now + interval;
            }
        }
    }
}
