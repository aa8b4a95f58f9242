//! Shared by the fuzz targets: every input is fed three ways (whole, split
//! at a point the input itself chooses, one byte at a time) and the three
//! outcomes must agree. The first two bytes of a fuzz input pick the split
//! point; the rest is the stream.

pub use castra::broker::wire::frame::decode_all;
use castra::broker::wire::line::{LinePush, LineReader};

/// `(split point in 0..=stream.len(), stream)` from a fuzz input.
pub fn split_input(data: &[u8]) -> (usize, &[u8]) {
    if data.len() < 2 {
        return (0, data);
    }
    let seed = u16::from_be_bytes([data[0], data[1]]) as usize;
    let stream = &data[2..];
    (seed % (stream.len() + 1), stream)
}

/// The three feeds of `stream`: whole, split at `cut`, one byte per chunk.
pub fn feeds(stream: &[u8], cut: usize) -> [Vec<&[u8]>; 3] {
    [
        vec![stream],
        vec![&stream[..cut], &stream[cut..]],
        stream.chunks(1).collect(),
    ]
}

/// What a line reader made of a stream: the line and everything after it
/// (what the reader handed back plus what was never fed), or why not.
#[derive(Debug, PartialEq, Eq)]
pub enum LineOutcome {
    Line { line: Vec<u8>, rest: Vec<u8> },
    TooLong,
    NeedMore,
}

/// Feed `chunks` to a fresh `LineReader::new(max)` until it is done.
pub fn read_line(chunks: &[&[u8]], max: usize) -> LineOutcome {
    let mut r = LineReader::new(max);
    for (i, chunk) in chunks.iter().enumerate() {
        match r.push(chunk) {
            LinePush::NeedMore => assert!(r.buffered() < max, "buffered past the limit"),
            LinePush::TooLong => return LineOutcome::TooLong,
            LinePush::Line { line, mut rest } => {
                assert!(line.len() <= max, "a line longer than the limit");
                for c in &chunks[i + 1..] {
                    rest.extend_from_slice(c);
                }
                return LineOutcome::Line { line, rest };
            }
        }
    }
    LineOutcome::NeedMore
}

/// `read_line` over the three feeds; panics unless they agree.
pub fn read_line_three_ways(data: &[u8], max: usize) -> LineOutcome {
    let (cut, stream) = split_input(data);
    let [whole, split, singles] = feeds(stream, cut);
    let a = read_line(&whole, max);
    assert_eq!(a, read_line(&split, max), "split at {cut} disagrees");
    assert_eq!(a, read_line(&singles, max), "one-byte writes disagree");
    a
}
