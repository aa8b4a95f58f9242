//! The real `castra broker` binary in a temp state root, simulated guests
//! speaking the wire protocol over TCP, and the real `castra-agent` as a
//! guest program: the harness of `tests/broker.rs` and the `tests/bus*.rs`.
//! Everything it starts dies with the test (Drop kills the broker).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use castra::broker::{BrokerSnapshot, read_snapshot};
use serde_json::{Value, json};

pub const CASTRA: &str = env!("CARGO_BIN_EXE_castra");
pub const AGENT: &str = env!("CARGO_BIN_EXE_castra-agent");

/// A state root (short path under /tmp: the Unix socket lives in it) with
/// a token file per `(vm, token)` and a castra.toml pointing at it, so
/// `castra --config <root>/castra.toml bus ...` works there.
pub fn state_root_with_tokens(vms: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("cb")
        .tempdir_in("/tmp")
        .unwrap();
    for (vm, token) in vms {
        let d = dir.path().join("vms").join(vm);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("token"), format!("{token}\n")).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("broker")).unwrap();
    std::fs::write(
        dir.path().join("castra.toml"),
        format!("[project]\nstate_dir = \"{}\"\n", dir.path().display()),
    )
    .unwrap();
    dir
}

/// [`state_root_with_tokens`] where VM `v`'s token is `tok-v` (what [`Guest::open`] sends).
pub fn state_root(vms: &[&str]) -> tempfile::TempDir {
    let tokens: Vec<(&str, String)> = vms.iter().map(|v| (*v, format!("tok-{v}"))).collect();
    let pairs: Vec<(&str, &str)> = tokens.iter().map(|(v, t)| (*v, t.as_str())).collect();
    state_root_with_tokens(&pairs)
}

/// `castra --config <root>/castra.toml <args>`.
pub fn cli(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(CASTRA);
    c.arg("--config").arg(root.join("castra.toml")).args(args);
    c
}

/// A `castra broker` process; killed on drop.
pub struct Broker {
    pub child: Child,
    pub root: PathBuf,
    pub port: u16,
    extra: Vec<String>,
    /// Environment for the next (re)start (e.g. libfaketime's).
    pub env: Vec<(String, String)>,
}

impl Broker {
    /// Start it with extra flags and wait until both sockets answer.
    pub fn start(root: &Path, port: u16, extra: &[&str]) -> Broker {
        let mut b = Broker {
            child: Command::new("true").spawn().unwrap(),
            root: root.to_path_buf(),
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        };
        b.restart();
        b
    }

    /// Start again (after [`Broker::kill9`]) with the same flags.
    pub fn restart(&mut self) {
        let _ = self.child.wait();
        // As `castra apply` does: a killed broker's socket file stays behind,
        // and the new one's appears once it is ready (bus log recovered).
        let _ = std::fs::remove_file(self.root.join("broker/broker.sock"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("broker/broker.log"))
            .unwrap();
        self.child = Command::new(CASTRA)
            .arg("broker")
            .arg("--state-root")
            .arg(&self.root)
            .arg("--port")
            .arg(self.port.to_string())
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket().exists() || TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "broker did not start: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("broker/broker.log")).unwrap_or_default()
    }

    /// events.jsonl (a line being written is skipped).
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.root.join("broker/events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The first event matching `pred` (waits up to 15 s).
    pub fn wait_event(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(e) = self.events().into_iter().find(&pred) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "event never came: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// state.json once `pred` holds (waits up to 5 s for the coalesced write).
    pub fn state_when(&self, pred: impl Fn(&BrokerSnapshot) -> bool) -> BrokerSnapshot {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let snapshot = read_snapshot(&self.root.join("broker/state.json"));
            if let Ok(Some(s)) = &snapshot
                && pred(s)
            {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "state.json never matched: {snapshot:#?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("broker/broker.sock")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A simulated guest on the broker's TCP port.
pub struct Guest {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
    /// Messages read while waiting for something else.
    stash: VecDeque<Value>,
}

impl Guest {
    /// Connect and read the greeting (10 s read timeout).
    pub fn connect(port: u16) -> Guest {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut g = Guest {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
            stash: VecDeque::new(),
        };
        assert_eq!(g.line(), "castra-broker 1 ready");
        g
    }

    /// A bus session of `vm` with `token`; returns the guest and the session id.
    pub fn session(port: u16, vm: &str, token: &str) -> (Guest, String) {
        let mut g = Guest::connect(port);
        let reply = g.hello(&format!("hello vm:{vm} capabilities=bus-v1 token={token}"));
        let id = reply
            .strip_prefix("ok session=")
            .unwrap_or_else(|| panic!("not granted: {reply}"))
            .to_owned();
        (g, id)
    }

    /// A bus session of `vm` with token `tok-<vm>` (see [`state_root`]).
    pub fn open(port: u16, vm: &str) -> Guest {
        Guest::session(port, vm, &format!("tok-{vm}")).0
    }

    pub fn line(&mut self) -> String {
        let mut s = String::new();
        self.reader.read_line(&mut s).unwrap();
        s.trim_end().to_owned()
    }

    /// Send a hello line; returns the reply line.
    pub fn hello(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        self.line()
    }

    pub fn send(&mut self, v: &Value) {
        self.send_raw(&encode(v));
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    pub fn try_frame(&mut self) -> std::io::Result<Value> {
        let mut len = [0u8; 4];
        self.reader.read_exact(&mut len)?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.reader.read_exact(&mut body)?;
        Ok(serde_json::from_slice(&body).unwrap())
    }

    pub fn frame(&mut self) -> Value {
        self.try_frame().unwrap()
    }

    pub fn at_eof(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0) | Err(_))
    }

    pub fn subscribe(&mut self, topic: &str) {
        self.send(&json!({"type": "subscribe", "topic": topic}));
        assert_eq!(
            self.frame(),
            json!({"type": "ack", "ack": "subscribe", "status": "ok", "topic": topic})
        );
    }

    /// Publish and wait for the ack; returns the seq.
    pub fn publish(&mut self, topic: &str, payload: Value) -> u64 {
        self.send(&json!({"type": "publish", "topic": topic, "payload": payload, "id": "x"}));
        loop {
            let f = self.frame();
            if f["type"] == "ack" && f["ack"] == "publish" {
                assert_eq!(f["status"], "ok", "{f}");
                return f["seq"].as_u64().unwrap();
            }
            if f["type"] == "message" {
                self.stash.push_back(f);
            }
        }
    }

    /// The next `message` frame (skipping acks), not acked.
    pub fn unacked_message(&mut self) -> Value {
        if let Some(m) = self.stash.pop_front() {
            return m;
        }
        loop {
            let f = self.frame();
            if f["type"] == "message" {
                return f;
            }
        }
    }

    /// The next `message` frame, acked as a well-behaved consumer does
    /// (the broker pauses delivery once its unacked window is full).
    pub fn message(&mut self) -> Value {
        let m = self.unacked_message();
        self.send(&json!({"type": "ack", "seq": m["seq"]}));
        m
    }
}

/// One frame: 4-byte big-endian length, then the JSON.
pub fn encode(v: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(v).unwrap();
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes
}

/// `castra-agent <args>` as guest `vm` of the broker on `port`.
pub fn agent(port: u16, vm: &str, root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(AGENT);
    c.args(args)
        .args([
            "--vm",
            vm,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .arg("--token-file")
        .arg(root.join("vms").join(vm).join("token"));
    c
}

/// The value at fraction `p` of a sorted sample.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The `seq` of every JSON line in `stdout` (what `castra bus tail --json` prints).
pub fn json_seqs(stdout: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}
