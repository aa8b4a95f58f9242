//! Port-forward strings: `[proto:][host_addr:]host_port:guest_port`
//! (`"8080:80"`, `"127.0.0.1:2222:22"`, `"udp:5353:53"`). Host addresses are
//! IPv4: QEMU's user networking (slirp `hostfwd`) rejects IPv6 ones at launch
//! ("Bad host address", QEMU 7.2), so an IPv6 address (`"[::1]:8080:80"`) is
//! recognised only to be refused here, with the fix.
//!
//! Parsing only; which forwards collide with each other is `validate`'s job,
//! and whether a port is free on the host is the planner's.

use super::model::{Forward, Proto};
use std::net::{IpAddr, Ipv4Addr};

/// Why a forward string is not valid: a message and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForwardError {
    pub message: String,
    pub help: String,
}

const SHAPE_HELP: &str = "write \"host_port:guest_port\", optionally prefixed by a host address and \"tcp:\" or \"udp:\", e.g. \"8080:80\" or \"udp:127.0.0.1:5353:53\"";

pub(crate) fn parse_forward(input: &str) -> Result<Forward, ForwardError> {
    let err = |message: String, help: &str| ForwardError {
        message,
        help: help.to_string(),
    };
    let prefix = input.get(..4).map(str::to_ascii_lowercase);
    let (proto, rest) = match prefix.as_deref() {
        Some("tcp:") => (Proto::Tcp, &input[4..]),
        Some("udp:") => (Proto::Udp, &input[4..]),
        _ => (Proto::Tcp, input),
    };
    let (addr, ports) = if let Some(r) = rest.strip_prefix('[') {
        let (v6, after) = r.split_once(']').ok_or_else(|| {
            err(
                format!("forward \"{input}\" has an unclosed '['"),
                "write IPv6 host addresses in brackets, e.g. \"[::1]:8080:80\"",
            )
        })?;
        let after = after.strip_prefix(':').ok_or_else(|| {
            err(
                format!("forward \"{input}\" needs ':' after the address"),
                SHAPE_HELP,
            )
        })?;
        (Some(v6), after)
    } else {
        match rest.matches(':').count() {
            0 => {
                return Err(err(
                    format!("forward \"{input}\" needs both a host and a guest port"),
                    &format!(
                        "write \"{rest}:{rest}\" to forward host port {rest} to the same guest port"
                    ),
                ));
            }
            1 => (None, rest),
            2 => {
                let (a, p) = rest.split_once(':').unwrap_or(("", rest));
                (Some(a), p)
            }
            _ if looks_like_v6(rest) => {
                return Err(err(
                    format!(
                        "forward \"{input}\": QEMU's user networking forwards from IPv4 host addresses only"
                    ),
                    V4_ONLY_HELP,
                ));
            }
            _ => {
                return Err(err(
                    format!("forward \"{input}\" has too many ':'"),
                    SHAPE_HELP,
                ));
            }
        }
    };
    let host_addr = match addr {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(a) => a.parse::<IpAddr>().map_err(|_| {
            let help = if a.eq_ignore_ascii_case("localhost") {
                "write \"127.0.0.1\" instead of \"localhost\" (or leave the address out: it is the default)"
            } else if input.ends_with(":tcp") || input.ends_with(":udp") {
                "the protocol goes first: \"udp:127.0.0.1:5353:53\""
            } else {
                "host addresses are IP addresses such as 127.0.0.1 or 0.0.0.0; leave it out for 127.0.0.1"
            };
            err(format!("forward \"{input}\": \"{a}\" is not an IP address"), help)
        })?,
    };
    let (host, guest) = ports
        .split_once(':')
        .ok_or_else(|| err(format!("forward \"{input}\" is missing a port"), SHAPE_HELP))?;
    if host_addr.is_ipv6() {
        return Err(err(
            format!(
                "forward \"{input}\": QEMU's user networking forwards from IPv4 host addresses only, not {host_addr}"
            ),
            V4_ONLY_HELP,
        ));
    }
    let host_port = port(input, host, "host")?;
    let guest_port = port(input, guest, "guest")?;
    Ok(Forward {
        proto,
        host_addr,
        host_port,
        guest_port,
    })
}

const V4_ONLY_HELP: &str = "leave the address out for 127.0.0.1, or write 0.0.0.0 for every interface, e.g. \"0.0.0.0:8080:80\"";

fn looks_like_v6(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
}

fn port(input: &str, text: &str, which: &str) -> Result<u16, ForwardError> {
    let bad = |why: &str| ForwardError {
        message: format!("forward \"{input}\": {which} port \"{text}\" {why}"),
        help: "ports are whole numbers from 1 to 65535".to_string(),
    };
    if text.is_empty() {
        return Err(ForwardError {
            message: format!("forward \"{input}\" is missing the {which} port"),
            help: SHAPE_HELP.to_string(),
        });
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("is not a number"));
    }
    match text.parse::<u32>() {
        Ok(0) => Err(bad("is 0")),
        Ok(p) => u16::try_from(p).map_err(|_| bad("is above 65535")),
        Err(_) => Err(bad("is above 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shapes() {
        let cases: &[(&str, &str)] = &[
            ("8080:80", "127.0.0.1:8080->80/tcp"),
            ("127.0.0.1:2222:22", "127.0.0.1:2222->22/tcp"),
            ("0.0.0.0:8080:80", "0.0.0.0:8080->80/tcp"),
            ("udp:5353:53", "127.0.0.1:5353->53/udp"),
            ("tcp:9000:9000", "127.0.0.1:9000->9000/tcp"),
            ("udp:10.1.2.3:5353:53", "10.1.2.3:5353->53/udp"),
            ("UDP:53:53", "127.0.0.1:53->53/udp"),
        ];
        for (input, want) in cases {
            let f = parse_forward(input).unwrap_or_else(|e| panic!("{input}: {e:?}"));
            assert_eq!(f.to_string(), *want, "input {input:?}");
        }
    }

    #[test]
    fn rejects_bad_forwards_with_a_fix() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "8080",
                "needs both a host and a guest port",
                "\"8080:8080\"",
            ),
            ("8080:", "missing the guest port", "host_port:guest_port"),
            (":80", "missing the host port", "host_port:guest_port"),
            ("0:80", "host port \"0\" is 0", "1 to 65535"),
            ("8080:0", "guest port \"0\" is 0", "1 to 65535"),
            (
                "70000:80",
                "host port \"70000\" is above 65535",
                "1 to 65535",
            ),
            ("99999999999:80", "is above 65535", "1 to 65535"),
            (
                "http:80",
                "host port \"http\" is not a number",
                "1 to 65535",
            ),
            ("8080:-1", "is not a number", "1 to 65535"),
            (
                "localhost:8080:80",
                "\"localhost\" is not an IP address",
                "\"127.0.0.1\"",
            ),
            (
                "8080:80:udp",
                "\"8080\" is not an IP address",
                "protocol goes first",
            ),
            (
                "127.0.0.1:udp:5353:53",
                "too many ':'",
                "host_port:guest_port",
            ),
            ("::1:8080:80", "IPv4 host addresses only", "0.0.0.0:8080:80"),
            (
                "[::1]:8080:80",
                "IPv4 host addresses only, not ::1",
                "127.0.0.1",
            ),
            (
                "udp:[::]:65535:1",
                "IPv4 host addresses only, not ::",
                "0.0.0.0",
            ),
            ("[::1:8080:80", "unclosed '['", "brackets"),
            ("[::1]8080:80", "needs ':' after the address", "host_port"),
            (
                "[nope]:8080:80",
                "\"nope\" is not an IP address",
                "127.0.0.1",
            ),
        ];
        for (input, message, help) in cases {
            let e = parse_forward(input).expect_err(input);
            assert!(e.message.contains(message), "{input}: {}", e.message);
            assert!(e.help.contains(help), "{input}: {}", e.help);
        }
    }
}
