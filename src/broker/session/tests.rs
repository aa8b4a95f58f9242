//! Session transcripts: `> input` lines fed at a time, `< effect` lines
//! returned, `=` lines for the unacked window opening or closing and for the
//! final state.

use super::*;
use crate::broker::wire::frame::{BrokerFrame, ClientFrame};
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
            Input::Committed { id, result } => format!("committed id={id:?} {result:?}"),
            Input::Evict(r) => format!("evict {r}"),
            Input::HostSession => "host-session".into(),
            Input::Deliver { seq, .. } => format!("deliver seq={seq}"),
        };
        out.push_str(&format!("> @{now} {shown}\n"));
        let was_open = matches!(s.state(), State::Open(_));
        let could = s.can_deliver();
        for e in s.on_input(now, input, &registry) {
            let line = match e {
                Effect::Reply(r) => format!("reply {:?}", r.to_line()),
                Effect::Send(f) => format!("send {}", serde_json::to_string(&f).unwrap()),
                Effect::Record(r) => format!("record {r:?}"),
                Effect::Publish { topic, payload, id } => {
                    format!("publish topic={topic:?} payload={payload} id={id:?}")
                }
                Effect::Subscribe(t) => format!("hub subscribe {t:?}"),
                Effect::Unsubscribe(t) => format!("hub unsubscribe {t:?}"),
                Effect::Deliver { seq, frame } => {
                    format!("deliver seq={seq} {}", String::from_utf8_lossy(&frame[4..]))
                }
                Effect::Close(r) => format!("close {r}"),
            };
            out.push_str(&format!("< {line}\n"));
        }
        if let (true, State::Open(open)) = (was_open, s.state())
            && could != s.can_deliver()
        {
            let word = if s.can_deliver() { "open" } else { "closed" };
            out.push_str(&format!(
                "= window {word} ({} unacked)\n",
                open.unacked.len()
            ));
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
        unacked_window: 2,
    }
}

/// A delivery of message `seq` on `topic` (what the hub hands a session).
fn deliver(seq: u64, topic: &str) -> Input<'static> {
    let frame = crate::broker::wire::frame::encode(&BrokerFrame::Message {
        seq,
        topic: topic.into(),
        from: "host".into(),
        ts_ms: 1_000 + seq,
        payload: json!(seq),
    });
    Input::Deliver {
        seq,
        frame: frame.into(),
    }
}

fn ack(seq: u64) -> Input<'static> {
    frame(ClientFrame::Ack { seq })
}

#[test]
fn the_unacked_window_pauses_delivery_until_acks_come() {
    insta::assert_snapshot!(transcript(cfg(), vec![
        (0, Input::Line(b"hello vm:web capabilities=bus-v1 token=s3cret")),
        (1, sub("jobs")),
        (2, deliver(5, "jobs")),
        (3, deliver(6, "jobs")),
        (4, ack(5)),
        (5, deliver(7, "jobs")),
        (6, ack(7)),
        (7, ack(3)),
        (8, deliver(8, "jobs")),
        (9, deliver(9, "jobs")),
        (10, deliver(10, "jobs")),
        (11, ack(10)),
    ]), @r#"
        > @0 line "hello vm:web capabilities=bus-v1 token=s3cret"
        < reply "ok session=s1"
        < record Granted { vm: "web", session: Some("s1"), capabilities: ["bus-v1"] }
        > @1 frame {"type":"subscribe","topic":"jobs"}
        < hub subscribe "jobs"
        < record Subscriptions { vm: "web", session: "s1", count: 1 }
        < send {"type":"ack","ack":"subscribe","status":"ok","topic":"jobs"}
        > @2 deliver seq=5
        < deliver seq=5 {"type":"message","seq":5,"topic":"jobs","from":"host","ts_ms":1005,"payload":5}
        > @3 deliver seq=6
        < deliver seq=6 {"type":"message","seq":6,"topic":"jobs","from":"host","ts_ms":1006,"payload":6}
        = window closed (2 unacked)
        > @4 frame {"type":"ack","seq":5}
        = window open (1 unacked)
        > @5 deliver seq=7
        < deliver seq=7 {"type":"message","seq":7,"topic":"jobs","from":"host","ts_ms":1007,"payload":7}
        = window closed (2 unacked)
        > @6 frame {"type":"ack","seq":7}
        = window open (0 unacked)
        > @7 frame {"type":"ack","seq":3}
        > @8 deliver seq=8
        < deliver seq=8 {"type":"message","seq":8,"topic":"jobs","from":"host","ts_ms":1008,"payload":8}
        > @9 deliver seq=9
        < deliver seq=9 {"type":"message","seq":9,"topic":"jobs","from":"host","ts_ms":1009,"payload":9}
        = window closed (2 unacked)
        > @10 deliver seq=10
        < deliver seq=10 {"type":"message","seq":10,"topic":"jobs","from":"host","ts_ms":1010,"payload":10}
        > @11 frame {"type":"ack","seq":10}
        = window open (0 unacked)
        = Open(Open { client: Guest, vm: "web", session: "s1", last_heard_ms: 11, subscriptions: {"jobs"}, acked_seq: Some(10), unacked: [] }) terminal=false deadline=Some(15011)
        "#);
}

#[test]
fn a_host_session_subscribes_to_any_topic_and_publishes_as_the_host() {
    insta::assert_snapshot!(transcript(cfg(), vec![
        (0, Input::HostSession),
        (1, sub("vm:web")),
        (2, sub("")),
        (3, frame(ClientFrame::Publish { topic: "vm:db".into(), payload: json!({"job": 1}), id: None })),
        (4, Input::Committed { id: None, result: Ok(12) }),
        (5, deliver(12, "vm:web")),
        (6, Input::HostSession),
        (7, Input::Line(b"hello vm:web capabilities=bus-v1 token=s3cret")),
        (20_000, Input::Tick),
    ]), @r#"
        > @0 host-session
        < reply "ok session=s1"
        < record Granted { vm: "host", session: Some("s1"), capabilities: ["bus-v1"] }
        > @1 frame {"type":"subscribe","topic":"vm:web"}
        < hub subscribe "vm:web"
        < record Subscriptions { vm: "host", session: "s1", count: 1 }
        < send {"type":"ack","ack":"subscribe","status":"ok","topic":"vm:web"}
        > @2 frame {"type":"subscribe","topic":""}
        < send {"type":"ack","ack":"subscribe","status":"error","topic":"","reason":"invalid_topic"}
        > @3 frame {"type":"publish","topic":"vm:db","payload":{"job":1}}
        < publish topic="vm:db" payload={"job":1} id=None
        > @4 committed id=None Ok(12)
        < send {"type":"ack","ack":"publish","status":"ok","seq":12}
        < record Published { vm: None, seq: 12 }
        > @5 deliver seq=12
        < deliver seq=12 {"type":"message","seq":12,"topic":"vm:web","from":"host","ts_ms":1012,"payload":12}
        > @6 host-session
        > @7 line "hello vm:web capabilities=bus-v1 token=s3cret"
        > @20000 tick
        < send {"type":"bye","reason":"heartbeat_timeout"}
        < record Decision { vm: "host", session: "s1", reason: HeartbeatTimeout, action: Disconnect, attempt: 0 }
        < hub unsubscribe "vm:web"
        < record Subscriptions { vm: "host", session: "s1", count: 0 }
        < record Closed { vm: "host", session: "s1", reason: HeartbeatTimeout }
        < close heartbeat_timeout
        = Closed { reason: HeartbeatTimeout } terminal=true deadline=None
        "#);
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
        < record Decision { vm: "web", session: "s1", reason: HeartbeatTimeout, action: Disconnect, attempt: 0 }
        < record Closed { vm: "web", session: "s1", reason: HeartbeatTimeout }
        < close heartbeat_timeout
        > @20001 frame {"type":"heartbeat"}
        = Closed { reason: HeartbeatTimeout } terminal=true deadline=None
        "#);
}

fn frame(f: ClientFrame) -> Input<'static> {
    Input::Frame(Ok(f))
}

fn sub(topic: &str) -> Input<'static> {
    frame(ClientFrame::Subscribe {
        topic: topic.into(),
    })
}

#[test]
fn publish_is_acked_only_when_committed() {
    insta::assert_snapshot!(transcript(cfg(), vec![
        (0, Input::Line(b"hello vm:web capabilities=bus-v1 token=s3cret")),
        (1, frame(ClientFrame::Publish { topic: "jobs".into(), payload: json!({"x": 1}), id: Some(json!("p1")) })),
        (2, frame(ClientFrame::Publish { topic: "".into(), payload: json!(null), id: Some(json!(2)) })),
        (3, frame(ClientFrame::Publish { topic: "vm:db".into(), payload: json!("hi"), id: None })),
        (4, Input::Committed { id: Some(json!("p1")), result: Ok(41) }),
        (5, Input::Committed { id: None, result: Err(Reason::StorageError) }),
        (6, Input::Line(b"hello again")),
        (7, Input::Shutdown),
    ]), @r#"
        > @0 line "hello vm:web capabilities=bus-v1 token=s3cret"
        < reply "ok session=s1"
        < record Granted { vm: "web", session: Some("s1"), capabilities: ["bus-v1"] }
        > @1 frame {"type":"publish","topic":"jobs","payload":{"x":1},"id":"p1"}
        < publish topic="jobs" payload={"x":1} id=Some(String("p1"))
        > @2 frame {"type":"publish","topic":"","payload":null,"id":2}
        < send {"type":"ack","ack":"publish","status":"error","id":2,"reason":"invalid_topic"}
        > @3 frame {"type":"publish","topic":"vm:db","payload":"hi"}
        < publish topic="vm:db" payload="hi" id=None
        > @4 committed id=Some(String("p1")) Ok(41)
        < send {"type":"ack","ack":"publish","status":"ok","seq":41,"id":"p1"}
        < record Published { vm: Some("web"), seq: 41 }
        > @5 committed id=None Err(StorageError)
        < send {"type":"ack","ack":"publish","status":"error","reason":"storage_error"}
        > @6 line "hello again"
        > @7 shutdown
        < send {"type":"bye","reason":"shutdown"}
        < record Closed { vm: "web", session: "s1", reason: Shutdown }
        < close shutdown
        = Closed { reason: Shutdown } terminal=true deadline=None
        "#);
}

#[test]
fn subscriptions_are_owned_and_cleared_on_every_close() {
    let hello = || Input::Line(b"hello vm:web capabilities=bus-v1 token=s3cret");
    let mut out = transcript(
        cfg(),
        vec![
            (0, hello()),
            (1, sub("broadcast")),
            (2, sub("broadcast")),
            (3, sub("vm:web")),
            (4, sub("vm:db")),
            (5, sub("bad\ttopic")),
            (
                6,
                frame(ClientFrame::Unsubscribe {
                    topic: "never".into(),
                }),
            ),
            (
                7,
                frame(ClientFrame::Unsubscribe {
                    topic: "broadcast".into(),
                }),
            ),
            (8, frame(ClientFrame::Ack { seq: 7 })),
            (9, frame(ClientFrame::Ack { seq: 3 })),
            (20_000, Input::Tick),
            (24_000, Input::Tick),
        ],
    );
    out.push('\n');
    out.push_str(&transcript(
        cfg(),
        vec![
            (0, hello()),
            (1, sub("jobs")),
            (2, Input::Evict(Reason::SlowConsumer)),
        ],
    ));
    out.push('\n');
    out.push_str(&transcript(
        cfg(),
        vec![
            (0, hello()),
            (1, sub("jobs")),
            (2, Input::PeerGone(Reason::PeerClosed)),
        ],
    ));
    insta::assert_snapshot!(out, @r#"
        > @0 line "hello vm:web capabilities=bus-v1 token=s3cret"
        < reply "ok session=s1"
        < record Granted { vm: "web", session: Some("s1"), capabilities: ["bus-v1"] }
        > @1 frame {"type":"subscribe","topic":"broadcast"}
        < hub subscribe "broadcast"
        < record Subscriptions { vm: "web", session: "s1", count: 1 }
        < send {"type":"ack","ack":"subscribe","status":"ok","topic":"broadcast"}
        > @2 frame {"type":"subscribe","topic":"broadcast"}
        < send {"type":"ack","ack":"subscribe","status":"ok","topic":"broadcast"}
        > @3 frame {"type":"subscribe","topic":"vm:web"}
        < hub subscribe "vm:web"
        < record Subscriptions { vm: "web", session: "s1", count: 2 }
        < send {"type":"ack","ack":"subscribe","status":"ok","topic":"vm:web"}
        > @4 frame {"type":"subscribe","topic":"vm:db"}
        < send {"type":"ack","ack":"subscribe","status":"error","topic":"vm:db","reason":"forbidden_topic"}
        > @5 frame {"type":"subscribe","topic":"bad\ttopic"}
        < send {"type":"ack","ack":"subscribe","status":"error","topic":"bad\ttopic","reason":"invalid_topic"}
        > @6 frame {"type":"unsubscribe","topic":"never"}
        < send {"type":"ack","ack":"unsubscribe","status":"ok","topic":"never"}
        > @7 frame {"type":"unsubscribe","topic":"broadcast"}
        < hub unsubscribe "broadcast"
        < record Subscriptions { vm: "web", session: "s1", count: 1 }
        < send {"type":"ack","ack":"unsubscribe","status":"ok","topic":"broadcast"}
        > @8 frame {"type":"ack","seq":7}
        > @9 frame {"type":"ack","seq":3}
        > @20000 tick
        < send {"type":"bye","reason":"heartbeat_timeout"}
        < record Decision { vm: "web", session: "s1", reason: HeartbeatTimeout, action: Disconnect, attempt: 0 }
        < hub unsubscribe "vm:web"
        < record Subscriptions { vm: "web", session: "s1", count: 0 }
        < record Closed { vm: "web", session: "s1", reason: HeartbeatTimeout }
        < close heartbeat_timeout
        > @24000 tick
        = Closed { reason: HeartbeatTimeout } terminal=true deadline=None

        > @0 line "hello vm:web capabilities=bus-v1 token=s3cret"
        < reply "ok session=s1"
        < record Granted { vm: "web", session: Some("s1"), capabilities: ["bus-v1"] }
        > @1 frame {"type":"subscribe","topic":"jobs"}
        < hub subscribe "jobs"
        < record Subscriptions { vm: "web", session: "s1", count: 1 }
        < send {"type":"ack","ack":"subscribe","status":"ok","topic":"jobs"}
        > @2 evict slow_consumer
        < send {"type":"bye","reason":"slow_consumer"}
        < hub unsubscribe "jobs"
        < record Subscriptions { vm: "web", session: "s1", count: 0 }
        < record Closed { vm: "web", session: "s1", reason: SlowConsumer }
        < close slow_consumer
        = Closed { reason: SlowConsumer } terminal=true deadline=None

        > @0 line "hello vm:web capabilities=bus-v1 token=s3cret"
        < reply "ok session=s1"
        < record Granted { vm: "web", session: Some("s1"), capabilities: ["bus-v1"] }
        > @1 frame {"type":"subscribe","topic":"jobs"}
        < hub subscribe "jobs"
        < record Subscriptions { vm: "web", session: "s1", count: 1 }
        < send {"type":"ack","ack":"subscribe","status":"ok","topic":"jobs"}
        > @2 peer-gone peer_closed
        < hub unsubscribe "jobs"
        < record Subscriptions { vm: "web", session: "s1", count: 0 }
        < record Closed { vm: "web", session: "s1", reason: PeerClosed }
        < close peer_closed
        = Closed { reason: PeerClosed } terminal=true deadline=None
        "#);
}

#[test]
fn subscription_cap() {
    let mut steps = vec![(
        0,
        Input::Line(&b"hello vm:web capabilities=bus-v1 token=s3cret"[..]),
    )];
    let topics: Vec<String> = (0..=crate::broker::wire::topic::MAX_SUBSCRIPTIONS)
        .map(|i| format!("t{i}"))
        .collect();
    for t in &topics {
        steps.push((1, sub(t)));
    }
    steps.push((2, sub("t0")));
    let out = transcript(cfg(), steps);
    let lines: Vec<&str> = out.lines().collect();
    insta::assert_snapshot!(lines[lines.len() - 6..].join("\n"), @r#"
        < send {"type":"ack","ack":"subscribe","status":"ok","topic":"t63"}
        > @1 frame {"type":"subscribe","topic":"t64"}
        < send {"type":"ack","ack":"subscribe","status":"error","topic":"t64","reason":"too_many_subscriptions"}
        > @2 frame {"type":"subscribe","topic":"t0"}
        < send {"type":"ack","ack":"subscribe","status":"ok","topic":"t0"}
        = Open(Open { client: Guest, vm: "web", session: "s1", last_heard_ms: 2, subscriptions: {"t0", "t1", "t10", "t11", "t12", "t13", "t14", "t15", "t16", "t17", "t18", "t19", "t2", "t20", "t21", "t22", "t23", "t24", "t25", "t26", "t27", "t28", "t29", "t3", "t30", "t31", "t32", "t33", "t34", "t35", "t36", "t37", "t38", "t39", "t4", "t40", "t41", "t42", "t43", "t44", "t45", "t46", "t47", "t48", "t49", "t5", "t50", "t51", "t52", "t53", "t54", "t55", "t56", "t57", "t58", "t59", "t6", "t60", "t61", "t62", "t63", "t7", "t8", "t9"}, acked_seq: None, unacked: [] }) terminal=false deadline=Some(15002)
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
