//! Fuzz target: the bus frame decoder and the frame parsers. The stream is
//! decoded whole, split, and one byte at a time (all three must give the
//! same bodies and the same error); each body is parsed as a client and as
//! a broker frame, and what parses must survive encode -> decode -> parse.
#![no_main]
use castra::broker::wire::frame::{self, BrokerFrame, ClientFrame};
use castra_fuzz::{decode_all, feeds, split_input};
use libfuzzer_sys::fuzz_target;

/// Small, so the fuzzer reaches `frame_too_large` too.
const LIMIT: u32 = 512;

fuzz_target!(|data: &[u8]| {
    let (cut, stream) = split_input(data);
    let [whole, split, singles] = feeds(stream, cut);
    let a = decode_all(&whole, LIMIT);
    assert_eq!(a, decode_all(&split, LIMIT), "split at {cut} disagrees");
    assert_eq!(a, decode_all(&singles, LIMIT), "one-byte writes disagree");
    for body in &a.0 {
        assert!(!body.is_empty() && body.len() <= LIMIT as usize);
        if let Ok(f) = ClientFrame::parse(body) {
            let bytes = frame::encode(&f);
            let (bodies, err) = decode_all(&[&bytes], u32::MAX);
            assert_eq!(err, None);
            assert_eq!(
                ClientFrame::parse(&bodies[0]),
                Ok(f),
                "client frame round trip"
            );
        }
        if let Ok(f) = BrokerFrame::parse(body) {
            let bytes = frame::encode(&f);
            let (bodies, err) = decode_all(&[&bytes], u32::MAX);
            assert_eq!(err, None);
            assert_eq!(
                BrokerFrame::parse(&bodies[0]),
                Ok(f),
                "broker frame round trip"
            );
        }
    }
});
