//! Fuzz target: the host socket's request line. Read whole, split and one
//! byte at a time (all must agree), classified, and a `publish` checked: an
//! accepted one has a valid topic and fits the limit, and survives being
//! written back as JSON and checked again.
#![no_main]
use castra::broker::wire::frame::BrokerFrame;
use castra::broker::wire::request::{
    HOST_REQUEST_OVERHEAD, HostRequest, parse_publish, parse_request,
};
use castra::broker::wire::topic;
use castra_fuzz::{LineOutcome, read_line_three_ways};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

/// Small, so the fuzzer reaches the size refusals too.
const LIMIT: u32 = 256;

fuzz_target!(|data: &[u8]| {
    let max = LIMIT as usize + HOST_REQUEST_OVERHEAD;
    let LineOutcome::Line { line, .. } = read_line_three_ways(data, max) else {
        return;
    };
    let HostRequest::Publish(body) = parse_request(&line) else {
        return;
    };
    match parse_publish(&body, LIMIT) {
        Ok(p) => {
            assert!(body.len() <= LIMIT as usize);
            assert_eq!(topic::check(&p.topic), Ok(()));
            let mut again = json!({"topic": p.topic, "payload": p.payload});
            if let Some(id) = &p.id {
                again["id"] = id.clone();
            }
            let again = parse_publish(&again.to_string(), u32::MAX);
            assert_eq!(again, Ok(p), "publish round trip");
        }
        Err(BrokerFrame::Ack {
            reason: Some(_), ..
        }) => {}
        Err(other) => panic!("a refusal that is not an error ack: {other:?}"),
    }
});
