//! What a bus consumer does with a delivered `message` frame: print it as one
//! line in the chosen [`Format`], then hand back the ack to send. The one
//! piece the host's `castra bus subscribe` and the guest's `castra-agent
//! subscribe` share, so their output formats cannot drift apart; std and
//! serde only, like the rest of the wire code the static agent uses. Each
//! caller keeps its own session, heartbeats, subscribe acks, and what a
//! closed stdout means (the host ends with 0, the agent with an error).
//! [`render_line`] is also what `castra bus tail` prints for a log record.

use std::io::{self, Write};

use serde_json::Value;

use super::stamp::utc;
use super::wire::frame::{BrokerFrame, ClientFrame};

/// How a consumer prints a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `<utc> #<seq> <from> <topic> <payload>` ([`render_line`]).
    Line,
    /// The `message` frame as one JSON object.
    Json,
}

/// One readable line: `<utc> #<seq> <from> <topic> [id=<id>] <payload>`
/// (what `tail` prints for a log record and `subscribe` for a message).
pub fn render_line(
    ts_ms: u64,
    seq: u64,
    from: &str,
    topic: &str,
    id: Option<&Value>,
    payload: &Value,
) -> String {
    let id = id.map(|i| format!(" id={i}")).unwrap_or_default();
    format!("{} #{seq} {from} {topic}{id} {payload}", utc(ts_ms))
}

/// If `frame` is a message: print it as one line in `format`, flush, and
/// return the ack to send now that it is printed (`{"type":"ack","seq":N}`,
/// which the broker reads as cumulative: everything up to N). Any other
/// frame: nothing printed, `Ok(None)`. An error means `out` failed (a
/// closed stdout): the message was not printed and must not be acked.
pub fn print_message(
    frame: &BrokerFrame,
    format: Format,
    out: &mut dyn Write,
) -> io::Result<Option<ClientFrame>> {
    let BrokerFrame::Message {
        seq,
        topic,
        from,
        ts_ms,
        payload,
    } = frame
    else {
        return Ok(None);
    };
    let line = match format {
        Format::Line => render_line(*ts_ms, *seq, from, topic, None, payload),
        // A frame holds strings, numbers and JSON values only: it always serializes.
        Format::Json => serde_json::to_string(frame).unwrap_or_default(),
    };
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(Some(ClientFrame::Ack { seq: *seq }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::wire::frame::AckKind;
    use crate::broker::wire::reason::Reason;
    use serde_json::json;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_message_is_printed_in_each_format_then_acked() {
        let message = BrokerFrame::Message {
            seq: 42,
            topic: "vm:web".into(),
            from: "host".into(),
            ts_ms: 1_714_566_896_789,
            payload: json!({"job": "build", "n": 1}),
        };
        let mut out = Vec::new();
        for format in [Format::Line, Format::Json] {
            let ack = print_message(&message, format, &mut out).unwrap();
            assert_eq!(ack, Some(ClientFrame::Ack { seq: 42 }));
        }
        insta::assert_snapshot!(String::from_utf8(out).unwrap(), @r#"
        2024-05-01T12:34:56.789Z #42 host vm:web {"job":"build","n":1}
        {"type":"message","seq":42,"topic":"vm:web","from":"host","ts_ms":1714566896789,"payload":{"job":"build","n":1}}
        "#);
        // The JSON form is the frame itself, as the broker sent it.
        let mut json_line = Vec::new();
        print_message(&message, Format::Json, &mut json_line).unwrap();
        assert_eq!(BrokerFrame::parse(json_line.trim_ascii()), Ok(message));
    }

    #[test]
    fn other_frames_print_nothing_and_a_closed_output_acks_nothing() {
        let mut out = Vec::new();
        for other in [
            BrokerFrame::ack_ok(AckKind::Heartbeat),
            BrokerFrame::ack_topic(AckKind::Subscribe, "vm:db", Some(Reason::ForbiddenTopic)),
            BrokerFrame::Error {
                reason: Reason::InvalidJson,
            },
            BrokerFrame::Bye {
                reason: Reason::SlowConsumer,
            },
        ] {
            for format in [Format::Line, Format::Json] {
                assert_eq!(print_message(&other, format, &mut out).unwrap(), None);
            }
        }
        assert!(out.is_empty());

        // A reader that went away (`| head` exited): the write fails.
        let (mut writer, reader) = UnixStream::pair().unwrap();
        drop(reader);
        let message = BrokerFrame::Message {
            seq: 1,
            topic: "t".into(),
            from: "vm:a".into(),
            ts_ms: 0,
            payload: Value::Null,
        };
        assert!(print_message(&message, Format::Line, &mut writer).is_err());
    }
}
