//! Benchmark (run on demand: `cargo bench --bench exec`): working inside
//! guests over the broker, with two guests of the default image (TCG):
//!
//! - `castra exec a -- true`, the whole process, p50 / p99;
//! - `castra cp` of a 32 MiB file into and out of the guest, MiB/s;
//! - a large output (`exec a -- cat /dev/zero`, 256 MiB read): MiB/s, and
//!   the RSS of castra, the broker and the agent while it runs;
//! - host publish -> host delivery latency p50 / p99 through the broker,
//!   idle and while guest a streams at full speed.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use castra::broker::host_client::HostSession;
use castra::broker::wire::frame::{BrokerFrame, ClientFrame};

mod common;
use common::{castra, pct};

const PORT: u16 = 7793;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Publish -> delivery latency between two host sessions, `n` samples.
fn publish_latency(socket: &Path, n: usize) -> (Duration, Duration) {
    let mut sub = HostSession::open(socket).expect("subscriber session");
    sub.subscribe(&["bench.lat".into()]).unwrap();
    let mut publisher = HostSession::open(socket).expect("publisher session");
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        publisher
            .send(&ClientFrame::Publish {
                topic: "bench.lat".into(),
                payload: serde_json::json!({ "i": i }),
                id: None,
            })
            .unwrap();
        loop {
            match sub.next(Duration::from_secs(10)).unwrap() {
                Some(BrokerFrame::Message { seq, .. }) => {
                    samples.push(t.elapsed());
                    sub.send(&ClientFrame::Ack { seq }).unwrap();
                    break;
                }
                Some(_) => {}
                None => panic!("no delivery within 10 s"),
            }
        }
        // Drain the publisher's acks so its socket never fills.
        while let Ok(Some(_)) = publisher.next(Duration::from_millis(0)) {}
    }
    (pct(&mut samples, 0.5), pct(&mut samples, 0.99))
}

/// Stops the project's VMs whatever happens.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_castra"))
            .arg("down")
            .current_dir(self.0)
            .output();
    }
}

fn main() {
    let dir = tempfile::Builder::new()
        .prefix("ce")
        .tempdir_in("/tmp")
        .unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("castra.toml"),
        format!(
            "[project]\nname = \"bexec\"\n[broker]\nport = {PORT}\n[[vms]]\nname = \"a\"\nmemory = \"256M\"\n[[vms]]\nname = \"b\"\nmemory = \"160M\"\n"
        ),
    )
    .unwrap();
    castra(p, &["image", "build"]);
    let _down = Down(p);
    castra(p, &["apply", "--wait"]);
    let socket = p.join(".castra/broker/broker.sock");
    let broker_pid = std::fs::read_to_string(p.join(".castra/broker/broker.pid")).unwrap();
    let broker_pid = broker_pid.trim().to_owned();

    // exec latency
    for _ in 0..3 {
        castra(p, &["exec", "a", "--", "true"]);
    }
    let mut lat: Vec<Duration> = (0..40)
        .map(|_| {
            let t = Instant::now();
            castra(p, &["exec", "a", "--", "true"]);
            t.elapsed()
        })
        .collect();
    println!(
        "exec a -- true (whole process, 40 runs): p50 {}  p99 {}",
        ms(pct(&mut lat, 0.5)),
        ms(pct(&mut lat, 0.99))
    );

    // cp throughput
    let size = 32u64 << 20;
    let file = p.join("blob");
    let data: Vec<u8> = (0..size).map(|i| ((i * 2654435761) >> 13) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let mib = size as f64 / (1 << 20) as f64;
    for round in 1..=2 {
        let t = Instant::now();
        castra(p, &["cp", file.to_str().unwrap(), "a:/tmp/blob"]);
        let tin = t.elapsed();
        let back = p.join("back");
        let _ = std::fs::remove_file(&back);
        let t = Instant::now();
        castra(p, &["cp", "a:/tmp/blob", back.to_str().unwrap()]);
        let tout = t.elapsed();
        assert_eq!(std::fs::read(&back).unwrap().len() as u64, size);
        println!(
            "cp 32 MiB (round {round}): in {:.1} MiB/s, out {:.1} MiB/s",
            mib / tin.as_secs_f64(),
            mib / tout.as_secs_f64()
        );
    }
    castra(p, &["exec", "a", "--", "rm", "/tmp/blob"]);

    let (idle50, idle99) = publish_latency(&socket, 300);

    // A large output, with publish latency measured while it flows.
    let mut child = Command::new(env!("CARGO_BIN_EXE_castra"))
        .args(["exec", "a", "--", "cat", "/dev/zero"])
        .current_dir(p)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        let t = Instant::now();
        while got < 256 << 20 {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        (got, t.elapsed())
    });
    let (flood50, flood99) = publish_latency(&socket, 300);
    let castra_rss = rss_kib(&child.id().to_string());
    let broker_rss = rss_kib(&broker_pid);
    let agent_status = castra(
        p,
        &[
            "exec",
            "a",
            "--",
            "sh",
            "-c",
            "grep VmRSS /proc/$(pidof castra-agent | cut -d' ' -f1)/status",
        ],
    );
    let agent_rss = String::from_utf8_lossy(&agent_status.stdout)
        .trim()
        .to_owned();
    let (got, took) = reader.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "exec a -- cat /dev/zero: {} MiB at {:.1} MiB/s; RSS castra {castra_rss} KiB, broker {broker_rss} KiB, agent {agent_rss}",
        got >> 20,
        (got as f64 / (1 << 20) as f64) / took.as_secs_f64()
    );
    println!(
        "host publish -> delivery (300): idle p50 {} p99 {}; during the stream p50 {} p99 {} ({:.2}x p99)",
        ms(idle50),
        ms(idle99),
        ms(flood50),
        ms(flood99),
        flood99.as_secs_f64() / idle99.as_secs_f64()
    );
}
