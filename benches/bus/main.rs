//! Benchmark (run on demand, never in CI: `cargo bench --bench bus`): the
//! bus against its peers, side by side in one run, on loopback.
//!
//! - durable publish->ack throughput: the release build of the real
//!   `castra broker` (guest sessions over TCP, one publish in flight per
//!   publisher, acked after fdatasync) against Redis 7 from Debian with
//!   `--appendonly yes --appendfsync always` (`XADD`, acked after the AOF
//!   fsync: the durable peer and the baseline), and, labelled non-durable,
//!   mosquitto QoS1 (PUBACK, persistence off) and NATS core (`verbose` +OK);
//!   1, 8 and 64 publishers, 64 B and 1 KiB payloads; then pipelined, 64 B
//!   with 16 publishes in flight per publisher;
//! - publish->deliver latency p50/p99 at a nominal 200 msg/s, one publisher
//!   and one subscriber, same peers (Redis: `XREAD BLOCK`);
//! - the in-process hub fanning out to 4 subscriber queues, against plain
//!   `try_send` to 4 queues as the baseline.
//!
//! A peer whose server is not installed prints `n/a`. Clients are minimal
//! hand-written protocol clients (std only), the same for every peer. Each
//! throughput cell also prints the CPU time an ack cost the server process
//! and the client threads (from /proc), which is steadier than the rate on
//! a shared machine and shows where the time goes.
//!
//! `-- --quick` runs only the headline cells (64 B, 64 publishers, 1 and 16
//! in flight) three times for castra, Redis and NATS. `CASTRA_BENCH_BIN=<path>` measures
//! another castra build (e.g. the last commit's) against the same peers.
//!
//! This file owns the run: the `Publisher`/`Subscriber`/`Peer` traits every
//! peer implements, the throughput and latency drivers, and the tables. Each
//! peer (its server and its client) is in its own module (`castra.rs`,
//! `redis.rs`, `mosquitto.rs`, `nats.rs`) over the shared process helper
//! (`server.rs`) and connection (`conn.rs`); the hub measurement is
//! `fanout.rs`.

mod castra;
mod conn;
mod fanout;
mod mosquitto;
mod nats;
mod redis;
mod server;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::castra::Castra;
use fanout::fanout;
use mosquitto::Mosquitto;
use nats::Nats;
use redis::Redis;

const WARMUP: Duration = Duration::from_millis(300);
const MEASURE: Duration = Duration::from_secs(2);
const PUBLISHERS: [usize; 3] = [1, 8, 64];
const PAYLOADS: [usize; 2] = [64, 1024];
/// Publishes in flight per publisher in the pipelined cells (the unacked
/// window a castra publisher is allowed).
const PIPELINE: usize = 16;
const LAT_RATE: u64 = 200;
const LAT_SAMPLES: usize = 400;

/// One connection that publishes: `send` writes a publish, `acked` returns
/// once the peer acknowledged the oldest one still unacknowledged.
trait Publisher: Send {
    fn send(&mut self, topic: &str, payload: &[u8]) -> io::Result<()>;
    fn acked(&mut self) -> io::Result<()>;

    /// One publish, returning once it is acknowledged.
    fn publish(&mut self, topic: &str, payload: &[u8]) -> io::Result<()> {
        self.send(topic, payload)?;
        self.acked()
    }
}

/// One connection subscribed to a topic; returns each payload delivered.
trait Subscriber: Send {
    fn next(&mut self) -> io::Result<Vec<u8>>;
}

/// A running peer server.
trait Peer {
    fn server(&self) -> &server::Server;
    fn publisher(&self, i: usize) -> io::Result<Box<dyn Publisher>>;
    fn subscriber(&self, topic: &str) -> io::Result<Box<dyn Subscriber>>;
}

/// One throughput cell: acks per second, and the CPU time each ack cost the
/// server and the client threads (both on the same 2 cores, so a costly
/// client takes time from the server).
#[derive(Clone, Copy)]
struct Cell {
    rate: f64,
    server_us: f64,
    client_us: f64,
}

/// Acks per second with `n` publishers, `window` publishes in flight each
/// (a publisher sends the next one as soon as its oldest is acknowledged).
fn throughput(
    peer: &dyn Peer,
    n: usize,
    window: usize,
    size: usize,
    topic: &str,
) -> io::Result<Cell> {
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
                let mut run = || -> io::Result<()> {
                    for _ in 1..window {
                        p.send(&topic, &payload)?;
                    }
                    while !stop.load(Ordering::Relaxed) {
                        p.publish(&topic, &payload)?;
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                };
                if run().is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
            })
        })
        .collect();
    thread::sleep(WARMUP);
    let cpu = || -> io::Result<(Duration, Duration)> {
        Ok((peer.server().cpu()?, server::cpu_of("/proc/self/stat")?))
    };
    let (c0, t0, (s0, p0)) = (acks.load(Ordering::Relaxed), Instant::now(), cpu()?);
    thread::sleep(MEASURE);
    let (c1, t1, (s1, p1)) = (acks.load(Ordering::Relaxed), Instant::now(), cpu()?);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    if failed.load(Ordering::Relaxed) {
        return Err(io::Error::other("a publisher failed"));
    }
    let acked = (c1 - c0).max(1) as f64;
    Ok(Cell {
        rate: (c1 - c0) as f64 / (t1 - t0).as_secs_f64(),
        server_us: (s1 - s0).as_secs_f64() * 1e6 / acked,
        client_us: (p1 - p0).as_secs_f64() * 1e6 / acked,
    })
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

fn fmt_rate(c: &Option<Cell>) -> String {
    c.map_or("n/a".into(), |c| format!("{:.0}", c.rate))
}

fn fmt_cpu(c: &Option<Cell>) -> String {
    c.map_or("n/a".into(), |c| {
        format!("{:.1} / {:.1}", c.server_us, c.client_us)
    })
}

fn main() {
    // `cargo bench --bench bus -- --quick`: only the headline cells (64 B,
    // 64 publishers, 1 and 16 in flight), three times, for castra, its
    // baseline and NATS core (the non-durable ceiling of this client here).
    let quick = std::env::args().any(|a| a == "--quick");
    println!(
        "bus benchmark: loopback, {MEASURE:?} per cell after {WARMUP:?} warm-up, 1 or {PIPELINE} publishes in flight per publisher\n"
    );
    let castra = Castra::start();
    let redis = Redis::start();
    let mosq = if quick { None } else { Mosquitto::start() };
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
        if p.is_none() && !(quick && name.starts_with("mosquitto")) {
            println!("note: {name} could not be started (not installed?): n/a");
        }
    }
    println!("publish->ack throughput (acks/s)");
    println!(
        "| payload | publishers | in flight | castra | redis always (baseline) | castra/redis | mosquitto QoS1 | NATS core |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // (payload, publishers, in flight each): the one-in-flight grid, then
    // the pipelined cells (the window the protocol allows a publisher).
    let cells: Vec<(usize, usize, usize)> = if quick {
        let one = [(64, 64, 1), (64, 64, PIPELINE)];
        (0..3).flat_map(|_| one).collect()
    } else {
        let grid = PAYLOADS
            .iter()
            .flat_map(|&size| PUBLISHERS.iter().map(move |&n| (size, n, 1)));
        let piped = PUBLISHERS.iter().map(|&n| (64, n, PIPELINE));
        grid.chain(piped).collect()
    };
    let mut cell = 0;
    let mut cpu_rows = Vec::new();
    for (size, n, window) in cells {
        let rates: Vec<Option<Cell>> = peers
            .iter()
            .map(|(name, p)| {
                cell += 1;
                let topic = format!("bench{cell}");
                p.and_then(|p| match throughput(p, n, window, size, &topic) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        eprintln!("{name}: {e}");
                        None
                    }
                })
            })
            .collect();
        let (ratio, cpu_ratio) = match (rates[0], rates[1]) {
            (Some(a), Some(b)) if b.rate > 0.0 && a.server_us > 0.0 => (
                format!("{:.2}x", a.rate / b.rate),
                format!("{:.2}x", a.server_us / b.server_us),
            ),
            _ => ("n/a".into(), "n/a".into()),
        };
        println!(
            "| {size} B | {n} | {window} | {} | {} | {ratio} | {} | {} |",
            fmt_rate(&rates[0]),
            fmt_rate(&rates[1]),
            fmt_rate(&rates[2]),
            fmt_rate(&rates[3])
        );
        let cpu: Vec<String> = rates.iter().map(fmt_cpu).collect();
        cpu_rows.push(format!(
            "| {size} B | {n} | {window} | {} | {} | {cpu_ratio} | {} | {} |",
            cpu[0], cpu[1], cpu[2], cpu[3]
        ));
    }
    println!("\nCPU per ack in the cells above (us, server / client threads; 2 cores shared)");
    println!(
        "| payload | publishers | in flight | castra | redis always | castra/redis server CPU | mosquitto QoS1 | NATS core |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in cpu_rows {
        println!("{row}");
    }
    if quick {
        return;
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
