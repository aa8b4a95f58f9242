//! Benchmark (run on demand, never in CI: `cargo bench --bench bus`): the
//! bus against its peers, side by side in one run, on loopback.
//!
//! - durable publish->ack throughput: the release build of the real
//!   `castra broker` (guest sessions over TCP, one publish in flight per
//!   publisher, acked after fdatasync) against Redis 7 from Debian with
//!   `--appendonly yes --appendfsync always` (`XADD`, acked after the AOF
//!   fsync: the durable peer and the baseline), and, labelled non-durable,
//!   mosquitto QoS1 (PUBACK, persistence off) and NATS core (`verbose` +OK);
//!   1, 8 and 64 publishers, 64 B and 1 KiB payloads;
//! - publish->deliver latency p50/p99 at a nominal 200 msg/s, one publisher
//!   and one subscriber, same peers (Redis: `XREAD BLOCK`);
//! - the in-process hub fanning out to 4 subscriber queues, against plain
//!   `try_send` to 4 queues as the baseline.
//!
//! A peer whose server is not installed prints `n/a`. Clients are minimal
//! hand-written protocol clients (std only), the same for every peer.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use castra::broker::hub::{Delivery, Frame, Hub, HubConfig, HubMsg};
use castra::broker::reason::Reason;

const WARMUP: Duration = Duration::from_millis(300);
const MEASURE: Duration = Duration::from_secs(2);
const PUBLISHERS: [usize; 3] = [1, 8, 64];
const PAYLOADS: [usize; 2] = [64, 1024];
const LAT_RATE: u64 = 200;
const LAT_SAMPLES: usize = 400;

/// One connection that publishes and returns once the peer acknowledged.
trait Publisher: Send {
    fn publish(&mut self, topic: &str, payload: &[u8]) -> io::Result<()>;
}

/// One connection subscribed to a topic; returns each payload delivered.
trait Subscriber: Send {
    fn next(&mut self) -> io::Result<Vec<u8>>;
}

/// A running peer server.
trait Peer {
    fn publisher(&self, i: usize) -> io::Result<Box<dyn Publisher>>;
    fn subscriber(&self, topic: &str) -> io::Result<Box<dyn Subscriber>>;
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(17999)
}

fn connect(port: u16) -> io::Result<(TcpStream, BufReader<TcpStream>)> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    // A lost ack or delivery fails its cell instead of hanging the run.
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let r = BufReader::new(s.try_clone()?);
    Ok((s, r))
}

fn wait_port(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

fn read_exact_vec(r: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0; n];
    r.read_exact(&mut v)?;
    Ok(v)
}

// ---------------------------------------------------------------- castra

struct Castra {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Castra {
    fn start() -> Option<Castra> {
        let dir = tempfile::Builder::new()
            .prefix("cbb")
            .tempdir_in("/tmp")
            .ok()?;
        for i in 0..65 {
            let d = dir.path().join("vms").join(format!("p{i}"));
            std::fs::create_dir_all(&d).ok()?;
            std::fs::write(d.join("token"), format!("tok-p{i}\n")).ok()?;
        }
        std::fs::create_dir_all(dir.path().join("broker")).ok()?;
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("broker/broker.log")).ok()?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_castra"))
            .arg("broker")
            .arg("--state-root")
            .arg(dir.path())
            .arg("--port")
            .arg(port.to_string())
            .stdout(log.try_clone().ok()?)
            .stderr(log)
            .spawn()
            .ok()?;
        if !wait_port(port, &mut child) {
            let _ = child.kill();
            return None;
        }
        Some(Castra {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for Castra {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct CastraConn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl CastraConn {
    fn open(port: u16, vm: &str) -> io::Result<CastraConn> {
        let (mut w, mut r) = connect(port)?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        w.write_all(format!("hello vm:{vm} capabilities=bus-v1 token=tok-{vm}\n").as_bytes())?;
        line.clear();
        r.read_line(&mut line)?;
        if !line.starts_with("ok session=") {
            return Err(io::Error::other(format!("castra hello: {line}")));
        }
        Ok(CastraConn { w, r })
    }

    fn send(&mut self, v: &serde_json::Value) -> io::Result<()> {
        let body = serde_json::to_vec(v)?;
        let mut b = (body.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(&body);
        self.w.write_all(&b)
    }

    fn frame(&mut self) -> io::Result<serde_json::Value> {
        let mut len = [0u8; 4];
        self.r.read_exact(&mut len)?;
        let body = read_exact_vec(&mut self.r, u32::from_be_bytes(len) as usize)?;
        Ok(serde_json::from_slice(&body)?)
    }
}

impl Publisher for CastraConn {
    fn publish(&mut self, topic: &str, payload: &[u8]) -> io::Result<()> {
        let text = String::from_utf8_lossy(payload);
        self.send(&serde_json::json!({"type": "publish", "topic": topic, "payload": text}))?;
        loop {
            let f = self.frame()?;
            if f["ack"] == "publish" {
                return if f["status"] == "ok" {
                    Ok(())
                } else {
                    Err(io::Error::other(f.to_string()))
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
    fn publisher(&self, i: usize) -> io::Result<Box<dyn Publisher>> {
        Ok(Box::new(CastraConn::open(self.port, &format!("p{i}"))?))
    }
    fn subscriber(&self, topic: &str) -> io::Result<Box<dyn Subscriber>> {
        let mut c = CastraConn::open(self.port, "p64")?;
        c.send(&serde_json::json!({"type": "subscribe", "topic": topic}))?;
        let ack = c.frame()?;
        if ack["status"] != "ok" {
            return Err(io::Error::other(ack.to_string()));
        }
        Ok(Box::new(c))
    }
}

// ---------------------------------------------------------------- servers

/// A peer server process in a temp dir.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(bin: &str, args: impl Fn(u16, &Path) -> Vec<String>) -> Option<Server> {
    let dir = tempfile::Builder::new()
        .prefix("cbp")
        .tempdir_in("/tmp")
        .ok()?;
    let port = free_port();
    let mut child = Command::new(bin)
        .args(args(port, dir.path()))
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    if !wait_port(port, &mut child) {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    Some(Server {
        child,
        port,
        _dir: dir,
    })
}

// ---------------------------------------------------------------- redis

struct Redis(Server);

/// A RESP reply (simple strings and integers are read and ignored).
enum Resp {
    Simple,
    Int,
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

fn resp_read(r: &mut BufReader<TcpStream>) -> io::Result<Resp> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let (kind, rest) = line.trim_end().split_at(1.min(line.len()));
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
                let v = read_exact_vec(r, len as usize + 2)?;
                Resp::Bulk(Some(v[..len as usize].to_vec()))
            }
        },
        "*" => match n()? {
            -1 => Resp::Array(None),
            len => Resp::Array(Some(
                (0..len).map(|_| resp_read(r)).collect::<io::Result<_>>()?,
            )),
        },
        _ => return Err(io::Error::other(format!("redis: bad reply {line:?}"))),
    })
}

struct RedisConn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    last_id: Vec<u8>,
    topic: String,
}

impl RedisConn {
    fn cmd(&mut self, args: &[&[u8]]) -> io::Result<Resp> {
        let mut b = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            b.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            b.extend_from_slice(a);
            b.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&b)?;
        resp_read(&mut self.r)
    }
}

impl Publisher for RedisConn {
    fn publish(&mut self, topic: &str, payload: &[u8]) -> io::Result<()> {
        self.cmd(&[b"XADD", topic.as_bytes(), b"*", b"p", payload])
            .map(drop)
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

impl Redis {
    fn start() -> Option<Redis> {
        let s = spawn_server("redis-server", |port, dir| {
            [
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
            .collect()
        })?;
        Some(Redis(s))
    }

    fn conn(&self, topic: &str) -> io::Result<RedisConn> {
        let (w, r) = connect(self.0.port)?;
        Ok(RedisConn {
            w,
            r,
            // Each stream is new: read it from its start.
            last_id: b"0".to_vec(),
            topic: topic.to_owned(),
        })
    }
}

impl Peer for Redis {
    fn publisher(&self, _: usize) -> io::Result<Box<dyn Publisher>> {
        Ok(Box::new(self.conn("")?))
    }
    fn subscriber(&self, topic: &str) -> io::Result<Box<dyn Subscriber>> {
        Ok(Box::new(self.conn(topic)?))
    }
}

// ---------------------------------------------------------------- mosquitto (MQTT 3.1.1)

struct Mosquitto(Server);

struct MqttConn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    next_id: u16,
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

impl MqttConn {
    fn open(port: u16, client: &str) -> io::Result<MqttConn> {
        let (mut w, r) = connect(port)?;
        let mut body = mqtt_str(b"MQTT");
        body.extend_from_slice(&[4, 0x02, 0, 60]);
        body.extend(mqtt_str(client.as_bytes()));
        w.write_all(&mqtt_packet(0x10, &body))?;
        let mut c = MqttConn { w, r, next_id: 1 };
        let (kind, ack) = c.read()?;
        if kind >> 4 != 2 || ack.get(1) != Some(&0) {
            return Err(io::Error::other("mqtt connect refused"));
        }
        Ok(c)
    }

    fn read(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut h = [0u8; 1];
        self.r.read_exact(&mut h)?;
        let (mut len, mut mul) = (0usize, 1usize);
        loop {
            let mut b = [0u8; 1];
            self.r.read_exact(&mut b)?;
            len += (b[0] & 0x7f) as usize * mul;
            mul *= 128;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        Ok((h[0], read_exact_vec(&mut self.r, len)?))
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }
}

impl Publisher for MqttConn {
    fn publish(&mut self, topic: &str, payload: &[u8]) -> io::Result<()> {
        let id = self.id();
        let mut body = mqtt_str(topic.as_bytes());
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(payload);
        self.w.write_all(&mqtt_packet(0x32, &body))?;
        loop {
            let (kind, b) = self.read()?;
            if kind >> 4 == 4 && b[..2] == id.to_be_bytes() {
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
                self.w.write_all(&[0x40, 2, id[0], id[1]])?;
            }
            return Ok(b[at..].to_vec());
        }
    }
}

impl Mosquitto {
    fn start() -> Option<Mosquitto> {
        let s = spawn_server("/usr/sbin/mosquitto", |port, dir| {
            let conf = dir.join("m.conf");
            let _ = std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 0\nmax_queued_messages 100000\n"
                ),
            );
            vec!["-c".into(), conf.display().to_string()]
        })?;
        Some(Mosquitto(s))
    }
}

static CLIENT: AtomicU64 = AtomicU64::new(0);

impl Peer for Mosquitto {
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
        c.w.write_all(&mqtt_packet(0x82, &body))?;
        let (kind, _) = c.read()?;
        if kind >> 4 != 9 {
            return Err(io::Error::other("mqtt subscribe failed"));
        }
        Ok(Box::new(c))
    }
}

// ---------------------------------------------------------------- NATS core

struct Nats(Server);

struct NatsConn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl NatsConn {
    fn open(port: u16, verbose: bool) -> io::Result<NatsConn> {
        let (mut w, mut r) = connect(port)?;
        let mut line = String::new();
        r.read_line(&mut line)?; // INFO
        w.write_all(
            format!("CONNECT {{\"verbose\":{verbose},\"pedantic\":false}}\r\nPING\r\n").as_bytes(),
        )?;
        loop {
            line.clear();
            r.read_line(&mut line)?;
            if line.starts_with("PONG") {
                return Ok(NatsConn { w, r });
            }
            if line.starts_with("-ERR") {
                return Err(io::Error::other(line));
            }
        }
    }
}

impl Publisher for NatsConn {
    fn publish(&mut self, topic: &str, payload: &[u8]) -> io::Result<()> {
        let mut b = format!("PUB {topic} {}\r\n", payload.len()).into_bytes();
        b.extend_from_slice(payload);
        b.extend_from_slice(b"\r\n");
        self.w.write_all(&b)?;
        let mut line = String::new();
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if line.starts_with("+OK") {
                return Ok(());
            }
            if line.starts_with("PING") {
                self.w.write_all(b"PONG\r\n")?;
            }
        }
    }
}

impl Subscriber for NatsConn {
    fn next(&mut self) -> io::Result<Vec<u8>> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if line.starts_with("PING") {
                self.w.write_all(b"PONG\r\n")?;
            } else if line.starts_with("MSG ") {
                let len: usize = line
                    .split_whitespace()
                    .last()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let v = read_exact_vec(&mut self.r, len + 2)?;
                return Ok(v[..len].to_vec());
            }
        }
    }
}

impl Nats {
    fn start() -> Option<Nats> {
        let s = spawn_server("nats-server", |port, _| {
            vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ]
        })?;
        Some(Nats(s))
    }
}

impl Peer for Nats {
    fn publisher(&self, _: usize) -> io::Result<Box<dyn Publisher>> {
        Ok(Box::new(NatsConn::open(self.0.port, true)?))
    }
    fn subscriber(&self, topic: &str) -> io::Result<Box<dyn Subscriber>> {
        let mut c = NatsConn::open(self.0.port, false)?;
        c.w.write_all(format!("SUB {topic} 1\r\nPING\r\n").as_bytes())?;
        let mut line = String::new();
        while !line.starts_with("PONG") {
            line.clear();
            c.r.read_line(&mut line)?;
        }
        Ok(Box::new(c))
    }
}

// ---------------------------------------------------------------- measurements

/// Acks per second with `n` publishers, one publish in flight each.
fn throughput(peer: &dyn Peer, n: usize, size: usize, topic: &str) -> io::Result<f64> {
    let pubs: Vec<Box<dyn Publisher>> = (0..n)
        .map(|i| peer.publisher(i))
        .collect::<Result<_, _>>()?;
    let acks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let payload = vec![b'x'; size];
    let threads: Vec<_> = pubs
        .into_iter()
        .map(|mut p| {
            let (acks, stop, failed, payload, topic) = (
                acks.clone(),
                stop.clone(),
                failed.clone(),
                payload.clone(),
                topic.to_owned(),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if p.publish(&topic, &payload).is_err() {
                        failed.store(true, Ordering::Relaxed);
                        return;
                    }
                    acks.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    thread::sleep(WARMUP);
    let (c0, t0) = (acks.load(Ordering::Relaxed), Instant::now());
    thread::sleep(MEASURE);
    let (c1, t1) = (acks.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    if failed.load(Ordering::Relaxed) {
        return Err(io::Error::other("a publisher failed"));
    }
    Ok((c1 - c0) as f64 / (t1 - t0).as_secs_f64())
}

/// publish->deliver p50/p99 in ms at LAT_RATE msg/s, 64 B payloads.
fn latency(peer: &dyn Peer) -> io::Result<(f64, f64)> {
    let topic = "lat";
    let mut sub = peer.subscriber(topic)?;
    let mut publ = peer.publisher(0)?;
    let start = Instant::now();
    let recv = thread::spawn(move || -> io::Result<Vec<(u64, Duration)>> {
        let mut got = Vec::new();
        while got.len() < LAT_SAMPLES {
            let p = sub.next()?;
            let at = start.elapsed();
            let idx: u64 = String::from_utf8_lossy(&p[..8]).parse().unwrap_or(u64::MAX);
            got.push((idx, at));
        }
        Ok(got)
    });
    let mut sent = Vec::new();
    let period = Duration::from_micros(1_000_000 / LAT_RATE);
    for i in 0..LAT_SAMPLES as u64 {
        let due = period * i as u32;
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
        let mut payload = format!("{i:08}").into_bytes();
        payload.resize(64, b'x');
        sent.push(start.elapsed());
        publ.publish(topic, &payload)?;
    }
    let got = recv
        .join()
        .map_err(|_| io::Error::other("subscriber panicked"))??;
    let mut ms: Vec<f64> = got
        .iter()
        .filter_map(|(i, at)| {
            sent.get(*i as usize)
                .map(|s| (*at - *s).as_secs_f64() * 1e3)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return Err(io::Error::other("nothing delivered"));
    }
    let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    Ok((pct(0.5), pct(0.99)))
}

/// Deliveries per second through the hub to 4 drained subscriber queues,
/// and through plain `try_send` to 4 queues (the baseline).
fn fanout(through_hub: bool) -> f64 {
    const EVENTS: u64 = 500_000;
    const SUBS: usize = 4;
    let mut hub = Hub::new(HubConfig {
        queue_frames: 4096,
        // The bench drains as fast as it can; no subscriber is ever evicted.
        max_retries: u32::MAX,
        ..HubConfig::default()
    });
    let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
    let mut queues = Vec::new();
    let drains: Vec<_> = (0..SUBS)
        .map(|k| {
            let (tx, rx) = smol::channel::bounded::<Delivery>(4096);
            let (etx, _erx) = smol::channel::bounded::<Reason>(1);
            hub.handle(HubMsg::Register {
                key: k as u64,
                vm: format!("s{k}"),
                session: format!("{k}"),
                peer,
                queue: tx.clone(),
                evict: etx,
            });
            hub.handle(HubMsg::Subscribe {
                key: k as u64,
                topic: "t".into(),
            });
            queues.push(tx);
            thread::spawn(move || {
                let mut n = 0u64;
                while rx.recv_blocking().is_ok() {
                    n += 1;
                }
                n
            })
        })
        .collect();
    let frame: Frame =
        Arc::from(&b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"[..]);
    let t0 = Instant::now();
    for seq in 0..EVENTS {
        if through_hub {
            hub.handle(HubMsg::Deliver {
                seq,
                topic: "t".into(),
                frame: frame.clone(),
            });
            // Keep order and bounded memory as the hub's retry timer would.
            while hub.has_pending() {
                thread::yield_now();
                hub.retry();
            }
        } else {
            for q in &queues {
                let d = Delivery {
                    seq,
                    frame: frame.clone(),
                };
                while q.try_send(d.clone()).is_err() {
                    thread::yield_now();
                }
            }
        }
    }
    drop(hub);
    drop(queues);
    let delivered: u64 = drains.into_iter().map(|d| d.join().unwrap_or(0)).sum();
    delivered as f64 / t0.elapsed().as_secs_f64()
}

fn fmt_rate(r: &Option<f64>) -> String {
    r.map_or("n/a".into(), |r| format!("{r:.0}"))
}

fn main() {
    println!(
        "bus benchmark: loopback, {MEASURE:?} per cell after {WARMUP:?} warm-up, one publish in flight per publisher\n"
    );
    let castra = Castra::start();
    let redis = Redis::start();
    let mosq = Mosquitto::start();
    let nats = Nats::start();
    let peers: [(&str, Option<&dyn Peer>); 4] = [
        ("castra (durable)", castra.as_ref().map(|p| p as &dyn Peer)),
        (
            "redis always (durable, baseline)",
            redis.as_ref().map(|p| p as &dyn Peer),
        ),
        (
            "mosquitto QoS1 (non-durable)",
            mosq.as_ref().map(|p| p as &dyn Peer),
        ),
        (
            "NATS core (non-durable)",
            nats.as_ref().map(|p| p as &dyn Peer),
        ),
    ];
    for (name, p) in &peers {
        if p.is_none() {
            println!("note: {name} could not be started (not installed?): n/a");
        }
    }
    println!("publish->ack throughput (acks/s)");
    println!(
        "| payload | publishers | castra | redis always (baseline) | castra/redis | mosquitto QoS1 | NATS core |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut cell = 0;
    for size in PAYLOADS {
        for n in PUBLISHERS {
            let rates: Vec<Option<f64>> = peers
                .iter()
                .map(|(name, p)| {
                    cell += 1;
                    let topic = format!("bench{cell}");
                    p.and_then(|p| match throughput(p, n, size, &topic) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            eprintln!("{name}: {e}");
                            None
                        }
                    })
                })
                .collect();
            let ratio = match (rates[0], rates[1]) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "n/a".into(),
            };
            println!(
                "| {size} B | {n} | {} | {} | {ratio} | {} | {} |",
                fmt_rate(&rates[0]),
                fmt_rate(&rates[1]),
                fmt_rate(&rates[2]),
                fmt_rate(&rates[3])
            );
        }
    }
    println!(
        "\npublish->deliver latency, 64 B at {LAT_RATE} msg/s, {LAT_SAMPLES} messages (ms, p50 / p99)"
    );
    println!("| castra | redis always (baseline) | mosquitto QoS1 | NATS core |");
    println!("|---|---|---|---|");
    let lat: Vec<String> = peers
        .iter()
        .map(|(name, p)| {
            p.and_then(|p| match latency(p) {
                Ok((a, b)) => Some(format!("{a:.2} / {b:.2}")),
                Err(e) => {
                    eprintln!("{name}: {e}");
                    None
                }
            })
            .unwrap_or_else(|| "n/a".into())
        })
        .collect();
    println!("| {} |", lat.join(" | "));
    drop((castra, redis, mosq, nats));
    println!("\nin-process fan-out to 4 subscriber queues (deliveries/s)");
    println!("| castra hub | plain try_send (baseline) |");
    println!("|---|---|");
    println!("| {:.0} | {:.0} |", fanout(true), fanout(false));
}
