//! The host socket's request line (`<state_root>/broker/broker.sock`): which
//! request it is and, for `publish`, the checked topic, payload and id.
//! Pure: `host_socket.rs` reads the line and carries the request out; this
//! file only parses, so it is fuzzed (`fuzz/`) and table-tested alone.
//!
//! ```text
//! session | status | publish {"topic":T,"payload":ANY,"id"?:ANY} | stream {...}
//! ```

use serde_json::Value;

use super::frame::{AckKind, BrokerFrame, ClientFrame};
use super::reason::Reason;

/// The request line that opens a host bus session.
pub const SESSION_REQUEST: &str = "session";

/// Room for `publish ` and the request's own fields beyond the frame limit.
pub const HOST_REQUEST_OVERHEAD: usize = 1024;

/// One request line, classified. Surrounding whitespace (and the newline)
/// is ignored; bytes that are not UTF-8 are replaced, so such a line is
/// `Unknown` or a publish whose JSON does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRequest {
    Session,
    Status,
    /// The JSON after `publish `, still to check with [`parse_publish`].
    Publish(String),
    /// The JSON after `stream `, checked by `stream/`.
    Stream(String),
    Unknown,
}

/// Classify a request line (with or without its newline).
pub fn parse_request(line: &[u8]) -> HostRequest {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text == SESSION_REQUEST {
        HostRequest::Session
    } else if text == "status" {
        HostRequest::Status
    } else if let Some(body) = text.strip_prefix("publish ") {
        HostRequest::Publish(body.to_owned())
    } else if let Some(body) = text.strip_prefix("stream ") {
        HostRequest::Stream(body.to_owned())
    } else {
        HostRequest::Unknown
    }
}

/// A host publish that passed every check, ready to append.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPublish {
    pub topic: String,
    pub payload: Value,
    /// Present (even `null`) is echoed in the ack.
    pub id: Option<Value>,
}

/// Check a `publish` request's JSON: an object with `topic` and `payload`
/// (and an optional `id`), at most `frame_limit` bytes, a valid topic.
/// A refusal is the ack frame to reply with (it echoes the id when one was
/// read).
pub fn parse_publish(body: &str, frame_limit: u32) -> Result<HostPublish, BrokerFrame> {
    let bad = |reason| BrokerFrame::ack_error(AckKind::Publish, reason, None);
    let mut value: Value = serde_json::from_str(body).map_err(|_| bad(Reason::InvalidJson))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(bad(Reason::InvalidJson));
    };
    obj.insert("type".into(), Value::from("publish"));
    let (topic, payload, id) = match serde_json::from_value::<ClientFrame>(value) {
        Ok(ClientFrame::Publish { topic, payload, id }) => (topic, payload, id),
        Ok(_) | Err(_) => return Err(bad(Reason::BadFrame)),
    };
    if body.len() > frame_limit as usize {
        return Err(BrokerFrame::ack_error(
            AckKind::Publish,
            Reason::FrameTooLarge,
            id,
        ));
    }
    if let Err(reason) = super::topic::check(&topic) {
        return Err(BrokerFrame::ack_error(AckKind::Publish, reason, id));
    }
    Ok(HostPublish { topic, payload, id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    #[test]
    fn request_table() {
        let mut out = String::new();
        for line in [
            "session\n",
            "  status \r\n",
            "status please",
            "publish {\"topic\":\"t\",\"payload\":1}",
            "publish {\"topic\":\"t\",\"payload\":1,\"id\":null}",
            "publish {\"topic\":\"t\",\"payload\":1,\"type\":\"ack\"}",
            "publish {\"topic\":\"\",\"payload\":1,\"id\":7}",
            "publish {\"topic\":\"t\"}",
            "publish [1]",
            "publish nope",
            "publish",
            "stream {\"vm\":\"web\"}",
            "\u{0}session",
        ] {
            let req = parse_request(line.as_bytes());
            let shown = match &req {
                HostRequest::Publish(body) => match parse_publish(body, 64) {
                    Ok(p) => format!("publish ok {p:?}"),
                    Err(f) => format!("publish refused {}", serde_json::to_string(&f).unwrap()),
                },
                other => format!("{other:?}"),
            };
            writeln!(out, "{line:?} -> {shown}").unwrap();
        }
        insta::assert_snapshot!(out, @r#"
        "session\n" -> Session
        "  status \r\n" -> Status
        "status please" -> Unknown
        "publish {\"topic\":\"t\",\"payload\":1}" -> publish ok HostPublish { topic: "t", payload: Number(1), id: None }
        "publish {\"topic\":\"t\",\"payload\":1,\"id\":null}" -> publish ok HostPublish { topic: "t", payload: Number(1), id: Some(Null) }
        "publish {\"topic\":\"t\",\"payload\":1,\"type\":\"ack\"}" -> publish ok HostPublish { topic: "t", payload: Number(1), id: None }
        "publish {\"topic\":\"\",\"payload\":1,\"id\":7}" -> publish refused {"type":"ack","ack":"publish","status":"error","id":7,"reason":"invalid_topic"}
        "publish {\"topic\":\"t\"}" -> publish refused {"type":"ack","ack":"publish","status":"error","reason":"bad_frame"}
        "publish [1]" -> publish refused {"type":"ack","ack":"publish","status":"error","reason":"invalid_json"}
        "publish nope" -> publish refused {"type":"ack","ack":"publish","status":"error","reason":"invalid_json"}
        "publish" -> Unknown
        "stream {\"vm\":\"web\"}" -> Stream("{\"vm\":\"web\"}")
        "\0session" -> Unknown
        "#);
    }

    /// Found by the `request` fuzz target: a 105-digit integer parsed to a
    /// float one ulp off (serde_json's fast path), so the payload the log
    /// holds and a subscriber reads back differed from the publisher's. With
    /// `float_roundtrip` every number survives parse -> write -> parse.
    #[test]
    fn payload_numbers_survive_the_broker_exactly() {
        let big = format!("{}0", "9".repeat(104)); // the fuzzer's number
        for number in [
            big.as_str(),
            "1e105",
            "0.1",
            "2.2250738585072014e-308",
            "1.7976931348623157e308",
        ] {
            let body = format!(r#"{{"topic":"bs","payload":{{"n":{number}}}}}"#);
            let p = parse_publish(&body, u32::MAX).unwrap();
            let again = serde_json::json!({"topic": p.topic, "payload": p.payload}).to_string();
            assert_eq!(parse_publish(&again, u32::MAX), Ok(p), "{number}");
        }
    }

    #[test]
    fn the_size_limit_counts_the_json_and_echoes_the_id() {
        let body = format!(
            r#"{{"topic":"t","payload":"{}","id":"a"}}"#,
            "x".repeat(100)
        );
        let refused = parse_publish(&body, 64).unwrap_err();
        assert_eq!(
            refused,
            BrokerFrame::ack_error(
                AckKind::Publish,
                Reason::FrameTooLarge,
                Some(Value::from("a"))
            )
        );
        assert!(parse_publish(&body, body.len() as u32).is_ok());
    }
}
