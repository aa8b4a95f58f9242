//! The mosquitto peer (non-durable): `/usr/sbin/mosquitto` with persistence
//! off, and an MQTT 3.1.1 client. A publish is QoS 1 and returns on its
//! PUBACK; a subscriber subscribes at QoS 1 and PUBACKs what it takes.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::conn::Conn;
use crate::server::Server;
use crate::{Peer, Publisher, Subscriber};

pub struct Mosquitto(Server);

impl Mosquitto {
    pub fn start() -> Option<Mosquitto> {
        let s = Server::spawn(
            "/usr/sbin/mosquitto",
            |port, dir| {
                let conf = dir.join("m.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 0\nmax_queued_messages 100000\n"
                    ),
                )?;
                Ok(vec!["-c".into(), conf.display().to_string()])
            },
            None,
        )?;
        Some(Mosquitto(s))
    }
}

/// Client ids, unique across the run.
static CLIENT: AtomicU64 = AtomicU64::new(0);

impl Peer for Mosquitto {
    fn server(&self) -> &Server {
        &self.0
    }
    fn publisher(&self, _: usize) -> io::Result<Box<dyn Publisher>> {
        let n = CLIENT.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(MqttConn::open(self.0.port, &format!("pub{n}"))?))
    }
    fn subscriber(&self, topic: &str) -> io::Result<Box<dyn Subscriber>> {
        let n = CLIENT.fetch_add(1, Ordering::Relaxed);
        let mut c = MqttConn::open(self.0.port, &format!("sub{n}"))?;
        let id = c.id();
        let mut body = id.to_be_bytes().to_vec();
        body.extend(mqtt_str(topic.as_bytes()));
        body.push(1);
        c.c.send(&mqtt_packet(0x82, &body))?;
        let (kind, _) = c.read()?;
        if kind >> 4 != 9 {
            return Err(io::Error::other("mqtt subscribe failed"));
        }
        Ok(Box::new(c))
    }
}

fn mqtt_packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn mqtt_str(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

struct MqttConn {
    c: Conn,
    next_id: u16,
}

impl MqttConn {
    fn open(port: u16, client: &str) -> io::Result<MqttConn> {
        let mut c = Conn::open(port)?;
        let mut body = mqtt_str(b"MQTT");
        body.extend_from_slice(&[4, 0x02, 0, 60]);
        body.extend(mqtt_str(client.as_bytes()));
        c.send(&mqtt_packet(0x10, &body))?;
        let mut c = MqttConn { c, next_id: 1 };
        let (kind, ack) = c.read()?;
        if kind >> 4 != 2 || ack.get(1) != Some(&0) {
            return Err(io::Error::other("mqtt connect refused"));
        }
        Ok(c)
    }

    /// One packet: its fixed-header first byte and its body.
    fn read(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let h = self.c.byte()?;
        let (mut len, mut mul) = (0usize, 1usize);
        loop {
            let b = self.c.byte()?;
            len += (b & 0x7f) as usize * mul;
            mul *= 128;
            if b & 0x80 == 0 {
                break;
            }
        }
        Ok((h, self.c.exact(len)?))
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }
}

impl Publisher for MqttConn {
    fn send(&mut self, topic: &str, payload: &[u8]) -> io::Result<()> {
        let id = self.id();
        let mut body = mqtt_str(topic.as_bytes());
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(payload);
        self.c.send(&mqtt_packet(0x32, &body))
    }

    /// The next PUBACK (the broker acks in order, so any id will do).
    fn acked(&mut self) -> io::Result<()> {
        loop {
            let (kind, _) = self.read()?;
            if kind >> 4 == 4 {
                return Ok(());
            }
        }
    }
}

impl Subscriber for MqttConn {
    fn next(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let (kind, b) = self.read()?;
            if kind >> 4 != 3 {
                continue;
            }
            let tlen = u16::from_be_bytes([b[0], b[1]]) as usize;
            let mut at = 2 + tlen;
            if (kind >> 1) & 3 > 0 {
                let id = [b[at], b[at + 1]];
                at += 2;
                self.c.send(&[0x40, 2, id[0], id[1]])?;
            }
            return Ok(b[at..].to_vec());
        }
    }
}
