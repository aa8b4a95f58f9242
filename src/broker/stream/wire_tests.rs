//! Tests of the stream wire format: encodings (snapshots), header checks,
//! and the splice scanner fed whole and split at every point.

use super::*;
use std::fmt::Write;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn encodings() {
    let mut out = String::new();
    let exec = Control::Exec {
        argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: [("K".to_owned(), "V".to_owned())].into(),
        cwd: Some("/tmp".into()),
        tty: false,
        rows: None,
        cols: None,
        timeout_ms: Some(5000),
    };
    let entry = Control::Entry(Entry {
        kind: EntryKind::File,
        path: "a/b.txt".into(),
        mode: 0o644,
        mtime: 1_700_000_000,
        size: Some(3),
        target: None,
    });
    for msg in [
        exec,
        Control::Signal {
            signal: "INT".into(),
        },
        Control::Resize { rows: 24, cols: 80 },
        Control::Started { pid: 42 },
        Control::Exit {
            code: 130,
            signal: Some(2),
        },
        Control::Error {
            code: 127,
            message: "nope: not found".into(),
        },
        Control::Put {
            path: "/tmp".into(),
        },
        Control::Get {
            path: "/etc".into(),
            recursive: true,
        },
        entry,
        Control::EntryEnd {
            sha256: "ab".into(),
        },
        Control::Done { bytes: 3 },
    ] {
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(Control::parse(json.as_bytes()), Some(msg));
        writeln!(out, "{json}").unwrap();
    }
    writeln!(out, "{}", hex(&encode(Channel::Stdout, b"hi\0\xff"))).unwrap();
    writeln!(out, "{}", hex(&encode(Channel::Input, b""))).unwrap();
    writeln!(
        out,
        "{}",
        serde_json::to_string(&StreamOpen::new("ab12")).unwrap()
    )
    .unwrap();
    let req = StreamRequest {
        vm: "web".into(),
        user: "alice".into(),
    };
    writeln!(out, "{}", req.to_line()).unwrap();
    insta::assert_snapshot!(out, @r#"
    {"type":"exec","argv":["sh","-c","echo hi"],"env":{"K":"V"},"cwd":"/tmp","tty":false,"timeout_ms":5000}
    {"type":"signal","signal":"INT"}
    {"type":"resize","rows":24,"cols":80}
    {"type":"started","pid":42}
    {"type":"exit","code":130,"signal":2}
    {"type":"error","code":127,"message":"nope: not found"}
    {"type":"put","path":"/tmp"}
    {"type":"get","path":"/etc","recursive":true}
    {"type":"entry","kind":"file","path":"a/b.txt","mode":420,"mtime":1700000000,"size":3}
    {"type":"entry_end","sha256":"ab"}
    {"type":"done","bytes":3}
    0000000502686900ff
    0000000101
    {"type":"stream_open","stream":"ab12"}
    stream {"vm":"web","user":"alice"}
    "#);
}

#[test]
fn headers_are_checked_before_reading() {
    assert_eq!(check_header([0, 0, 0, 0, 0]), Err(FrameError::Empty));
    assert_eq!(check_header([0, 0, 0, 1, 2]), Ok((Channel::Stdout, 0)));
    assert_eq!(
        check_header([0, 1, 0, 1, 0]),
        Ok((Channel::Control, MAX_PAYLOAD))
    );
    assert_eq!(
        check_header([0, 1, 0, 2, 0]),
        Err(FrameError::TooLarge(MAX_LEN + 1))
    );
    assert_eq!(
        check_header([0xff, 0xff, 0xff, 0xff, 1]),
        Err(FrameError::TooLarge(u32::MAX))
    );
    assert_eq!(
        check_header([0, 0, 0, 1, 9]),
        Err(FrameError::BadChannel(9))
    );
}

#[test]
fn replies() {
    assert_eq!(parse_reply("ok stream=ab\n"), Ok("ab".into()));
    assert_eq!(parse_reply("ok stream="), Err(None));
    assert_eq!(
        parse_reply("error: exec_unsupported\n"),
        Err(Some(Refusal::Unsupported))
    );
    assert_eq!(parse_reply("error: what"), Err(None));
    for r in [
        Refusal::BadRequest,
        Refusal::UnknownVm,
        Refusal::NotConnected,
        Refusal::Unsupported,
        Refusal::Timeout,
        Refusal::UnknownStream,
    ] {
        assert_eq!(Refusal::from_word(r.as_str()), Some(r));
    }
    assert_eq!(
        hello_stream(b"hello vm:web capabilities=stream-v1 token=t stream=00ff\n"),
        Some("00ff\n".trim().to_owned())
    );
    assert_eq!(hello_stream(b"hello vm:web capabilities=bus-v1"), None);
}

#[test]
fn scanner_agrees_whole_and_split() {
    let mut stream = Vec::new();
    stream.extend(encode_control(&Control::Started { pid: 7 }));
    stream.extend(encode(Channel::Stdout, &[0u8; 1000]));
    stream.extend(encode(Channel::Stderr, b"err"));
    stream.extend(encode_control(&Control::Exit {
        code: 3,
        signal: None,
    }));
    let mut whole = Scanner::default();
    whole.observe(&stream);
    assert_eq!(whole.data_bytes, 1003);
    assert_eq!(whole.exit_code(), Some(3));
    assert_eq!(whole.controls.len(), 2);
    for split in 0..stream.len() {
        let mut s = Scanner::default();
        s.observe(&stream[..split]);
        s.observe(&stream[split..]);
        assert_eq!(
            (s.data_bytes, &s.controls, s.broken),
            (whole.data_bytes, &whole.controls, false),
            "split at {split}"
        );
    }
    let mut bad = Scanner::default();
    bad.observe(&[0, 0, 0, 0, 0, 1]);
    assert!(bad.broken);
}
