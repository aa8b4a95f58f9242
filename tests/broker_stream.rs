//! The broker's stream extension (docs/BUS.md section 11) against the real
//! `castra broker` with simulated guests: refusals on the host socket
//! (unknown VM, no session, no `exec-v1`), `stream_open` on the agent's own
//! session, impostor stream hellos refused (another VM's token, a wrong
//! token, a claimed id), bytes spliced exactly both ways, a guest unable to
//! start a stream, the `stream_*` events, and nothing in the bus log.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

use castra::broker::stream::wire::{self, Channel, Control};
use common::broker::{Broker, Guest, state_root};
use serde_json::json;

/// Send a host `stream` request; the reply line and the connection.
fn ask(b: &Broker, body: &str) -> (String, BufReader<UnixStream>) {
    let mut s = UnixStream::connect(b.socket()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    s.write_all(format!("stream {body}\n").as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    (line.trim_end().to_owned(), r)
}

fn stream_hello(port: u16, vm: &str, token: &str, id: &str) -> (String, Guest) {
    let mut g = Guest::connect(port);
    let reply = g.hello(&format!(
        "hello vm:{vm} capabilities=stream-v1 token={token} stream={id}"
    ));
    (reply, g)
}

fn read_frame(r: &mut impl Read) -> (Channel, Vec<u8>) {
    let mut h = [0u8; 5];
    r.read_exact(&mut h).unwrap();
    let (ch, len) = wire::check_header(h).unwrap();
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    (ch, body)
}

#[test]
fn streams_are_host_only_checked_and_spliced() {
    let root = state_root(&["web", "db", "old"]);
    let port = common::free_port();
    let b = Broker::start(root.path(), port, &[]);

    assert_eq!(ask(&b, r#"{"vm":"web"}"#).0, "error: not_connected");
    assert_eq!(ask(&b, r#"{"vm":"ghost"}"#).0, "error: unknown_vm");
    assert_eq!(ask(&b, "nonsense").0, "error: bad_request");
    let (_old, _) = Guest::session(port, "old", "tok-old");
    assert_eq!(ask(&b, r#"{"vm":"old"}"#).0, "error: exec_unsupported");

    // A guest cannot ask for a stream: there is no such client frame.
    let (mut db, _) = Guest::session(port, "db", "tok-db");
    db.send(&json!({"type":"stream_open","stream":"x"}));
    assert_eq!(db.frame()["reason"], "unknown_type");

    let mut web = Guest::connect(port);
    let reply = web.hello("hello vm:web capabilities=bus-v1,exec-v1 token=tok-web");
    assert!(reply.starts_with("ok session="), "{reply}");
    let host = std::thread::spawn({
        let b_socket = b.socket();
        move || {
            let mut s = UnixStream::connect(b_socket).unwrap();
            s.write_all(b"stream {\"vm\":\"web\",\"user\":\"tester\"}\n")
                .unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            (line.trim_end().to_owned(), r)
        }
    });
    let open = loop {
        let f = web.frame();
        if f["type"] == "stream_open" {
            break f;
        }
    };
    let id = open["stream"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);

    // Impostors: another VM's valid token, a wrong token, no stream-v1.
    assert_eq!(
        stream_hello(port, "db", "tok-db", &id).0,
        "error: unknown_stream"
    );
    assert_eq!(
        stream_hello(port, "web", "tok-db", &id).0,
        "error: unknown_stream"
    );
    let mut g = Guest::connect(port);
    let r = g.hello(&format!(
        "hello vm:web capabilities=bus-v1 token=tok-web stream={id}"
    ));
    assert_eq!(r, "error: unknown_stream");

    let (reply, agent) = stream_hello(port, "web", "tok-web", &id);
    assert_eq!(reply, format!("ok stream={id}"));
    // Claimed once.
    assert_eq!(
        stream_hello(port, "web", "tok-web", &id).0,
        "error: unknown_stream"
    );
    let (host_reply, mut host_r) = host.join().unwrap();
    assert_eq!(host_reply, format!("ok stream={id}"));
    let mut host_w = host_r.get_ref().try_clone().unwrap();
    let Guest {
        reader: mut agent_r,
        writer: mut agent_w,
        ..
    } = agent;

    // Host -> agent: the request and binary stdin, exactly.
    let request = Control::Exec {
        argv: vec!["cat".into()],
        env: [("SECRET".to_owned(), "hunter2".to_owned())].into(),
        cwd: None,
        tty: false,
        rows: None,
        cols: None,
        timeout_ms: None,
    };
    host_w.write_all(&wire::encode_control(&request)).unwrap();
    let stdin: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for chunk in stdin.chunks(wire::MAX_PAYLOAD) {
        host_w
            .write_all(&wire::encode(Channel::Input, chunk))
            .unwrap();
    }
    host_w
        .write_all(&wire::encode(Channel::Input, b""))
        .unwrap();
    let (ch, body) = read_frame(&mut agent_r);
    assert_eq!(ch, Channel::Control);
    assert_eq!(Control::parse(&body), Some(request));
    let mut got = Vec::new();
    loop {
        let (ch, body) = read_frame(&mut agent_r);
        assert_eq!(ch, Channel::Input);
        if body.is_empty() {
            break;
        }
        got.extend(body);
    }
    assert_eq!(got, stdin);

    // Agent -> host: output and the exit, then the agent ends its side.
    agent_w
        .write_all(&wire::encode(Channel::Stdout, b"\0out\xff"))
        .unwrap();
    agent_w
        .write_all(&wire::encode(Channel::Stderr, b"err"))
        .unwrap();
    agent_w
        .write_all(&wire::encode_control(&Control::Exit {
            code: 7,
            signal: None,
        }))
        .unwrap();
    agent_w.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        read_frame(&mut host_r),
        (Channel::Stdout, b"\0out\xff".to_vec())
    );
    assert_eq!(read_frame(&mut host_r), (Channel::Stderr, b"err".to_vec()));
    let (_, exit) = read_frame(&mut host_r);
    assert_eq!(
        Control::parse(&exit),
        Some(Control::Exit {
            code: 7,
            signal: None
        })
    );
    let mut rest = Vec::new();
    host_r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "EOF after the agent's side ended");
    drop(host_w);

    let closed = b.wait_event(|e| e["event"] == "stream_closed");
    assert_eq!(closed["vm"], "web");
    assert_eq!(closed["user"], "tester");
    assert_eq!(closed["kind"], "exec");
    assert_eq!(closed["argv"], json!(["cat"]));
    assert_eq!(closed["exit_code"], 7);
    assert_eq!(closed["bytes_in"], stdin.len() as u64);
    assert_eq!(closed["bytes_out"], 8);
    let refused = b
        .events()
        .into_iter()
        .filter(|e| e["event"] == "stream_refused")
        .count();
    assert_eq!(refused, 4, "{:?}", b.events());
    let events = std::fs::read_to_string(root.path().join("broker/events.jsonl")).unwrap();
    assert!(!events.contains("hunter2"), "env values never recorded");
    let bus = std::fs::read_to_string(root.path().join("logs/bus/all.log")).unwrap_or_default();
    assert!(
        !bus.contains("hunter2") && !bus.contains("out"),
        "nothing of a stream in the bus log: {bus}"
    );
}
