//! The handshake's text lines (protocol v1, steps 1-3): the greeting, the
//! hello grammar and the reply lines. Pure: parsing and formatting only; the
//! decision (known VM? token right?) belongs to `session`, reading sockets to
//! `server` and the agent.
//!
//! ```text
//! hello vm:<name> [capabilities=<cap>[,<cap>...]] [token=<secret>] [boot=<mark>:<ms>[,...]]
//! ```
//! `boot` carries the guest's boot marks (`init:412,net:450,agent:480,hello:530`):
//! milliseconds of guest uptime at which each stage began, for the boot
//! timeline (docs/BOOT.md). Mark names are `[a-z_]`.
//! Words are separated by ASCII whitespace; a trailing `\r` is ignored. After
//! `vm:<name>` come `key=value` words in any order; unknown keys are ignored,
//! a word without `=` or a repeated known key is `malformed_hello`.

use super::reason::Reason;

/// The name host sessions and host publishes carry (`from` is `host`, the log `host.log`);
/// castra.toml reserves it (no VM may be named `host`).
pub const HOST: &str = "host";

/// The first line the broker sends on every connection.
pub const GREETING: &str = "castra-broker 1 ready";
/// What every greeting starts with (clients check only this prefix).
pub const GREETING_PREFIX: &str = "castra-broker ";
/// Longest hello line accepted, newline included.
pub const MAX_HELLO_LINE: usize = 512;
/// The capability that asks for a framed bus session.
pub const CAP_BUS_V1: &str = "bus-v1";
/// Longest VM name accepted in a hello.
pub const MAX_VM_NAME: usize = 64;

/// One parsed hello line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub vm: String,
    pub capabilities: Vec<String>,
    pub token: Option<String>,
    /// Guest boot marks: (stage, guest uptime in ms), in the order sent.
    pub boot: Vec<(String, u64)>,
}

impl Hello {
    /// Whether the client asked for a bus session.
    pub fn wants_bus(&self) -> bool {
        self.capabilities.iter().any(|c| c == CAP_BUS_V1)
    }

    /// The line a client sends (without the newline).
    pub fn to_line(&self) -> String {
        let mut line = format!("hello vm:{}", self.vm);
        if !self.capabilities.is_empty() {
            line.push_str(" capabilities=");
            line.push_str(&self.capabilities.join(","));
        }
        if let Some(token) = &self.token {
            line.push_str(" token=");
            line.push_str(token);
        }
        if !self.boot.is_empty() {
            let marks: Vec<String> = self
                .boot
                .iter()
                .map(|(k, ms)| format!("{k}:{ms}"))
                .collect();
            line.push_str(" boot=");
            line.push_str(&marks.join(","));
        }
        line
    }
}

/// Parse one hello line (with or without its trailing newline).
pub fn parse(line: &[u8]) -> Result<Hello, Reason> {
    if line.len() > MAX_HELLO_LINE {
        return Err(Reason::LineTooLong);
    }
    let text = std::str::from_utf8(line).map_err(|_| Reason::MalformedHello)?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    let mut words = text.split_ascii_whitespace();
    if words.next() != Some("hello") {
        return Err(Reason::MalformedHello);
    }
    let vm = words
        .next()
        .and_then(|w| w.strip_prefix("vm:"))
        .ok_or(Reason::MalformedHello)?;
    if !valid_vm_name(vm) {
        return Err(Reason::MalformedHello);
    }
    let mut capabilities: Option<Vec<String>> = None;
    let mut token: Option<String> = None;
    let mut boot: Option<Vec<(String, u64)>> = None;
    for word in words {
        let (key, value) = word.split_once('=').ok_or(Reason::MalformedHello)?;
        match key {
            "capabilities" => {
                if capabilities.is_some() {
                    return Err(Reason::MalformedHello);
                }
                capabilities = Some(
                    value
                        .split(',')
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned)
                        .collect(),
                );
            }
            "token" => {
                if token.is_some() || value.is_empty() {
                    return Err(Reason::MalformedHello);
                }
                token = Some(value.to_owned());
            }
            "boot" => {
                if boot.is_some() {
                    return Err(Reason::MalformedHello);
                }
                boot = Some(parse_marks(value).ok_or(Reason::MalformedHello)?);
            }
            _ => {}
        }
    }
    Ok(Hello {
        vm: vm.to_owned(),
        capabilities: capabilities.unwrap_or_default(),
        token,
        boot: boot.unwrap_or_default(),
    })
}

/// `init:412,agent:480` -> [("init", 412), ("agent", 480)].
fn parse_marks(value: &str) -> Option<Vec<(String, u64)>> {
    value
        .split(',')
        .map(|mark| {
            let (name, ms) = mark.split_once(':')?;
            let name_ok =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            let ms = ms.parse().ok()?;
            name_ok.then(|| (name.to_owned(), ms))
        })
        .collect()
}

/// A VM name is safe to use as a directory name: `[A-Za-z0-9._-]`, at most
/// 64 bytes, not starting with `.` (so never `.` or `..`).
pub fn valid_vm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_VM_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A reply line of the handshake, as the broker sends it and clients read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `ok session=<id>`: bus granted, frames follow.
    Session(String),
    /// `ok`: handshake-only guest recorded; the broker closes.
    Ok,
    /// `error: <reason>`; the broker closes.
    Error(Reason),
}

impl Reply {
    /// The line without its newline.
    pub fn to_line(&self) -> String {
        match self {
            Reply::Session(id) => format!("ok session={id}"),
            Reply::Ok => "ok".to_owned(),
            Reply::Error(reason) => format!("error: {reason}"),
        }
    }

    /// Parse a reply line; `None` when it is none of the three forms (an
    /// unknown `error:` word parses as `internal_error` so clients still stop).
    pub fn parse(line: &str) -> Option<Reply> {
        let line = line.trim_end_matches(['\n', '\r']);
        if line == "ok" {
            return Some(Reply::Ok);
        }
        if let Some(id) = line.strip_prefix("ok session=") {
            return (!id.is_empty()).then(|| Reply::Session(id.to_owned()));
        }
        let word = line.strip_prefix("error:")?.trim();
        Some(Reply::Error(
            Reason::from_word(word).unwrap_or(Reason::InternalError),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    fn check(cases: &[&str]) -> String {
        let mut out = String::new();
        for case in cases {
            let result = match parse(case.as_bytes()) {
                Ok(h) if h.boot.is_empty() => {
                    format!("vm={} caps={:?} token={:?}", h.vm, h.capabilities, h.token)
                }
                Ok(h) => format!("vm={} boot={:?}", h.vm, h.boot),
                Err(r) => format!("error: {r}"),
            };
            let shown = if case.len() > 60 {
                format!("{:?}... ({} bytes)", &case[..40], case.len())
            } else {
                format!("{case:?}")
            };
            writeln!(out, "{shown} -> {result}").unwrap();
        }
        out
    }

    #[test]
    fn hello_table() {
        let long_name = format!("hello vm:{}", "a".repeat(65));
        let too_long = format!("hello vm:web x={}", "y".repeat(600));
        insta::assert_snapshot!(check(&[
            "hello vm:web",
            "hello vm:web\n",
            "hello vm:web\r\n",
            "hello vm:web capabilities=bus-v1 token=s3cret",
            "hello vm:web token=s3cret capabilities=bus-v1,zstd",
            "hello   vm:db-1\ttoken=abc",
            "hello vm:web capabilities=",
            "hello vm:web capabilities=,bus-v1,",
            "hello vm:web color=blue token=t",
            "hello vm:web token=a=b",
            "hello vm:web token=",
            "hello vm:web token=a token=b",
            "hello vm:web capabilities=a capabilities=b",
            "hello vm:web stray",
            "hello vm:",
            "hello web",
            "hello",
            "",
            "HELLO vm:web",
            "helo vm:web",
            "hello vm:../etc",
            "hello vm:.hidden",
            "hello vm:a/b",
            "hello vm:web_2.x",
            "hello vm:web boot=init:412,net:450,agent:480,hello:530",
            "hello vm:web boot=init:x",
            "hello vm:web boot=Init:1",
            "hello vm:web boot=init:1 boot=agent:2",
            "hello vm:web boot=",
            &long_name,
            &too_long,
        ]), @r#"
            "hello vm:web" -> vm=web caps=[] token=None
            "hello vm:web\n" -> vm=web caps=[] token=None
            "hello vm:web\r\n" -> vm=web caps=[] token=None
            "hello vm:web capabilities=bus-v1 token=s3cret" -> vm=web caps=["bus-v1"] token=Some("s3cret")
            "hello vm:web token=s3cret capabilities=bus-v1,zstd" -> vm=web caps=["bus-v1", "zstd"] token=Some("s3cret")
            "hello   vm:db-1\ttoken=abc" -> vm=db-1 caps=[] token=Some("abc")
            "hello vm:web capabilities=" -> vm=web caps=[] token=None
            "hello vm:web capabilities=,bus-v1," -> vm=web caps=["bus-v1"] token=None
            "hello vm:web color=blue token=t" -> vm=web caps=[] token=Some("t")
            "hello vm:web token=a=b" -> vm=web caps=[] token=Some("a=b")
            "hello vm:web token=" -> error: malformed_hello
            "hello vm:web token=a token=b" -> error: malformed_hello
            "hello vm:web capabilities=a capabilities=b" -> error: malformed_hello
            "hello vm:web stray" -> error: malformed_hello
            "hello vm:" -> error: malformed_hello
            "hello web" -> error: malformed_hello
            "hello" -> error: malformed_hello
            "" -> error: malformed_hello
            "HELLO vm:web" -> error: malformed_hello
            "helo vm:web" -> error: malformed_hello
            "hello vm:../etc" -> error: malformed_hello
            "hello vm:.hidden" -> error: malformed_hello
            "hello vm:a/b" -> error: malformed_hello
            "hello vm:web_2.x" -> vm=web_2.x caps=[] token=None
            "hello vm:web boot=init:412,net:450,agent:480,hello:530" -> vm=web boot=[("init", 412), ("net", 450), ("agent", 480), ("hello", 530)]
            "hello vm:web boot=init:x" -> error: malformed_hello
            "hello vm:web boot=Init:1" -> error: malformed_hello
            "hello vm:web boot=init:1 boot=agent:2" -> error: malformed_hello
            "hello vm:web boot=" -> error: malformed_hello
            "hello vm:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"... (74 bytes) -> error: malformed_hello
            "hello vm:web x=yyyyyyyyyyyyyyyyyyyyyyyyy"... (615 bytes) -> error: line_too_long
            "#);
    }

    #[test]
    fn non_utf8_is_malformed() {
        assert_eq!(parse(b"hello vm:w\xff"), Err(Reason::MalformedHello));
    }

    #[test]
    fn hello_line_round_trips() {
        let h = Hello {
            vm: "web".into(),
            capabilities: vec!["bus-v1".into()],
            token: Some("t0k".into()),
            boot: vec![],
        };
        assert_eq!(h.to_line(), "hello vm:web capabilities=bus-v1 token=t0k");
        assert_eq!(parse(h.to_line().as_bytes()), Ok(h.clone()));
        let h = Hello {
            boot: vec![("init".into(), 412), ("hello".into(), 530)],
            ..h
        };
        assert_eq!(
            h.to_line(),
            "hello vm:web capabilities=bus-v1 token=t0k boot=init:412,hello:530"
        );
        assert_eq!(parse(h.to_line().as_bytes()), Ok(h));
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Session("ab12".into()),
            Reply::Ok,
            Reply::Error(Reason::BadToken),
        ] {
            assert_eq!(Reply::parse(&format!("{}\n", reply.to_line())), Some(reply));
        }
        assert_eq!(
            Reply::parse("error: weird"),
            Some(Reply::Error(Reason::InternalError))
        );
        assert_eq!(Reply::parse("ok session="), None);
        assert_eq!(Reply::parse("castra-broker 1 ready"), None);
    }
}
