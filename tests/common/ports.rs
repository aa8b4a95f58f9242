//! TCP ports for test brokers and forwards, without the race of "bind port 0,
//! drop the listener, hope nobody takes it". The ports come from below the
//! kernel's ephemeral range (`ip_local_port_range`), so no outgoing connection
//! of this machine can be given one by accident, and each is leased with an
//! exclusive `flock` on `/tmp/castra-test-ports/<port>` held until the test
//! process exits, so no other test (thread or process) is handed it too.
//! Before it is handed out a port must also bind on 127.0.0.1 right now.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

/// The lowest port leased (above the usual services and castra's default 7750).
const FIRST: u16 = 10000;
const LOCK_DIR: &str = "/tmp/castra-test-ports";

/// Leases held by this process, released when it exits.
static HELD: Mutex<Vec<Flock<File>>> = Mutex::new(Vec::new());
static CALLS: AtomicU64 = AtomicU64::new(0);

/// The first port of the kernel's ephemeral range (32768 when unreadable).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A port no other test holds, that binds now and that the kernel never hands
/// to an outgoing connection. Panics (naming why) when none is left.
pub fn free_port() -> u16 {
    let low = ephemeral_low();
    assert!(
        low > FIRST + 100,
        "ip_local_port_range starts at {low}: no room below it for test ports"
    );
    let dir = Path::new(LOCK_DIR);
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{LOCK_DIR}: {e}"));
    // Anyone's tests may lease here (the directory is shared like /tmp itself).
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777));
    let span = u64::from(low - FIRST);
    // Spread processes apart so they rarely probe the same ports.
    let start = u64::from(std::process::id()) * 7919 + CALLS.fetch_add(1, Ordering::Relaxed);
    for i in 0..span {
        let port = FIRST + ((start + i) % span) as u16;
        let Ok(file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o666));
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap().push(lock);
            return port;
        }
    }
    panic!("no free test port in {FIRST}..{low}");
}
