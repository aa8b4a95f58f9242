//! The castra peer: the release build of the real `castra broker` on a temp
//! state root with 65 guest tokens (`p0`..`p64`), and a guest session client
//! (hello line, then length-prefixed JSON frames of bus protocol v1). A
//! publish is acked by an `ack` frame, in order; a subscriber acks each
//! message it takes.

use std::io;

use crate::conn::Conn;
use crate::server::Server;
use crate::{Peer, Publisher, Subscriber};

pub struct Castra(Server);

impl Castra {
    pub fn start() -> Option<Castra> {
        // CASTRA_BENCH_BIN: another castra build (e.g. the last commit's) to
        // measure in place of this one, against the same peers.
        let bin = std::env::var("CASTRA_BENCH_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_castra").to_owned());
        let s = Server::spawn(
            &bin,
            |port, dir| {
                for i in 0..65 {
                    let d = dir.join("vms").join(format!("p{i}"));
                    std::fs::create_dir_all(&d)?;
                    std::fs::write(d.join("token"), format!("tok-p{i}\n"))?;
                }
                std::fs::create_dir_all(dir.join("broker"))?;
                Ok(vec![
                    "broker".into(),
                    "--state-root".into(),
                    dir.display().to_string(),
                    "--port".into(),
                    port.to_string(),
                ])
            },
            Some("broker/broker.log"),
        )?;
        Some(Castra(s))
    }
}

struct CastraConn(Conn);

impl CastraConn {
    fn open(port: u16, vm: &str) -> io::Result<CastraConn> {
        let mut c = Conn::open(port)?;
        c.line()?;
        c.send(format!("hello vm:{vm} capabilities=bus-v1 token=tok-{vm}\n").as_bytes())?;
        let line = c.line()?;
        if !line.starts_with("ok session=") {
            return Err(io::Error::other(format!("castra hello: {line}")));
        }
        Ok(CastraConn(c))
    }

    fn send(&mut self, v: &serde_json::Value) -> io::Result<()> {
        let body = serde_json::to_vec(v)?;
        let mut b = (body.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(&body);
        self.0.send(&b)
    }

    fn frame_bytes(&mut self) -> io::Result<Vec<u8>> {
        let len = self.0.exact(4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        self.0.exact(len)
    }

    fn frame(&mut self) -> io::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.frame_bytes()?)?)
    }
}

/// A publish frame, serialized without building a JSON tree (as a lean
/// client would; the Redis client formats its command the same way).
#[derive(serde::Serialize)]
struct PublishFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    topic: &'a str,
    payload: &'a str,
}

/// The fields of a broker frame a publisher looks at.
#[derive(serde::Deserialize)]
struct AckFields<'a> {
    #[serde(borrow, default)]
    ack: Option<&'a str>,
    #[serde(borrow, default)]
    status: Option<&'a str>,
}

impl Publisher for CastraConn {
    fn send(&mut self, topic: &str, payload: &[u8]) -> io::Result<()> {
        let text = String::from_utf8_lossy(payload);
        let body = serde_json::to_vec(&PublishFrame {
            kind: "publish",
            topic,
            payload: &text,
        })?;
        let mut b = (body.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(&body);
        self.0.send(&b)
    }

    fn acked(&mut self) -> io::Result<()> {
        loop {
            let bytes = self.frame_bytes()?;
            let f: AckFields = serde_json::from_slice(&bytes)?;
            if f.ack == Some("publish") {
                return if f.status == Some("ok") {
                    Ok(())
                } else {
                    Err(io::Error::other(
                        String::from_utf8_lossy(&bytes).into_owned(),
                    ))
                };
            }
        }
    }
}

impl Subscriber for CastraConn {
    fn next(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let f = self.frame()?;
            if f["type"] == "message" {
                // Ack each message: the broker pauses a session's delivery
                // once its unacked window is full.
                self.send(&serde_json::json!({"type": "ack", "seq": f["seq"]}))?;
                return Ok(f["payload"]
                    .as_str()
                    .unwrap_or_default()
                    .as_bytes()
                    .to_vec());
            }
        }
    }
}

impl Peer for Castra {
    fn server(&self) -> &Server {
        &self.0
    }
    fn publisher(&self, i: usize) -> io::Result<Box<dyn Publisher>> {
        Ok(Box::new(CastraConn::open(self.0.port, &format!("p{i}"))?))
    }
    fn subscriber(&self, topic: &str) -> io::Result<Box<dyn Subscriber>> {
        let mut c = CastraConn::open(self.0.port, "p64")?;
        c.send(&serde_json::json!({"type": "subscribe", "topic": topic}))?;
        let ack = c.frame()?;
        if ack["status"] != "ok" {
            return Err(io::Error::other(ack.to_string()));
        }
        Ok(Box::new(c))
    }
}
