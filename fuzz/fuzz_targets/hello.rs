//! Fuzz target: the guest port's handshake line. The bytes go through the
//! bounded line reader whole, split and one byte at a time (all three must
//! give the same line and the same bytes after it); the line is parsed as a
//! hello and as a stream hello, and a parsed hello must survive
//! `to_line` -> `parse`.
#![no_main]
use castra::broker::stream::wire::hello_stream;
use castra::broker::wire::hello::{self, MAX_HELLO_LINE};
use castra_fuzz::{LineOutcome, read_line_three_ways};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let LineOutcome::Line { line, .. } = read_line_three_ways(data, MAX_HELLO_LINE) else {
        return;
    };
    let _ = hello_stream(&line);
    if let Ok(h) = hello::parse(&line) {
        assert!(hello::valid_vm_name(&h.vm));
        let again = hello::parse(h.to_line().as_bytes());
        assert_eq!(again, Ok(h), "hello round trip");
    }
});
