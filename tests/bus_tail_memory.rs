//! `castra bus tail` reads in bounded memory: a large all.log (64 MiB here,
//! `CASTRA_TAIL_LOG_MIB=1024` on demand) is printed whole and with `-n 10`,
//! every record exactly once, and the process's peak RSS (the kernel's
//! `ru_maxrss` of the waited-for child) stays under 20 MiB.

mod common;

use std::io::{BufWriter, Read, Write};
use std::process::Stdio;

use common::broker::{cli, state_root};

const RSS_BOUND_KB: i64 = 20 * 1024;

/// Peak RSS of the largest child this process has waited for, in KiB.
fn children_max_rss_kb() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    unsafe {
        let mut ru: nix::libc::rusage = std::mem::zeroed();
        assert_eq!(nix::libc::getrusage(nix::libc::RUSAGE_CHILDREN, &mut ru), 0);
        ru.ru_maxrss
    }
}

/// Run `castra bus tail <args>`; (lines printed, bytes printed).
fn tail(root: &std::path::Path, args: &[&str]) -> (u64, u64) {
    let mut all = vec!["bus", "tail"];
    all.extend_from_slice(args);
    let mut child = cli(root, &all).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        bytes += n as u64;
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    assert!(child.wait().unwrap().success());
    (lines, bytes)
}

#[test]
fn tail_memory_stays_flat_whatever_the_log_size() {
    let mib: u64 = std::env::var("CASTRA_TAIL_LOG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let root = state_root(&["web"]);
    let dir = root.path().join("logs/bus");
    std::fs::create_dir_all(&dir).unwrap();
    let mut w = BufWriter::new(std::fs::File::create(dir.join("all.log")).unwrap());
    let pad = "x".repeat(200);
    let (mut seq, mut size) = (0u64, 0u64);
    while size < mib << 20 {
        seq += 1;
        let line = format!(
            "{{\"seq\":{seq},\"vm\":\"web\",\"topic\":\"t\",\"ts_ms\":{seq},\"payload\":\"{pad}\"}}\n"
        );
        size += line.len() as u64;
        w.write_all(line.as_bytes()).unwrap();
    }
    w.flush().unwrap();
    drop(w);

    let (lines, bytes) = tail(root.path(), &["--json"]);
    assert_eq!(lines, seq, "every record once");
    assert_eq!(bytes, size);
    let whole = children_max_rss_kb();
    let (last, _) = tail(root.path(), &["--json", "-n", "10"]);
    assert_eq!(last, 10);
    let after_n = children_max_rss_kb();
    println!(
        "bus tail of a {mib} MiB log ({seq} records): peak RSS {whole} KiB (the largest of both runs: {after_n} KiB)"
    );
    assert!(
        after_n < RSS_BOUND_KB,
        "bus tail peaked at {after_n} KiB on a {mib} MiB log"
    );
}
