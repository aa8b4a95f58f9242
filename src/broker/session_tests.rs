//! Session transcripts: `> input` lines fed at a time, `< effect` lines returned.

use super::*;
use crate::broker::frame::ClientFrame;
use serde_json::json;

fn registry(vm: &str) -> TokenLookup {
    match vm {
        "web" => TokenLookup::Known("s3cret".into()),
        "db" => TokenLookup::Known("other".into()),
        "broken" => TokenLookup::Unreadable("permission denied".into()),
        _ => TokenLookup::Unknown,
    }
}

/// One scripted step: time, input.
type Step<'a> = (u64, Input<'a>);

fn transcript(config: SessionConfig, steps: Vec<Step<'_>>) -> String {
    let mut s = Session::new("s1".into(), config, 0);
    let mut out = String::new();
    for (now, input) in steps {
        let shown = match &input {
            Input::Line(l) => format!("line {:?}", String::from_utf8_lossy(l)),
            Input::LineTooLong => "line-too-long".into(),
            Input::Frame(Ok(f)) => format!("frame {}", serde_json::to_string(f).unwrap()),
            Input::Frame(Err(r)) => format!("bad-frame {r}"),
            Input::Tick => "tick".into(),
            Input::PeerGone(r) => format!("peer-gone {r}"),
            Input::Shutdown => "shutdown".into(),
        };
        out.push_str(&format!("> @{now} {shown}\n"));
        for e in s.on_input(now, input, &registry) {
            let line = match e {
                Effect::Reply(r) => format!("reply {:?}", r.to_line()),
                Effect::Send(f) => format!("send {}", serde_json::to_string(&f).unwrap()),
                Effect::Record(r) => format!("record {r:?}"),
                Effect::Close(r) => format!("close {r}"),
            };
            out.push_str(&format!("< {line}\n"));
        }
    }
    out.push_str(&format!(
        "= {:?} terminal={} deadline={:?}\n",
        s.state(),
        s.is_terminal(),
        s.deadline_ms()
    ));
    out
}

fn cfg() -> SessionConfig {
    SessionConfig {
        hello_timeout_ms: 5_000,
        heartbeat_timeout_ms: 15_000,
        allow_tokenless_handshake: false,
    }
}

#[test]
fn granted_session_heartbeats_then_times_out() {
    insta::assert_snapshot!(transcript(cfg(), vec![
        (10, Input::Line(b"hello vm:web capabilities=bus-v1 token=s3cret\n")),
        (5_000, Input::Frame(Ok(ClientFrame::Heartbeat))),
        (10_000, Input::Tick),
        (19_999, Input::Tick),
        (20_000, Input::Tick),
        (20_001, Input::Frame(Ok(ClientFrame::Heartbeat))),
    ]), @r#"
        > @10 line "hello vm:web capabilities=bus-v1 token=s3cret\n"
        < reply "ok session=s1"
        < record Granted { vm: "web", session: Some("s1"), capabilities: ["bus-v1"] }
        > @5000 frame {"type":"heartbeat"}
        < send {"type":"ack","ack":"heartbeat","status":"ok"}
        < record Heartbeat { vm: "web", session: "s1" }
        > @10000 tick
        > @19999 tick
        > @20000 tick
        < send {"type":"bye","reason":"heartbeat_timeout"}
        < record Closed { vm: "web", session: "s1", reason: HeartbeatTimeout }
        < close heartbeat_timeout
        > @20001 frame {"type":"heartbeat"}
        = Closed { reason: HeartbeatTimeout } terminal=true deadline=None
        "#);
}

#[test]
fn bus_frames_of_issue_4_are_unsupported_but_keep_the_session() {
    insta::assert_snapshot!(transcript(cfg(), vec![
        (0, Input::Line(b"hello vm:web capabilities=bus-v1 token=s3cret")),
        (1, Input::Frame(Ok(ClientFrame::Publish { topic: "t".into(), payload: json!({"x": 1}), id: Some(json!("p1")) }))),
        (2, Input::Frame(Ok(ClientFrame::Subscribe { topic: "broadcast".into() }))),
        (3, Input::Frame(Ok(ClientFrame::Unsubscribe { topic: "broadcast".into() }))),
        (4, Input::Frame(Ok(ClientFrame::Ack { seq: 1 }))),
        (5, Input::Line(b"hello again")),
        (6, Input::Shutdown),
    ]), @r#"
        > @0 line "hello vm:web capabilities=bus-v1 token=s3cret"
        < reply "ok session=s1"
        < record Granted { vm: "web", session: Some("s1"), capabilities: ["bus-v1"] }
        > @1 frame {"type":"publish","topic":"t","payload":{"x":1},"id":"p1"}
        < send {"type":"ack","ack":"publish","status":"error","id":"p1","reason":"unsupported"}
        > @2 frame {"type":"subscribe","topic":"broadcast"}
        < send {"type":"ack","ack":"subscribe","status":"error","reason":"unsupported"}
        > @3 frame {"type":"unsubscribe","topic":"broadcast"}
        < send {"type":"ack","ack":"unsubscribe","status":"error","reason":"unsupported"}
        > @4 frame {"type":"ack","seq":1}
        > @5 line "hello again"
        > @6 shutdown
        < send {"type":"bye","reason":"shutdown"}
        < record Closed { vm: "web", session: "s1", reason: Shutdown }
        < close shutdown
        = Closed { reason: Shutdown } terminal=true deadline=None
        "#);
}

#[test]
fn protocol_errors_close_with_error_then_bye() {
    for reason in [
        Reason::FrameTooLarge,
        Reason::EmptyFrame,
        Reason::InvalidJson,
        Reason::UnknownType,
        Reason::BadFrame,
    ] {
        let t = transcript(
            cfg(),
            vec![
                (
                    0,
                    Input::Line(b"hello vm:web capabilities=bus-v1 token=s3cret"),
                ),
                (1, Input::Frame(Err(reason))),
            ],
        );
        insta::assert_snapshot!(format!("{reason}"), t);
    }
}

#[test]
fn handshake_only_and_denials() {
    let mut out = String::new();
    for line in [
        &b"hello vm:web token=s3cret"[..],
        b"hello vm:web capabilities=zstd token=s3cret",
        b"hello vm:web token=wrong",
        b"hello vm:web",
        b"hello vm:web capabilities=bus-v1",
        b"hello vm:db token=s3cret",
        b"hello vm:ghost token=s3cret",
        b"hello vm:broken token=x",
        b"GET / HTTP/1.1",
        b"hello vm:\xff",
    ] {
        out.push_str(&transcript(
            cfg(),
            vec![(1, Input::Line(line)), (2, Input::Tick)],
        ));
        out.push('\n');
    }
    insta::assert_snapshot!(out, @r#"
        > @1 line "hello vm:web token=s3cret"
        < reply "ok"
        < record Granted { vm: "web", session: None, capabilities: [] }
        < close handshake_only
        > @2 tick
        = HandshakeOnly { vm: "web" } terminal=true deadline=None

        > @1 line "hello vm:web capabilities=zstd token=s3cret"
        < reply "ok"
        < record Granted { vm: "web", session: None, capabilities: ["zstd"] }
        < close handshake_only
        > @2 tick
        = HandshakeOnly { vm: "web" } terminal=true deadline=None

        > @1 line "hello vm:web token=wrong"
        < reply "error: bad_token"
        < record Denied { vm: Some("web"), reason: BadToken }
        < close bad_token
        > @2 tick
        = Denied { reason: BadToken } terminal=true deadline=None

        > @1 line "hello vm:web"
        < reply "error: missing_token"
        < record Denied { vm: Some("web"), reason: MissingToken }
        < close missing_token
        > @2 tick
        = Denied { reason: MissingToken } terminal=true deadline=None

        > @1 line "hello vm:web capabilities=bus-v1"
        < reply "error: missing_token"
        < record Denied { vm: Some("web"), reason: MissingToken }
        < close missing_token
        > @2 tick
        = Denied { reason: MissingToken } terminal=true deadline=None

        > @1 line "hello vm:db token=s3cret"
        < reply "error: bad_token"
        < record Denied { vm: Some("db"), reason: BadToken }
        < close bad_token
        > @2 tick
        = Denied { reason: BadToken } terminal=true deadline=None

        > @1 line "hello vm:ghost token=s3cret"
        < reply "error: unknown_vm"
        < record Denied { vm: Some("ghost"), reason: UnknownVm }
        < close unknown_vm
        > @2 tick
        = Denied { reason: UnknownVm } terminal=true deadline=None

        > @1 line "hello vm:broken token=x"
        < reply "error: internal_error"
        < record Denied { vm: Some("broken"), reason: InternalError }
        < close internal_error
        > @2 tick
        = Denied { reason: InternalError } terminal=true deadline=None

        > @1 line "GET / HTTP/1.1"
        < reply "error: malformed_hello"
        < record Denied { vm: None, reason: MalformedHello }
        < close malformed_hello
        > @2 tick
        = Denied { reason: MalformedHello } terminal=true deadline=None

        > @1 line "hello vm:�"
        < reply "error: malformed_hello"
        < record Denied { vm: None, reason: MalformedHello }
        < close malformed_hello
        > @2 tick
        = Denied { reason: MalformedHello } terminal=true deadline=None
        "#);
}

#[test]
fn tokenless_handshake_only_when_allowed() {
    let allow = SessionConfig {
        allow_tokenless_handshake: true,
        ..cfg()
    };
    let mut out = String::new();
    for line in [
        &b"hello vm:web"[..],
        b"hello vm:web capabilities=bus-v1",
        b"hello vm:web token=wrong",
        b"hello vm:ghost",
    ] {
        out.push_str(&transcript(allow, vec![(1, Input::Line(line))]));
    }
    insta::assert_snapshot!(out, @r#"
        > @1 line "hello vm:web"
        < reply "ok"
        < record Granted { vm: "web", session: None, capabilities: [] }
        < close handshake_only
        = HandshakeOnly { vm: "web" } terminal=true deadline=None
        > @1 line "hello vm:web capabilities=bus-v1"
        < reply "error: missing_token"
        < record Denied { vm: Some("web"), reason: MissingToken }
        < close missing_token
        = Denied { reason: MissingToken } terminal=true deadline=None
        > @1 line "hello vm:web token=wrong"
        < reply "error: bad_token"
        < record Denied { vm: Some("web"), reason: BadToken }
        < close bad_token
        = Denied { reason: BadToken } terminal=true deadline=None
        > @1 line "hello vm:ghost"
        < reply "error: unknown_vm"
        < record Denied { vm: Some("ghost"), reason: UnknownVm }
        < close unknown_vm
        = Denied { reason: UnknownVm } terminal=true deadline=None
        "#);
}

#[test]
fn awaiting_hello_endings() {
    let mut out = String::new();
    out.push_str(&transcript(
        cfg(),
        vec![
            (4_999, Input::Tick),
            (5_000, Input::Tick),
            (5_001, Input::Line(b"hello vm:web token=s3cret")),
        ],
    ));
    out.push_str(&transcript(cfg(), vec![(1, Input::LineTooLong)]));
    out.push_str(&transcript(
        cfg(),
        vec![
            (1, Input::Frame(Ok(ClientFrame::Heartbeat))),
            (2, Input::PeerGone(Reason::PeerClosed)),
        ],
    ));
    out.push_str(&transcript(cfg(), vec![(1, Input::Shutdown)]));
    insta::assert_snapshot!(out, @r#"
        > @4999 tick
        > @5000 tick
        < reply "error: hello_timeout"
        < record HelloTimeout
        < close hello_timeout
        > @5001 line "hello vm:web token=s3cret"
        = Denied { reason: HelloTimeout } terminal=true deadline=None
        > @1 line-too-long
        < reply "error: line_too_long"
        < record Denied { vm: None, reason: LineTooLong }
        < close line_too_long
        = Denied { reason: LineTooLong } terminal=true deadline=None
        > @1 frame {"type":"heartbeat"}
        > @2 peer-gone peer_closed
        < close peer_closed
        = Closed { reason: PeerClosed } terminal=true deadline=None
        > @1 shutdown
        < reply "error: shutdown"
        < close shutdown
        = Closed { reason: Shutdown } terminal=true deadline=None
        "#);
}

#[test]
fn open_session_endings() {
    let mut out = String::new();
    for input in [
        Input::PeerGone(Reason::PeerClosed),
        Input::PeerGone(Reason::IoError),
        Input::Shutdown,
    ] {
        out.push_str(&transcript(
            cfg(),
            vec![
                (
                    0,
                    Input::Line(b"hello vm:web capabilities=bus-v1 token=s3cret"),
                ),
                (1, input),
                (2, Input::Frame(Ok(ClientFrame::Heartbeat))),
            ],
        ));
    }
    insta::assert_snapshot!(out, @r#"
        > @0 line "hello vm:web capabilities=bus-v1 token=s3cret"
        < reply "ok session=s1"
        < record Granted { vm: "web", session: Some("s1"), capabilities: ["bus-v1"] }
        > @1 peer-gone peer_closed
        < record Closed { vm: "web", session: "s1", reason: PeerClosed }
        < close peer_closed
        > @2 frame {"type":"heartbeat"}
        = Closed { reason: PeerClosed } terminal=true deadline=None
        > @0 line "hello vm:web capabilities=bus-v1 token=s3cret"
        < reply "ok session=s1"
        < record Granted { vm: "web", session: Some("s1"), capabilities: ["bus-v1"] }
        > @1 peer-gone io_error
        < record Closed { vm: "web", session: "s1", reason: IoError }
        < close io_error
        > @2 frame {"type":"heartbeat"}
        = Closed { reason: IoError } terminal=true deadline=None
        > @0 line "hello vm:web capabilities=bus-v1 token=s3cret"
        < reply "ok session=s1"
        < record Granted { vm: "web", session: Some("s1"), capabilities: ["bus-v1"] }
        > @1 shutdown
        < send {"type":"bye","reason":"shutdown"}
        < record Closed { vm: "web", session: "s1", reason: Shutdown }
        < close shutdown
        > @2 frame {"type":"heartbeat"}
        = Closed { reason: Shutdown } terminal=true deadline=None
        "#);
}
