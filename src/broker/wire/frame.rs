//! Frames of a bus session (protocol v1, steps 4-6): a 4-byte big-endian
//! length, then one UTF-8 JSON object. Owns the incremental decoder (bytes
//! may arrive split anywhere; a bad length is rejected before any
//! allocation), the encoder, and the typed client and broker frames. Pure:
//! no sockets, and no decision about what a frame means for a session.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reason::Reason;

/// Default largest frame body, in bytes.
pub const DEFAULT_FRAME_LIMIT: u32 = 64 * 1024;

/// Incremental frame decoder. Feed it whatever bytes arrived; it yields each
/// complete body in order.
#[derive(Debug)]
pub struct Decoder {
    limit: u32,
    header: [u8; 4],
    header_len: usize,
    /// Body of the frame in progress; allocated once its length is validated.
    body: Option<Vec<u8>>,
    need: usize,
}

impl Decoder {
    pub fn new(limit: u32) -> Self {
        Decoder {
            limit,
            header: [0; 4],
            header_len: 0,
            body: None,
            need: 0,
        }
    }

    /// Consume bytes from the front of `input` until one frame body is
    /// complete (returned) or `input` is empty (`Ok(None)`). Call again with
    /// the remaining input to get further frames. After an error the
    /// decoder's state is unspecified: close the session.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, Reason> {
        loop {
            if let Some(body) = &mut self.body {
                let take = self.need.min(input.len());
                body.extend_from_slice(&input[..take]);
                *input = &input[take..];
                self.need -= take;
                if self.need > 0 {
                    return Ok(None);
                }
                self.header_len = 0;
                return Ok(self.body.take());
            }
            if input.is_empty() {
                return Ok(None);
            }
            let take = (4 - self.header_len).min(input.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&input[..take]);
            self.header_len += take;
            *input = &input[take..];
            if self.header_len < 4 {
                return Ok(None);
            }
            let len = u32::from_be_bytes(self.header);
            if len == 0 {
                return Err(Reason::EmptyFrame);
            }
            if len > self.limit {
                return Err(Reason::FrameTooLarge);
            }
            self.need = len as usize;
            self.body = Some(Vec::with_capacity(self.need));
        }
    }

    /// Whether a frame is partly received.
    pub fn in_progress(&self) -> bool {
        self.header_len > 0
    }
}

/// Every frame body in `chunks` fed in order to one decoder, and the error
/// that stopped it (`None`: all consumed). For tests and the fuzz targets,
/// which feed one stream whole, split and byte by byte and compare.
pub fn decode_all(chunks: &[&[u8]], limit: u32) -> (Vec<Vec<u8>>, Option<Reason>) {
    let mut d = Decoder::new(limit);
    let mut out = Vec::new();
    for chunk in chunks {
        let mut input = *chunk;
        loop {
            match d.decode(&mut input) {
                Ok(Some(body)) => out.push(body),
                Ok(None) => break,
                Err(r) => return (out, Some(r)),
            }
        }
    }
    (out, None)
}

/// Encode a serializable frame (fields in declaration order, `type` first).
pub fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    // Frames are plain structs and `Value`s: serializing them cannot fail.
    let body = serde_json::to_vec(frame).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// What a client (guest or host tool) may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Publish {
        topic: String,
        payload: Value,
        /// Present (even `null`) is echoed; absent is left out of the ack.
        #[serde(
            default,
            deserialize_with = "present",
            skip_serializing_if = "Option::is_none"
        )]
        id: Option<Value>,
    },
    Subscribe {
        topic: String,
    },
    Unsubscribe {
        topic: String,
    },
    Ack {
        seq: u64,
    },
    Heartbeat,
}

impl ClientFrame {
    /// Parse a frame body: invalid JSON or a non-object is `invalid_json`, an
    /// unknown `type` is `unknown_type`, a known type with missing or
    /// mistyped fields is `bad_frame`. Extra fields are ignored.
    pub fn parse(body: &[u8]) -> Result<ClientFrame, Reason> {
        parse_tagged(
            body,
            &["publish", "subscribe", "unsubscribe", "ack", "heartbeat"],
        )
    }
}

/// Which client frame an ack answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckKind {
    Publish,
    Subscribe,
    Unsubscribe,
    Heartbeat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    Ok,
    Error,
}

/// What the broker sends in a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BrokerFrame {
    Ack {
        ack: AckKind,
        status: AckStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(
            default,
            deserialize_with = "present",
            skip_serializing_if = "Option::is_none"
        )]
        id: Option<Value>,
        /// The topic a subscribe or unsubscribe ack answers (so acks
        /// correlate without relying on order).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<Reason>,
    },
    /// One delivery to a subscriber; `from` is `vm:<name>` or `host`.
    Message {
        seq: u64,
        topic: String,
        from: String,
        ts_ms: u64,
        payload: Value,
    },
    Error {
        reason: Reason,
    },
    Bye {
        reason: Reason,
    },
    /// To an agent that announced `exec-v1`: connect stream `stream`
    /// (docs/BUS.md section 11). Never sent to host sessions.
    StreamOpen {
        stream: String,
    },
}

/// A field that is present is `Some`, even when it is `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl BrokerFrame {
    pub fn ack_ok(ack: AckKind) -> Self {
        BrokerFrame::Ack {
            ack,
            status: AckStatus::Ok,
            seq: None,
            id: None,
            topic: None,
            reason: None,
        }
    }

    /// A subscribe or unsubscribe ack, naming its topic.
    pub fn ack_topic(ack: AckKind, topic: &str, reason: Option<Reason>) -> Self {
        BrokerFrame::Ack {
            ack,
            status: if reason.is_some() {
                AckStatus::Error
            } else {
                AckStatus::Ok
            },
            seq: None,
            id: None,
            topic: Some(topic.to_string()),
            reason,
        }
    }

    /// A successful publish ack, sent once the record is durable.
    pub fn ack_published(seq: u64, id: Option<Value>) -> Self {
        BrokerFrame::Ack {
            ack: AckKind::Publish,
            status: AckStatus::Ok,
            seq: Some(seq),
            id,
            topic: None,
            reason: None,
        }
    }

    pub fn ack_error(ack: AckKind, reason: Reason, id: Option<Value>) -> Self {
        BrokerFrame::Ack {
            ack,
            status: AckStatus::Error,
            seq: None,
            id,
            topic: None,
            reason: Some(reason),
        }
    }

    /// Parse a broker frame (clients). Frame types this build does not know
    /// are `unknown_type`, which a client should skip rather than fail on.
    pub fn parse(body: &[u8]) -> Result<BrokerFrame, Reason> {
        parse_tagged(body, &["ack", "message", "error", "bye", "stream_open"])
    }
}

fn parse_tagged<T: serde::de::DeserializeOwned>(body: &[u8], known: &[&str]) -> Result<T, Reason> {
    let value: Value = serde_json::from_slice(body).map_err(|_| Reason::InvalidJson)?;
    let kind = match value.as_object() {
        None => return Err(Reason::InvalidJson),
        Some(obj) => obj.get("type").and_then(Value::as_str),
    };
    match kind {
        Some(k) if known.contains(&k) => {
            serde_json::from_value(value).map_err(|_| Reason::BadFrame)
        }
        Some(_) => Err(Reason::UnknownType),
        None => Err(Reason::BadFrame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_null_id_is_echoed_and_an_absent_one_left_out() {
        let with_null =
            ClientFrame::parse(br#"{"type":"publish","topic":"t","payload":1,"id":null}"#);
        let Ok(ClientFrame::Publish { id, .. }) = with_null else {
            panic!("{with_null:?}");
        };
        assert_eq!(id, Some(Value::Null));
        let ack = serde_json::to_string(&BrokerFrame::ack_published(3, id)).unwrap();
        assert_eq!(
            ack,
            r#"{"type":"ack","ack":"publish","status":"ok","seq":3,"id":null}"#
        );
        assert_eq!(
            BrokerFrame::parse(ack.as_bytes()),
            Ok(BrokerFrame::ack_published(3, Some(Value::Null)))
        );
        let absent = ClientFrame::parse(br#"{"type":"publish","topic":"t","payload":1}"#);
        let Ok(ClientFrame::Publish { id, .. }) = absent else {
            panic!("{absent:?}");
        };
        let ack = serde_json::to_string(&BrokerFrame::ack_published(4, id)).unwrap();
        assert_eq!(
            ack,
            r#"{"type":"ack","ack":"publish","status":"ok","seq":4}"#
        );
    }

    #[test]
    fn zero_and_oversized_lengths_are_rejected() {
        assert_eq!(decode_all(&[&[0, 0, 0, 0]], 16).1, Some(Reason::EmptyFrame));
        assert_eq!(
            decode_all(&[&[0, 0, 0, 17]], 16).1,
            Some(Reason::FrameTooLarge)
        );
        // 4 GiB announced: rejected from the header alone, nothing allocated.
        assert_eq!(
            decode_all(&[&[0xff, 0xff, 0xff, 0xff]], DEFAULT_FRAME_LIMIT).1,
            Some(Reason::FrameTooLarge)
        );
        let (bodies, err) = decode_all(&[&frame(&[b'x'; 16])], 16);
        assert_eq!((bodies.len(), err), (1, None));
    }

    #[test]
    fn encoding_is_length_then_json() {
        let bytes = encode(&BrokerFrame::ack_ok(AckKind::Heartbeat));
        insta::assert_snapshot!(format!("{:?} {}", &bytes[..4], String::from_utf8_lossy(&bytes[4..])), @r#"
            [0, 0, 0, 46] {"type":"ack","ack":"heartbeat","status":"ok"}
            "#);
    }

    #[test]
    fn client_frames_parse() {
        let cases = [
            json!({"type":"heartbeat"}),
            json!({"type":"heartbeat","extra":1}),
            json!({"type":"publish","topic":"t","payload":{"a":1},"id":"x1"}),
            json!({"type":"publish","topic":"t"}),
            json!({"type":"subscribe","topic":"broadcast"}),
            json!({"type":"unsubscribe","topic":"broadcast"}),
            json!({"type":"ack","seq":7}),
            json!({"type":"ack","seq":"7"}),
            json!({"type":"dance"}),
            json!({"kind":"heartbeat"}),
            json!([1, 2]),
        ];
        let mut out = String::new();
        for c in cases {
            let parsed = ClientFrame::parse(c.to_string().as_bytes());
            out.push_str(&format!("{c} -> {parsed:?}\n"));
        }
        out.push_str(&format!("not json -> {:?}\n", ClientFrame::parse(b"{nope")));
        out.push_str(&format!(
            "bad utf8 -> {:?}\n",
            ClientFrame::parse(b"\"\xff\"")
        ));
        insta::assert_snapshot!(out, @r#"
            {"type":"heartbeat"} -> Ok(Heartbeat)
            {"extra":1,"type":"heartbeat"} -> Ok(Heartbeat)
            {"id":"x1","payload":{"a":1},"topic":"t","type":"publish"} -> Ok(Publish { topic: "t", payload: Object {"a": Number(1)}, id: Some(String("x1")) })
            {"topic":"t","type":"publish"} -> Err(BadFrame)
            {"topic":"broadcast","type":"subscribe"} -> Ok(Subscribe { topic: "broadcast" })
            {"topic":"broadcast","type":"unsubscribe"} -> Ok(Unsubscribe { topic: "broadcast" })
            {"seq":7,"type":"ack"} -> Ok(Ack { seq: 7 })
            {"seq":"7","type":"ack"} -> Err(BadFrame)
            {"type":"dance"} -> Err(UnknownType)
            {"kind":"heartbeat"} -> Err(BadFrame)
            [1,2] -> Err(InvalidJson)
            not json -> Err(InvalidJson)
            bad utf8 -> Err(InvalidJson)
            "#);
    }

    #[test]
    fn broker_frames_round_trip() {
        for f in [
            BrokerFrame::ack_ok(AckKind::Heartbeat),
            BrokerFrame::ack_error(AckKind::Publish, Reason::Unsupported, Some(json!(3))),
            BrokerFrame::ack_published(9, Some(json!("p1"))),
            BrokerFrame::Message {
                seq: 9,
                topic: "broadcast".into(),
                from: "vm:web".into(),
                ts_ms: 1_700_000_000_000,
                payload: json!({"n": [1, "two"]}),
            },
            BrokerFrame::Error {
                reason: Reason::FrameTooLarge,
            },
            BrokerFrame::Bye {
                reason: Reason::Shutdown,
            },
        ] {
            let bytes = encode(&f);
            let (bodies, err) = decode_all(&[&bytes], DEFAULT_FRAME_LIMIT);
            assert_eq!(err, None);
            assert_eq!(BrokerFrame::parse(&bodies[0]), Ok(f));
        }
        assert_eq!(
            BrokerFrame::parse(br#"{"type":"message","seq":1}"#),
            Err(Reason::BadFrame)
        );
        assert_eq!(
            BrokerFrame::parse(br#"{"type":"news"}"#),
            Err(Reason::UnknownType)
        );
    }

    fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
        // Valid frames, then sometimes a bad header or trailing partial bytes.
        (
            prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 0..8),
            prop::option::of(prop::collection::vec(any::<u8>(), 1..8)),
        )
            .prop_map(|(bodies, tail)| {
                let mut out = Vec::new();
                for b in bodies {
                    out.extend(frame(&b));
                }
                if let Some(t) = tail {
                    out.extend(t);
                }
                out
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn whole_and_split_decoding_agree(
            stream in arb_stream(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let whole = decode_all(&[&stream], 32);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&stream[last..p]);
                last = p;
            }
            chunks.push(&stream[last..]);
            prop_assert_eq!(decode_all(&chunks, 32), whole.clone());
            // Byte by byte as well.
            let singles: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(decode_all(&singles, 32), whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_split_agrees(
            stream in prop::collection::vec(any::<u8>(), 0..200),
            cut in any::<prop::sample::Index>(),
        ) {
            let whole = decode_all(&[&stream], 64);
            let c = cut.index(stream.len() + 1);
            prop_assert_eq!(decode_all(&[&stream[..c], &stream[c..]], 64), whole);
        }
    }
}
