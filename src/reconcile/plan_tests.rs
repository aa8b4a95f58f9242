//! Table tests of the pure planner: desired x observed -> printed plan.

use std::path::PathBuf;

use super::*;
use crate::broker::control::BrokerState;
use crate::config::{AccelChoice, Forward, ImageSpec, Machine, Proto, VmSpec, parse_size};
use crate::qemu::Accel;
use crate::qemu::process::ProcessIdentity;
use crate::reconcile::desired::DesiredVm;
use crate::reconcile::observe::{Observed, ObservedVm, VmState};
use crate::reconcile::record::{LaunchRecord, fingerprint};

fn spec(name: &str, mem: &str) -> VmSpec {
    VmSpec {
        name: name.into(),
        cpus: 1,
        memory: parse_size(mem).unwrap(),
        image: ImageSpec::Default,
        machine: Machine::Microvm,
        accel: AccelChoice::Auto,
        forwards: vec![],
        shares: vec![],
    }
}

fn want(s: VmSpec) -> DesiredVm {
    DesiredVm {
        fingerprint: fingerprint(&s, "img1"),
        image_id: "img1".into(),
        spec: s,
        host: None,
    }
}

fn record(s: VmSpec, image_id: &str) -> LaunchRecord {
    LaunchRecord {
        fingerprint: fingerprint(&s, image_id),
        image_id: image_id.into(),
        spec: s,
        accel: Accel::Tcg,
        accel_reason: "test".into(),
        process: ProcessIdentity {
            pid: 100,
            start_ticks: 5,
        },
        qmp_socket: PathBuf::from("/s/qmp.sock"),
        launched_at_ms: 0,
        castra_version: "0".into(),
        argv: vec![],
        host: None,
    }
}

fn seen(name: &str, state: VmState, rec: Option<LaunchRecord>) -> (String, ObservedVm) {
    (
        name.into(),
        ObservedVm {
            name: name.into(),
            state,
            record: rec,
            host: None,
        },
    )
}

fn running() -> VmState {
    VmState::Running { pid: 100 }
}

fn check(desired: Vec<DesiredVm>, observed: Vec<(String, ObservedVm)>) -> String {
    // The broker runs in these cases; its own steps are tested below.
    let observed = Observed {
        vms: observed.into_iter().collect(),
        broker: BrokerState::Running { pid: 9 },
    };
    plan(&desired, &observed).to_string()
}

#[test]
fn nothing_running_starts_everything_in_config_order() {
    insta::assert_snapshot!(check(vec![want(spec("web", "256M")), want(spec("db", "512M"))], vec![]), @r#"
        + start web
        + start db
        plan: 2 to start, 0 to restart, 0 to stop, 0 unchanged
        "#);
}

#[test]
fn running_as_declared_is_a_no_op() {
    let s = spec("web", "256M");
    insta::assert_snapshot!(check(
        vec![want(s.clone())],
        vec![seen("web", running(), Some(record(s, "img1")))],
    ), @r#"no changes: 1 VM(s) already as declared"#);
}

#[test]
fn memory_drift_restarts_and_names_the_field() {
    let old = spec("db", "512M");
    insta::assert_snapshot!(check(
        vec![want(spec("web", "256M")), want(spec("db", "1G"))],
        vec![
            seen("web", running(), Some(record(spec("web", "256M"), "img1"))),
            seen("db", running(), Some(record(old, "img1"))),
        ],
    ), @r#"
        ~ restart db (memory 512M -> 1G)
        plan: 0 to start, 1 to restart, 0 to stop, 1 unchanged
        "#);
}

#[test]
fn several_fields_and_image_content_drift() {
    let mut new = spec("web", "256M");
    new.cpus = 2;
    new.accel = AccelChoice::Tcg;
    new.forwards = vec![Forward {
        proto: Proto::Tcp,
        host_addr: "127.0.0.1".parse().unwrap(),
        host_port: 8080,
        guest_port: 80,
    }];
    insta::assert_snapshot!(check(
        vec![want(new)],
        vec![seen("web", running(), Some(record(spec("web", "256M"), "img1")))],
    ), @r#"
        ~ restart web (cpus 1 -> 2, accel auto -> tcg, forwards [] -> [127.0.0.1:8080->80/tcp])
        plan: 0 to start, 1 to restart, 0 to stop, 0 unchanged
        "#);
    // Same spec, rebuilt image.
    insta::assert_snapshot!(check(
        vec![want(spec("web", "256M"))],
        vec![seen("web", running(), Some(record(spec("web", "256M"), "img0")))],
    ), @r#"
        ~ restart web (image content img0 -> img1)
        plan: 0 to start, 1 to restart, 0 to stop, 0 unchanged
        "#);
}

#[test]
fn a_root_disk_and_shares_are_drift_too() {
    let mut new = spec("nix", "256M");
    new.image = ImageSpec::Kernel {
        kernel: "/img/vmlinux".into(),
        initrd: None,
        cmdline: None,
        disk: Some("/img/disk.qcow2".into()),
    };
    new.shares = vec![crate::config::Share {
        host: "/p/flake".into(),
        tag: "flake".into(),
        guest: "/mnt/flake".into(),
        readonly: true,
    }];
    insta::assert_snapshot!(check(
        vec![want(new)],
        vec![seen("nix", running(), Some(record(spec("nix", "256M"), "img1")))],
    ), @r#"
        ~ restart nix (image default -> kernel /img/vmlinux disk /img/disk.qcow2, shares [] -> [flake:/mnt/flake ro from /p/flake])
        plan: 0 to start, 1 to restart, 0 to stop, 0 unchanged
        "#);
}

#[test]
fn removed_from_config_is_stopped_but_stopped_leftovers_are_not() {
    insta::assert_snapshot!(check(
        vec![want(spec("web", "256M"))],
        vec![
            seen("web", running(), Some(record(spec("web", "256M"), "img1"))),
            seen("old", running(), Some(record(spec("old", "256M"), "img1"))),
            seen("gone", VmState::Stopped { why: "qemu pid 7 exited".into() }, None),
        ],
    ), @r#"
        - stop old (removed from castra.toml)
        plan: 0 to start, 0 to restart, 1 to stop, 1 unchanged
        "#);
}

#[test]
fn dead_and_broken_vms_are_replaced() {
    insta::assert_snapshot!(check(
        vec![want(spec("a", "256M")), want(spec("b", "256M"))],
        vec![
            seen("a", VmState::Stopped { why: "qemu pid 100 exited".into() }, Some(record(spec("a", "256M"), "img1"))),
            seen("b", VmState::Broken { reasons: vec!["qmp not answering: timed out".into()] }, Some(record(spec("b", "256M"), "img1"))),
        ],
    ), @r#"
        + start a (qemu pid 100 exited)
        ~ restart b (broken: qmp not answering: timed out)
        plan: 1 to start, 1 to restart, 0 to stop, 0 unchanged
        "#);
}

#[test]
fn step_accessors() {
    let s = Step::Stop { vm: "x".into() };
    assert_eq!((s.vm(), s.action()), ("x", "stop"));
    assert_eq!(s.to_string(), "- stop x (removed from castra.toml)");
}

#[test]
fn an_offline_broker_is_started_first_and_stopped_when_nothing_is_declared() {
    let offline = Observed {
        vms: Default::default(),
        broker: BrokerState::Offline {
            why: "broker pid 12 exited".into(),
        },
    };
    insta::assert_snapshot!(plan(&[want(spec("web", "256M"))], &offline).to_string(), @r#"
        + start broker (broker pid 12 exited)
        + start web
        plan: 1 to start, 0 to restart, 0 to stop, 0 unchanged
        "#);
    let running = Observed {
        vms: [seen(
            "old",
            running(),
            Some(record(spec("old", "256M"), "img1")),
        )]
        .into_iter()
        .collect(),
        broker: BrokerState::Running { pid: 9 },
    };
    insta::assert_snapshot!(plan(&[], &running).to_string(), @r#"
        - stop old (removed from castra.toml)
        - stop broker (no VM declared)
        plan: 0 to start, 0 to restart, 1 to stop, 0 unchanged
        "#);
    // Nothing declared and nothing running: the broker is not started.
    assert!(plan(&[], &Observed::default()).is_empty());
}

fn on(host: &str, mut d: DesiredVm) -> DesiredVm {
    d.host = Some(host.into());
    d
}

fn seen_on(
    host: &str,
    name: &str,
    state: VmState,
    rec: Option<LaunchRecord>,
) -> (String, ObservedVm) {
    let (n, mut o) = seen(name, state, rec);
    o.host = Some(host.into());
    (n, o)
}

#[test]
fn host_vms_show_their_host_and_an_unreachable_host_leaves_only_its_vms_out() {
    let a = spec("a1", "256M");
    insta::assert_snapshot!(check(
        vec![
            want(spec("web", "256M")),
            on("a", want(a.clone())),
            on("a", want(spec("a2", "256M"))),
            on("b", want(spec("b1", "256M"))),
        ],
        vec![
            seen_on("a", "a1", running(), Some(record(a, "img1"))),
            seen_on("b", "b1", VmState::Unknown { why: "host b unreachable (qemu+tcp://10.9.9.9/system): Connection refused".into() }, None),
            seen_on("a", "old", running(), Some(record(spec("old", "256M"), "img1"))),
        ],
    ), @r#"
        ! b1 not planned: host b unreachable (qemu+tcp://10.9.9.9/system): Connection refused
        + start web
        + start a2 on a
        - stop old on a (removed from castra.toml)
        plan: 2 to start, 0 to restart, 1 to stop, 1 unchanged, 1 not planned
        "#);
}

#[test]
fn a_vm_placed_on_another_host_restarts_there() {
    let s = spec("web", "256M");
    insta::assert_snapshot!(check(
        vec![on("b", want(s.clone()))],
        vec![seen("web", running(), Some(record(s, "img1")))],
    ), @r#"
        ~ restart web on b (host local -> b)
        plan: 0 to start, 1 to restart, 0 to stop, 0 unchanged
        "#);
}
