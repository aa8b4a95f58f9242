//! Checks across the VM instances of one config, after each VM is valid on
//! its own: unique names (replicas included) and port forwards that do not
//! collide with each other or with the broker's port. Each problem points at
//! the value that causes it and quotes the other place in a note.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;

use super::diagnostic::{Problem, line_col};
use super::model::VmSpec;
use super::model::{Forward, Proto};

/// One VM instance being built, with the spans cross-checks point at.
pub(super) struct Instance {
    pub(super) spec: VmSpec,
    /// Span of the `name` value of the `[[vms]]` entry it came from.
    pub(super) name_span: Range<usize>,
    /// `Some((base name, index))` for replicas.
    pub(super) replica: Option<(String, u32)>,
    pub(super) forward_spans: Vec<Range<usize>>,
}

pub(super) fn check_unique_names(instances: &[Instance], text: &str, problems: &mut Vec<Problem>) {
    let mut seen: HashMap<&str, &Instance> = HashMap::new();
    let mut reported: Vec<Range<usize>> = Vec::new();
    for inst in instances {
        let Some(first) = seen.get(inst.spec.name.as_str()) else {
            seen.insert(&inst.spec.name, inst);
            continue;
        };
        if reported.contains(&inst.name_span) {
            continue;
        }
        reported.push(inst.name_span.clone());
        let name = &inst.spec.name;
        let message = match &inst.replica {
            Some((base, idx)) => {
                format!(
                    "duplicate VM name \"{name}\" (replica {} of \"{base}\")",
                    idx + 1
                )
            }
            None => format!("duplicate VM name \"{name}\""),
        };
        let line = line_of(text, first.name_span.start);
        let note = match &first.replica {
            Some((base, idx)) => format!(
                "\"{name}\" is already replica {} of \"{base}\" (line {line})",
                idx + 1
            ),
            None => format!("\"{name}\" is first defined on line {line}"),
        };
        problems.push(
            Problem::new(message, inst.name_span.clone())
                .help("give every VM its own name (count = N names replicas NAME-1 .. NAME-N)")
                .note(note),
        );
    }
}

fn line_of(text: &str, offset: usize) -> String {
    line_col(text, offset)
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Two binds collide when protocol and port match and the addresses overlap
/// (equal, or one is a wildcard; `::` also covers IPv4 on Linux).
fn overlaps(a: &Forward, b: &Forward) -> bool {
    let addr_overlap = |x: IpAddr, y: IpAddr| {
        x == y
            || (x.is_unspecified() && (x.is_ipv6() || y.is_ipv4()))
            || (y.is_unspecified() && (y.is_ipv6() || x.is_ipv4()))
    };
    a.proto == b.proto && a.host_port == b.host_port && addr_overlap(a.host_addr, b.host_addr)
}

pub(super) fn check_forwards(
    instances: &[Instance],
    broker_port: u16,
    text: &str,
    problems: &mut Vec<Problem>,
) {
    let broker = Forward {
        proto: Proto::Tcp,
        host_addr: IpAddr::from([127, 0, 0, 1]),
        host_port: broker_port,
        guest_port: 0,
    };
    let mut reported: Vec<Range<usize>> = Vec::new();
    let mut earlier: Vec<(&Instance, &Forward, &Range<usize>)> = Vec::new();
    for inst in instances {
        for (fw, span) in inst.spec.forwards.iter().zip(&inst.forward_spans) {
            if reported.contains(span) {
                continue;
            }
            let quoted = &text[span.clone()];
            if overlaps(fw, &broker) {
                reported.push(span.clone());
                problems.push(
                    Problem::new(
                        format!(
                            "forward {quoted} of VM \"{}\" binds {}, the castra broker's port",
                            inst.spec.name,
                            bind(fw)
                        ),
                        span.clone(),
                    )
                    .help("pick another host port, or move the broker with [broker] port = ..."),
                );
                continue;
            }
            if let Some((other, ofw, ospan)) = earlier.iter().find(|(_, ofw, _)| overlaps(fw, ofw))
            {
                reported.push(span.clone());
                let message = if std::ptr::eq(*other, inst) {
                    format!(
                        "VM \"{}\" forwards host address {} twice",
                        inst.spec.name,
                        bind(fw)
                    )
                } else {
                    format!(
                        "host address {} is forwarded twice: by VM \"{}\" and VM \"{}\"",
                        bind(fw),
                        other.spec.name,
                        inst.spec.name
                    )
                };
                let mut p = Problem::new(message, span.clone())
                    .help(format!(
                        "give each VM its own host port, e.g. \"{}:{}\"",
                        free_port(fw, instances),
                        fw.guest_port
                    ))
                    .note(format!(
                        "VM \"{}\" forwards {} on line {}",
                        other.spec.name,
                        ofw,
                        line_of(text, ospan.start)
                    ));
                if fw.host_addr != ofw.host_addr {
                    let wild = if fw.host_addr.is_unspecified() {
                        fw
                    } else {
                        ofw
                    };
                    p = p.note(format!(
                        "{} binds every address, so it overlaps {}",
                        wild.host_addr,
                        if std::ptr::eq(wild, fw) {
                            ofw.host_addr
                        } else {
                            fw.host_addr
                        }
                    ));
                }
                if inst.replica.is_some() || other.replica.is_some() {
                    p = p
                        .note("replica i (counting from 0) of a VM with count binds host_port + i");
                }
                problems.push(p);
                continue;
            }
            earlier.push((inst, fw, span));
        }
    }
}

fn bind(f: &Forward) -> String {
    format!(
        "{}/{}",
        std::net::SocketAddr::new(f.host_addr, f.host_port),
        f.proto.as_str()
    )
}

/// The first host port above `f`'s that no instance forwards.
fn free_port(f: &Forward, instances: &[Instance]) -> u16 {
    let used = |p: u16| {
        instances
            .iter()
            .flat_map(|i| &i.spec.forwards)
            .any(|o| o.host_port == p && o.proto == f.proto)
    };
    (f.host_port..=u16::MAX)
        .find(|p| !used(*p))
        .unwrap_or(f.host_port)
}
