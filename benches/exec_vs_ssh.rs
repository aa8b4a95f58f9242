//! Benchmark (run on demand: `cargo bench --bench exec_vs_ssh`): castra's
//! way into a guest against OpenSSH's, side by side in one run, on the same
//! Debian+Nix guest (TCG), through the same user-mode network stack:
//!
//! - `castra exec n -- true` against `ssh -o BatchMode=yes ... true` (a fresh
//!   connection each time), whole processes, p50 / p99 and the ratio;
//! - `castra cp` of a 100 MiB file into and out of the guest against `scp`,
//!   MiB/s and the ratio (median of three).
//!
//! Needs the Debian+Nix image (`guest/debian-nix/build.sh`, which carries
//! openssh-server, disabled until this bench starts it) and the host's `ssh`,
//! `scp` and `ssh-keygen` (`scripts/setup-host.sh` installs openssh-client).
//! The guest's host keys are made at the bench's start, never in the image.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::pct;

const BROKER_PORT: u16 = 7797;
const SSH_PORT: u16 = 7798;
/// Defaults; `EXEC_VS_SSH_RUNS`, `EXEC_VS_SSH_MIB` and `EXEC_VS_SSH_ROUNDS`
/// override them (on a loaded 2-core host one TCG ssh login takes seconds).
const EXEC_RUNS: usize = 30;
const COPY_MIB: usize = 100;
const COPY_ROUNDS: usize = 3;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn castra(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_castra"));
    cmd.current_dir(dir);
    cmd
}

/// ssh or scp with the bench's key, no host-key prompts, no config files.
fn ssh_tool(tool: &str, key: &Path) -> Command {
    let mut cmd = Command::new(tool);
    cmd.args(["-F", "/dev/null", "-i"]).arg(key).args([
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=30",
    ]);
    cmd.arg(if tool == "scp" { "-P" } else { "-p" })
        .arg(SSH_PORT.to_string());
    cmd
}

/// The Debian+Nix image's files and command line, from its manifest.
fn image() -> (PathBuf, String) {
    let dir = castra::image::cache_root().join("debian-nix");
    let key = std::fs::read_to_string(dir.join("current")).unwrap_or_else(|e| {
        panic!(
            "no Debian+Nix image under {} ({e}): run guest/debian-nix/build.sh",
            dir.display()
        )
    });
    let dir = dir.join(key.trim());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let file = |k: &str| {
        dir.join(manifest[k].as_str().unwrap())
            .display()
            .to_string()
    };
    let spec = format!(
        "{{ disk = \"{}\", kernel = \"{}\", initrd = \"{}\", cmdline = \"{}\" }}",
        file("disk"),
        file("kernel"),
        file("initrd"),
        manifest["cmdline"].as_str().unwrap()
    );
    (dir, spec)
}

/// `castra down` however the bench ends (a panic included): no VM left behind.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = castra(&self.0).arg("down").output();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn timed(mut cmd: Command) -> Duration {
    let t = Instant::now();
    run(cmd.stdout(Stdio::null()));
    t.elapsed()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn main() {
    let runs = setting("EXEC_VS_SSH_RUNS", EXEC_RUNS);
    let mib = setting("EXEC_VS_SSH_MIB", COPY_MIB);
    let rounds = setting("EXEC_VS_SSH_ROUNDS", COPY_ROUNDS);
    let (_, image) = image();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("castra.toml"),
        format!(
            "[project]\nname = \"sshbench\"\n[broker]\nport = {BROKER_PORT}\n\n[[vms]]\n\
             name = \"n\"\ncpus = 2\nmemory = \"1G\"\naccel = \"tcg\"\nimage = {image}\n\
             forwards = [\"127.0.0.1:{SSH_PORT}:22\"]\n"
        ),
    )
    .unwrap();
    let t = Instant::now();
    let _down = Down(p.to_owned());
    run(castra(p).args(["apply", "--wait", "--wait-timeout", "300s"]));
    eprintln!("guest up in {:.1} s", t.elapsed().as_secs_f64());

    // A key for this run; sshd started with fresh host keys.
    let key = p.join("id");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&key));
    let public = std::fs::read(p.join("id.pub")).unwrap();
    let mut setup = castra(p)
        .args(["exec", "n", "--", "sh", "-c"])
        .arg(
            "umask 077 && mkdir -p /root/.ssh && cat > /root/.ssh/authorized_keys \
             && ssh-keygen -A && systemctl start ssh",
        )
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    setup.stdin.take().unwrap().write_all(&public).unwrap();
    assert!(
        setup.wait().unwrap().success(),
        "starting sshd in the guest"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ssh_tool("ssh", &key)
        .args(["root@127.0.0.1", "true"])
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "sshd never answered");
        std::thread::sleep(Duration::from_millis(500));
    }

    // 1. A command's whole round trip, alternating so both see the same load.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut c = castra(p);
        c.args(["exec", "n", "--", "true"]);
        ours.push(timed(c));
        let mut s = ssh_tool("ssh", &key);
        s.args(["root@127.0.0.1", "true"]);
        theirs.push(timed(s));
    }
    let (o50, o99) = (ms(pct(&mut ours, 0.5)), ms(pct(&mut ours, 0.99)));
    let (s50, s99) = (ms(pct(&mut theirs, 0.5)), ms(pct(&mut theirs, 0.99)));
    eprintln!("exec p50 {o50:.1} ms, ssh p50 {s50:.1} ms ({runs} runs each)");

    // 2. 100 MiB each way.
    let big = p.join("big");
    let chunk: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut f = std::fs::File::create(&big).unwrap();
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    let (mut cin, mut cout, mut sin, mut sout) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let back = p.join(format!("back{round}"));
        let mut c = castra(p);
        c.arg("cp").arg(&big).arg("n:/root/big");
        cin.push(rate(timed(c)));
        let mut c = castra(p);
        c.args(["cp", "n:/root/big"]).arg(&back);
        cout.push(rate(timed(c)));
        assert_eq!(std::fs::read(&back).unwrap().len(), mib << 20);
        let mut s = ssh_tool("scp", &key);
        s.arg("-q").arg(&big).arg("root@127.0.0.1:/root/big2");
        sin.push(rate(timed(s)));
        let mut s = ssh_tool("scp", &key);
        s.args(["-q", "root@127.0.0.1:/root/big2"]).arg(&back);
        sout.push(rate(timed(s)));
        std::fs::remove_file(&back).unwrap();
        let last = |v: &[f64]| v[v.len() - 1];
        eprintln!(
            "round {round}: cp in {:.1} / scp {:.1} MiB/s, cp out {:.1} / scp {:.1} MiB/s",
            last(&cin),
            last(&sin),
            last(&cout),
            last(&sout)
        );
    }

    let (ci, co, si, so) = (median(cin), median(cout), median(sin), median(sout));
    println!(
        "castra vs OpenSSH, Debian+Nix guest under TCG, same run ({runs} execs, {rounds} copy rounds):"
    );
    println!("| | castra | OpenSSH | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| exec `true` p50 | {o50:.1} ms | {s50:.1} ms | {:.2}x | <= 0.5x |",
        o50 / s50
    );
    println!(
        "| exec `true` p99 | {o99:.1} ms | {s99:.1} ms | {:.2}x | |",
        o99 / s99
    );
    println!(
        "| cp in, {mib} MiB | {ci:.1} MiB/s | {si:.1} MiB/s | {:.2}x | >= 2x |",
        ci / si
    );
    println!(
        "| cp out, {mib} MiB | {co:.1} MiB/s | {so:.1} MiB/s | {:.2}x | >= 2x |",
        co / so
    );
}
