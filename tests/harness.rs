//! The test harness's own promises, which the other suites lean on: leased
//! ports are unique, outside the kernel's ephemeral range and locked against
//! other test processes; a process behind a guard dies with the guard.

mod common;

use std::collections::BTreeSet;
use std::fs::OpenOptions;

use nix::fcntl::{Flock, FlockArg};

#[test]
fn leased_ports_are_distinct_below_the_ephemeral_range_and_locked() {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ports: Vec<u16> = (0..40).map(|_| common::free_port()).collect();
    let distinct: BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        ports.len(),
        "a port was leased twice: {ports:?}"
    );
    for port in ports {
        assert!(port < low, "{port} is in the ephemeral range (from {low})");
        // Another process (or thread) trying the same lease is refused.
        let file = OpenOptions::new()
            .write(true)
            .open(format!("/tmp/castra-test-ports/{port}"))
            .unwrap();
        assert!(
            Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err(),
            "port {port} is not locked while leased"
        );
        std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("leased port {port} does not bind: {e}"));
    }
}
