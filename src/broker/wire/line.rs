//! A bounded line reader for the handshake: bytes arrive in chunks of any
//! size, at most `max` bytes (newline included) are ever buffered, and the
//! bytes after the newline are handed back (a client may send its hello and
//! its first frames in one write). Pure: the caller does the reading.

/// Result of feeding bytes to a [`LineReader`].
#[derive(Debug, PartialEq, Eq)]
pub enum LinePush {
    /// No newline yet; feed more.
    NeedMore,
    /// A complete line (newline included) and the bytes that followed it.
    Line { line: Vec<u8>, rest: Vec<u8> },
    /// `max` bytes arrived without a newline.
    TooLong,
}

/// Accumulates one line up to a fixed limit.
#[derive(Debug)]
pub struct LineReader {
    buf: Vec<u8>,
    max: usize,
}

impl LineReader {
    pub fn new(max: usize) -> Self {
        LineReader {
            buf: Vec::with_capacity(max),
            max,
        }
    }

    /// Feed the next chunk. After `Line` or `TooLong` the reader is done and
    /// must not be fed again.
    pub fn push(&mut self, chunk: &[u8]) -> LinePush {
        let room = self.max - self.buf.len();
        let window = &chunk[..chunk.len().min(room)];
        match window.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.buf.extend_from_slice(&window[..=i]);
                LinePush::Line {
                    line: std::mem::take(&mut self.buf),
                    rest: chunk[i + 1..].to_vec(),
                }
            }
            None if chunk.len() >= room => {
                self.buf.clear();
                LinePush::TooLong
            }
            None => {
                self.buf.extend_from_slice(window);
                LinePush::NeedMore
            }
        }
    }

    /// Bytes buffered so far (never more than `max`).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn line_split_anywhere_gives_the_same_line_and_rest() {
        let input = b"hello vm:web\n\x00\x00\x00\x02{}";
        for cut in 0..=input.len() {
            let mut r = LineReader::new(512);
            let first = r.push(&input[..cut]);
            let got = match first {
                LinePush::NeedMore => r.push(&input[cut..]),
                LinePush::Line { line, mut rest } => {
                    rest.extend_from_slice(&input[cut..]);
                    LinePush::Line { line, rest }
                }
                LinePush::TooLong => panic!("too long at cut {cut}"),
            };
            assert_eq!(
                got,
                LinePush::Line {
                    line: b"hello vm:web\n".to_vec(),
                    rest: b"\x00\x00\x00\x02{}".to_vec()
                },
                "cut {cut}"
            );
        }
    }

    #[test]
    fn limit_counts_the_newline() {
        let mut r = LineReader::new(4);
        assert!(matches!(r.push(b"abc\n"), LinePush::Line { .. }));
        let mut r = LineReader::new(4);
        assert_eq!(r.push(b"abcd\n"), LinePush::TooLong);
        let mut r = LineReader::new(4);
        assert_eq!(r.push(b"ab"), LinePush::NeedMore);
        assert_eq!(r.push(b"cd"), LinePush::TooLong);
    }

    /// Feed `chunks` until the reader is done: the line and every byte
    /// after it (handed back or never fed), or why not.
    fn outcome(chunks: &[&[u8]], max: usize) -> (Option<Vec<u8>>, Vec<u8>, bool) {
        let mut r = LineReader::new(max);
        for (i, chunk) in chunks.iter().enumerate() {
            match r.push(chunk) {
                LinePush::NeedMore => assert!(r.buffered() < max),
                LinePush::TooLong => return (None, Vec::new(), true),
                LinePush::Line { line, mut rest } => {
                    chunks[i + 1..]
                        .iter()
                        .for_each(|c| rest.extend_from_slice(c));
                    return (Some(line), rest, false);
                }
            }
        }
        (None, Vec::new(), false)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whole, split anywhere, and one byte at a time: the same outcome
        /// (the fuzz target `hello` does the same at depth, docs/FUZZING.md).
        #[test]
        fn whole_split_and_single_bytes_agree(
            stream in prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), any::<u8>()], 0..80),
            cut in any::<prop::sample::Index>(),
            max in 1usize..40,
        ) {
            let whole = outcome(&[&stream], max);
            let c = cut.index(stream.len() + 1);
            prop_assert_eq!(&outcome(&[&stream[..c], &stream[c..]], max), &whole);
            let singles: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(&outcome(&singles, max), &whole);
        }
    }

    #[test]
    fn a_long_stream_never_buffers_more_than_max() {
        let mut r = LineReader::new(512);
        let chunk = [b'x'; 100];
        let mut pushes = 0;
        loop {
            pushes += 1;
            match r.push(&chunk) {
                LinePush::NeedMore => assert!(r.buffered() <= 512),
                LinePush::TooLong => break,
                LinePush::Line { .. } => panic!("no newline was sent"),
            }
        }
        assert_eq!(pushes, 6);
    }
}
