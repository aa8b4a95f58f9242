//! From serde input types to a [`Project`]: defaults, ranges, units, names,
//! image shapes, replica expansion and path resolution, then the checks
//! across VMs (`cross_checks.rs`: duplicate names, colliding forwards). Every
//! problem points at the value that causes it and all of them are collected,
//! not just the first.
//!
//! Pure: paths are joined, never looked at.

use super::cross_checks::{Instance, check_forwards, check_unique_names};
use super::diagnostic::Problem;
use super::duration::parse_duration;
use super::forward::parse_forward;
use super::model::{
    AccelChoice, BrokerConfig, DEFAULT_CPUS, DEFAULT_MEMORY, DEFAULT_STATE_DIR, Forward, ImageSpec,
    Lifecycle, MAX_COUNT, MAX_CPUS, MIN_MEMORY, Machine, Project, VmSpec,
};
use super::names::MAX_NAME_LEN;
use super::names::{check_name, sanitize};
use super::paths::check_path;
use super::raw::{RawConfig, RawImage, RawImageTable, RawVm, SizeInput};
use super::size::{ByteSize, parse_size};
use super::suggest::closest;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Where the config came from, for defaults and path resolution.
pub(crate) struct Origin<'a> {
    /// The file text, to quote other places in notes (`first defined on line 3`).
    pub text: &'a str,
    pub config_path: PathBuf,
    /// Directory relative paths are resolved against.
    pub root_dir: PathBuf,
    /// Project name when `[project] name` is absent (already sanitized).
    pub default_name: String,
}

pub(crate) fn validate(raw: RawConfig, origin: &Origin<'_>) -> Result<Project, Vec<Problem>> {
    let mut problems = Vec::new();
    let project = raw.project.map(Spanned::into_inner);
    let (name_raw, state_dir_raw) = match project {
        Some(p) => (p.name, p.state_dir),
        None => (None, None),
    };
    let name = match name_raw {
        Some(n) => match check_name(n.get_ref()) {
            Ok(()) => n.into_inner(),
            Err(why) => {
                problems.push(bad_name("project", &n, &why));
                origin.default_name.clone()
            }
        },
        None => origin.default_name.clone(),
    };
    let state_root = match state_dir_raw {
        Some(dir) => match check_path("state_dir", &dir) {
            Ok(p) => origin.root_dir.join(p),
            Err(p) => {
                problems.push(p);
                origin.root_dir.join(DEFAULT_STATE_DIR)
            }
        },
        None => origin.root_dir.join(DEFAULT_STATE_DIR),
    };

    let raw_broker = raw.broker.map(|b| b.into_inner());
    let allow_tokenless_handshake = raw_broker
        .as_ref()
        .and_then(|b| b.allow_tokenless_handshake)
        .unwrap_or(false);
    // No [broker] port: the first port of this project's block (stable per directory).
    let default_port = super::project_ports::default_broker_port(&origin.root_dir);
    let mut broker = match raw_broker.and_then(|b| b.port) {
        Some(port) => match u16::try_from(*port.get_ref()) {
            Ok(p) if p > 0 => BrokerConfig {
                port: p,
                ..BrokerConfig::default()
            },
            _ => {
                problems.push(
                    Problem::new(
                        format!("broker port {} is not a usable port", port.get_ref()),
                        port.span(),
                    )
                    .help(format!(
                        "guests need a fixed port from 1 to 65535: leave port out for this project's default {default_port}"
                    )),
                );
                BrokerConfig {
                    port: default_port,
                    ..BrokerConfig::default()
                }
            }
        },
        None => BrokerConfig {
            port: default_port,
            ..BrokerConfig::default()
        },
    };
    broker.allow_tokenless_handshake = allow_tokenless_handshake;

    let mut lifecycle = Lifecycle::default();
    if let Some(l) = raw.lifecycle.map(Spanned::into_inner) {
        if let Some(d) = duration("powerdown_wait", l.powerdown_wait, &mut problems) {
            lifecycle.powerdown_wait = d;
        }
        if let Some(d) = duration("sigterm_wait", l.sigterm_wait, &mut problems) {
            lifecycle.sigterm_wait = d;
        }
    }

    let declared_hosts: Vec<String> = raw
        .hosts
        .iter()
        .flat_map(|h| h.keys().map(|k| k.get_ref().clone()))
        .collect();
    let hosts = super::hosts::check(raw.hosts, &mut problems);
    let mut placement = std::collections::BTreeMap::new();
    let default_bootstrap = raw
        .bootstrap
        .map(|b| super::bootstrap::check(b, &origin.root_dir, &mut problems));
    let mut instances = Vec::new();
    let mut bootstraps = std::collections::BTreeMap::new();
    for vm in raw.vms {
        let span = vm.span();
        let mut inner = vm.into_inner();
        let own = inner
            .bootstrap
            .take()
            .map(|b| super::bootstrap::check(b, &origin.root_dir, &mut problems));
        let base = inner.name.as_ref().map(|n| n.get_ref().clone());
        let host_value = inner.host.take();
        let host =
            super::hosts::placement(host_value.as_ref(), &hosts, &declared_hosts, &mut problems);
        let made = vm_instances(Spanned::new(span, inner), origin, &mut problems);
        if let (Some(host), Some(value), Some(first)) = (&host, &host_value, made.first()) {
            super::hosts::check_supported(&first.spec, host, value.span(), &mut problems);
        }
        if let Some(host) = host {
            for inst in &made {
                placement.insert(inst.spec.name.clone(), host.clone());
            }
        }
        if let Some(base) = base
            && let Some(spec) = super::bootstrap::merge(
                &base,
                default_bootstrap.as_ref(),
                own.as_ref(),
                &mut problems,
            )
        {
            for inst in &made {
                bootstraps.insert(inst.spec.name.clone(), spec.clone());
            }
        }
        instances.extend(made);
    }
    check_unique_names(&instances, origin.text, &mut problems);
    check_forwards(&instances, broker.port, origin.text, &mut problems);

    if !problems.is_empty() {
        problems.sort_by_key(|p| p.span.as_ref().map_or(0, |s| s.start));
        return Err(problems);
    }
    Ok(Project {
        name,
        config_path: origin.config_path.clone(),
        root_dir: origin.root_dir.clone(),
        state_root,
        vms: instances.into_iter().map(|i| i.spec).collect(),
        broker,
        lifecycle,
        bootstraps,
        hosts,
        placement,
    })
}

fn bad_name(what: &str, name: &Spanned<String>, why: &str) -> Problem {
    let fixed = sanitize(name.get_ref());
    let example = if what == "project" { "demo" } else { "web" };
    let renamed = fixed.starts_with("castra-") && !name.get_ref().starts_with("castra");
    let help = if check_name(&fixed).is_ok() && !name.get_ref().is_empty() && !renamed {
        format!("try name = \"{fixed}\"")
    } else {
        format!("for example: name = \"{example}\"")
    };
    Problem::new(
        format!("invalid {what} name \"{}\": {why}", name.get_ref()),
        name.span(),
    )
    .help(format!(
        "{help} (lowercase letters, digits and '-', starting with a letter, at most {MAX_NAME_LEN} characters)"
    ))
}

/// VM names castra uses for itself: `host` is the sender of host publishes
/// on the bus (`logs/bus/host.log`, `"from":"host"`).
/// Names the bus log uses for itself: host publishes go to `host.log` (and
/// `from` is `host`), every publish to `all.log`.
pub(crate) const RESERVED_VM_NAMES: &[&str] = &["host", "all"];

fn duration(
    key: &str,
    value: Option<Spanned<String>>,
    problems: &mut Vec<Problem>,
) -> Option<Duration> {
    let value = value?;
    match parse_duration(value.get_ref()) {
        Ok(d) => Some(d),
        Err(why) => {
            problems.push(
                Problem::new(format!("invalid {key}: {why}"), value.span())
                    .help(format!("for example: {key} = \"20s\" (units: ms, s, m, h)")),
            );
            None
        }
    }
}

fn vm_instances(
    vm: Spanned<RawVm>,
    origin: &Origin<'_>,
    problems: &mut Vec<Problem>,
) -> Vec<Instance> {
    let header = vm.span();
    let vm = vm.into_inner();

    let name = match &vm.name {
        Some(n) if RESERVED_VM_NAMES.contains(&n.get_ref().as_str()) => {
            problems.push(
                Problem::new(
                    format!("VM name \"{}\" is reserved", n.get_ref()),
                    n.span(),
                )
                .help(format!(
                    "the bus log keeps host publishes in host.log and every publish in all.log; \
                     pick another name, e.g. name = \"{}vm\"",
                    n.get_ref()
                )),
            );
            None
        }
        Some(n) => match check_name(n.get_ref()) {
            Ok(()) => Some(n),
            Err(why) => {
                problems.push(bad_name("VM", n, &why));
                None
            }
        },
        None => {
            problems.push(
                Problem::new("[[vms]] entry has no name", header.clone())
                    .help("add a line such as name = \"web\" below [[vms]]"),
            );
            None
        }
    };

    let count = vm.count.as_ref().and_then(|c| match u32::try_from(*c.get_ref()) {
        Ok(n) if (1..=MAX_COUNT).contains(&n) => Some(n),
        _ => {
            let help = if *c.get_ref() < 1 {
                "remove the [[vms]] entry to run no instance of it, or remove count for a single VM".to_string()
            } else {
                format!("count is at most {MAX_COUNT}")
            };
            problems.push(
                Problem::new(
                    format!("count must be from 1 to {MAX_COUNT}, found {}", c.get_ref()),
                    c.span(),
                )
                .help(help),
            );
            None
        }
    });
    if let (Some(n), Some(count)) = (name, count) {
        let longest = format!("{}-{count}", n.get_ref());
        if longest.len() > MAX_NAME_LEN {
            problems.push(
                Problem::new(
                    format!(
                        "VM name \"{}\" is too long for count = {count}: replica \"{longest}\" has more than {MAX_NAME_LEN} characters",
                        n.get_ref()
                    ),
                    n.span(),
                )
                .help(format!(
                    "shorten the name to at most {} characters",
                    MAX_NAME_LEN - (longest.len() - n.get_ref().len())
                )),
            );
        }
    }

    let cpus = match &vm.cpus {
        Some(c) => match u32::try_from(*c.get_ref()) {
            Ok(n) if (1..=MAX_CPUS).contains(&n) => n,
            _ => {
                problems.push(
                    Problem::new(
                        format!("cpus must be from 1 to {MAX_CPUS}, found {}", c.get_ref()),
                        c.span(),
                    )
                    .help("for example: cpus = 2"),
                );
                DEFAULT_CPUS
            }
        },
        None => DEFAULT_CPUS,
    };

    let memory = vm
        .memory
        .as_ref()
        .map_or(Some(DEFAULT_MEMORY), |m| memory(m, problems))
        .unwrap_or(DEFAULT_MEMORY);

    let image = match vm.image {
        None => Some(ImageSpec::Default),
        Some(img) => image(img, &origin.root_dir, problems),
    };

    let machine = machine(vm.machine.as_ref(), image.as_ref(), problems);

    let accel = match &vm.accel {
        Some(a) => match a.get_ref().parse::<AccelChoice>() {
            Ok(a) => a,
            Err(e) => {
                problems.push(choice_problem("accel", a, e.suggestion, &e.expected));
                AccelChoice::Auto
            }
        },
        None => AccelChoice::Auto,
    };

    let mut forwards: Vec<(Forward, Range<usize>)> = Vec::new();
    for f in vm.forwards.iter().flatten() {
        match parse_forward(f.get_ref()) {
            Ok(fw) => forwards.push((fw, f.span())),
            Err(e) => problems.push(Problem::new(e.message, f.span()).help(e.help)),
        }
    }
    if let Some(n) = count {
        let fits = |fw: &Forward| u32::from(fw.host_port) + n - 1 <= u32::from(u16::MAX);
        for (fw, span) in forwards.iter().filter(|(fw, _)| !fits(fw)) {
            {
                problems.push(
                    Problem::new(
                        format!(
                            "forward {} needs host ports {}..={} for count = {n}, past 65535",
                            &origin.text[span.clone()],
                            fw.host_port,
                            u32::from(fw.host_port) + n - 1
                        ),
                        span.clone(),
                    )
                    .help("replica i (from 0) binds host_port + i: pick a lower host port"),
                );
            }
        }
        forwards.retain(|(fw, _)| fits(fw));
    }

    let shares = vm
        .shares
        .map(|s| super::shares::check(s, &origin.root_dir, problems))
        .unwrap_or_default();

    // Instances are built even when some field was wrong (with its default)
    // so that the checks across VMs still run and report in the same pass.
    let Some(name) = name else {
        return Vec::new();
    };
    let image = image.unwrap_or(ImageSpec::Default);
    let base = VmSpec {
        name: name.get_ref().clone(),
        cpus,
        memory,
        image,
        machine,
        accel,
        forwards: forwards.iter().map(|(f, _)| f.clone()).collect(),
        shares,
    };
    let forward_spans: Vec<Range<usize>> = forwards.into_iter().map(|(_, s)| s).collect();
    match count {
        None => vec![Instance {
            spec: base,
            name_span: name.span(),
            replica: None,
            forward_spans,
        }],
        Some(n) => (0..n)
            .map(|i| {
                let mut spec = base.clone();
                spec.name = format!("{}-{}", base.name, i + 1);
                for f in &mut spec.forwards {
                    // In range: checked above against u16::MAX.
                    f.host_port = f.host_port.saturating_add(i as u16);
                }
                Instance {
                    spec,
                    name_span: name.span(),
                    replica: Some((base.name.clone(), i)),
                    forward_spans: forward_spans.clone(),
                }
            })
            .collect(),
    }
}

fn memory(m: &Spanned<SizeInput>, problems: &mut Vec<Problem>) -> Option<ByteSize> {
    let shown = match m.get_ref() {
        SizeInput::Text(t) => format!("\"{t}\""),
        SizeInput::Int(i) => i.to_string(),
    };
    let parsed = match m.get_ref() {
        SizeInput::Text(t) => parse_size(t),
        SizeInput::Int(i) => u64::try_from(*i)
            .ok()
            .and_then(|mib| mib.checked_mul(1 << 20))
            .map(ByteSize)
            .ok_or_else(|| format!("{i} is not a size")),
    };
    let fail = |problems: &mut Vec<Problem>, message: String, help: String| {
        problems.push(Problem::new(message, m.span()).help(help));
        None
    };
    match parsed {
        Err(why) => fail(
            problems,
            format!("invalid memory size {shown}: {why}"),
            "for example: memory = \"512M\" or memory = \"1G\" (binary units; a bare number is MiB)"
                .into(),
        ),
        Ok(size) if size < MIN_MEMORY => fail(
            problems,
            format!("memory {shown} is below the {MIN_MEMORY} minimum"),
            format!("use at least memory = \"{MIN_MEMORY}\" (a bare number is MiB)"),
        ),
        Ok(size) if !size.is_whole_mib() => fail(
            problems,
            format!("memory {shown} is not a whole number of MiB"),
            format!(
                "QEMU takes memory in MiB: try memory = \"{}\"",
                ByteSize::from_mib(size.mib())
            ),
        ),
        Ok(size) => Some(size),
    }
}

const IMAGE_SHAPES: &str = "write image = \"default\", image = { kernel = \"vmlinux\", initrd = \"initrd.img\", cmdline = \"console=ttyS0\" }, image = { disk = \"base.qcow2\" } or both: image = { disk = \"root.qcow2\", kernel = \"vmlinux\" }";

fn image(img: Spanned<RawImage>, root: &Path, problems: &mut Vec<Problem>) -> Option<ImageSpec> {
    let span = img.span();
    let table = match img.into_inner() {
        RawImage::Named(n) if n == "default" => return Some(ImageSpec::Default),
        RawImage::Named(n) => {
            let help = if closest(&n, &["default"]).is_some() {
                "did you mean \"default\"?".to_string()
            } else if n.contains('/') || n.contains('.') {
                format!(
                    "to boot a file, write image = {{ disk = \"{n}\" }} for a qcow2 disk or image = {{ kernel = \"{n}\" }} for a kernel"
                )
            } else {
                IMAGE_SHAPES.to_string()
            };
            problems.push(Problem::new(format!("unknown image \"{n}\""), span).help(help));
            return None;
        }
        RawImage::Table(t) => t,
    };
    let RawImageTable {
        kernel,
        initrd,
        cmdline,
        disk,
    } = table;
    let before = problems.len();
    let path =
        |key: &str, p: &Spanned<String>, problems: &mut Vec<Problem>| match check_path(key, p) {
            Ok(p) => Some(root.join(p)),
            Err(problem) => {
                problems.push(problem);
                None
            }
        };
    match (kernel, disk) {
        (Some(k), d) => {
            let kernel = path("kernel", &k, problems);
            let initrd = initrd.as_ref().map(|i| path("initrd", i, problems));
            let disk = d.as_ref().map(|d| path("disk", d, problems));
            if problems.len() > before {
                return None;
            }
            Some(ImageSpec::Kernel {
                kernel: kernel?,
                initrd: initrd.flatten(),
                cmdline: cmdline.map(Spanned::into_inner),
                disk: disk.flatten(),
            })
        }
        (None, Some(d)) => {
            for (key, v) in [
                ("initrd", initrd.map(|s| s.span())),
                ("cmdline", cmdline.map(|s| s.span())),
            ] {
                if let Some(s) = v {
                    problems.push(
                        Problem::new(format!("{key} needs a kernel: a disk alone boots through firmware"), s)
                            .help(format!("add kernel = \"vmlinux\" to boot that kernel with the disk as its root, or remove {key}")),
                    );
                }
            }
            let disk = path("disk", &d, problems);
            if problems.len() > before {
                return None;
            }
            disk.map(|path| ImageSpec::Disk { path })
        }
        (None, None) => {
            let what = if initrd.is_some() || cmdline.is_some() {
                "image has no kernel"
            } else {
                "image table is empty"
            };
            problems.push(Problem::new(what, span).help(IMAGE_SHAPES));
            None
        }
    }
}

fn machine(
    m: Option<&Spanned<String>>,
    image: Option<&ImageSpec>,
    problems: &mut Vec<Problem>,
) -> Machine {
    let default = match image {
        Some(ImageSpec::Disk { .. }) => Machine::Q35,
        _ => Machine::Microvm,
    };
    let Some(m) = m else { return default };
    match m.get_ref().parse::<Machine>() {
        Ok(Machine::Microvm) if matches!(image, Some(ImageSpec::Disk { .. })) => {
            problems.push(
                Problem::new("machine \"microvm\" cannot boot a disk image", m.span()).help(
                    "remove machine (disk images default to \"q35\"), or boot a kernel with the disk as its root: image = { disk = \"...\", kernel = \"vmlinux\" }",
                ),
            );
            default
        }
        Ok(machine) => machine,
        Err(e) => {
            problems.push(choice_problem("machine", m, e.suggestion, &e.expected));
            default
        }
    }
}

fn choice_problem(
    key: &str,
    v: &Spanned<String>,
    suggestion: Option<&str>,
    expected: &[&str],
) -> Problem {
    let help = match suggestion {
        Some(s) => format!("did you mean \"{s}\"?"),
        None => format!("expected {}", super::suggest::one_of(expected)),
    };
    Problem::new(format!("unknown {key} \"{}\"", v.get_ref()), v.span()).help(help)
}
