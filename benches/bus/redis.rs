//! The Redis peer (the durable baseline): `redis-server` with
//! `--appendonly yes --appendfsync always`, and a RESP client. A publish is
//! `XADD` (acked after the AOF fsync); a subscriber reads its stream from the
//! start with `XREAD BLOCK 0`, one entry at a time.

use std::io;

use crate::conn::Conn;
use crate::server::Server;
use crate::{Peer, Publisher, Subscriber};

pub struct Redis(Server);

impl Redis {
    pub fn start() -> Option<Redis> {
        let s = Server::spawn(
            "redis-server",
            |port, dir| {
                Ok([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    &dir.display().to_string(),
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                    "--protected-mode",
                    "no",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect())
            },
            None,
        )?;
        Some(Redis(s))
    }

    fn conn(&self, topic: &str) -> io::Result<RedisConn> {
        Ok(RedisConn {
            c: Conn::open(self.0.port)?,
            // Each stream is new: read it from its start.
            last_id: b"0".to_vec(),
            topic: topic.to_owned(),
        })
    }
}

/// A RESP reply (simple strings and integers are read and ignored).
enum Resp {
    Simple,
    Int,
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

fn resp_read(c: &mut Conn) -> io::Result<Resp> {
    let line = c.line()?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1.min(line.len()));
    let n = || rest.parse::<i64>().map_err(io::Error::other);
    Ok(match kind {
        "+" => Resp::Simple,
        "-" => return Err(io::Error::other(format!("redis: {rest}"))),
        ":" => {
            n()?;
            Resp::Int
        }
        "$" => match n()? {
            -1 => Resp::Bulk(None),
            len => {
                let v = c.exact(len as usize + 2)?;
                Resp::Bulk(Some(v[..len as usize].to_vec()))
            }
        },
        "*" => match n()? {
            -1 => Resp::Array(None),
            len => Resp::Array(Some(
                (0..len).map(|_| resp_read(c)).collect::<io::Result<_>>()?,
            )),
        },
        _ => return Err(io::Error::other(format!("redis: bad reply {line:?}"))),
    })
}

struct RedisConn {
    c: Conn,
    last_id: Vec<u8>,
    topic: String,
}

impl RedisConn {
    fn cmd(&mut self, args: &[&[u8]]) -> io::Result<Resp> {
        self.send_cmd(args)?;
        resp_read(&mut self.c)
    }

    fn send_cmd(&mut self, args: &[&[u8]]) -> io::Result<()> {
        let mut b = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            b.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            b.extend_from_slice(a);
            b.extend_from_slice(b"\r\n");
        }
        self.c.send(&b)
    }
}

impl Publisher for RedisConn {
    fn send(&mut self, topic: &str, payload: &[u8]) -> io::Result<()> {
        self.send_cmd(&[b"XADD", topic.as_bytes(), b"*", b"p", payload])
    }

    fn acked(&mut self) -> io::Result<()> {
        resp_read(&mut self.c).map(drop)
    }
}

impl Subscriber for RedisConn {
    fn next(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let topic = self.topic.clone();
            let last = self.last_id.clone();
            let reply = self.cmd(&[
                b"XREAD",
                b"COUNT",
                b"1",
                b"BLOCK",
                b"0",
                b"STREAMS",
                topic.as_bytes(),
                &last,
            ])?;
            // [[topic, [[id, [field, value]]]]]
            if let Resp::Array(Some(streams)) = reply
                && let Some(Resp::Array(Some(s))) = streams.into_iter().next()
                && let Some(Resp::Array(Some(entries))) = s.into_iter().nth(1)
                && let Some(Resp::Array(Some(entry))) = entries.into_iter().next()
            {
                let mut it = entry.into_iter();
                if let (Some(Resp::Bulk(Some(id))), Some(Resp::Array(Some(fields)))) =
                    (it.next(), it.next())
                {
                    self.last_id = id;
                    if let Some(Resp::Bulk(Some(v))) = fields.into_iter().nth(1) {
                        return Ok(v);
                    }
                }
            }
        }
    }
}

impl Peer for Redis {
    fn server(&self) -> &Server {
        &self.0
    }
    fn publisher(&self, _: usize) -> io::Result<Box<dyn Publisher>> {
        Ok(Box::new(self.conn("")?))
    }
    fn subscriber(&self, topic: &str) -> io::Result<Box<dyn Subscriber>> {
        Ok(Box::new(self.conn(topic)?))
    }
}
