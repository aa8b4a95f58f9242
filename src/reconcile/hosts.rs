//! Observe the project's libvirt hosts and fold what they hold into
//! [`Observed`]: a VM found as a domain of ours is running (or broken) there
//! with the launch record from the domain's metadata; a VM placed on a host
//! that does not answer is `unknown (host NAME unreachable: reason)`.
//!
//! `Deep` asks every host at once (one thread each, each call bounded) and
//! leaves what it saw in the state root; `Quick` (status) only reads those
//! snapshots, which the broker's poller keeps fresh, so a dead host never
//! delays the report.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Project;
use crate::events::now_ms;
use crate::fsutil::create_private_dir;
use crate::layout::StateLayout;
use crate::libvirt::snapshot::{self, HostSnapshot, SeenDomain, Target, Targets};
use crate::libvirt::{Host, ProjectNames};

use super::observe::{Depth, Observed, ObservedVm, VmState};
use super::record::LaunchRecord;
use crate::broker::control::BrokerState;

/// A snapshot older than this is not evidence: the poller (1 s period, 3 s
/// deadline) did not get an answer in time.
pub const SNAPSHOT_FRESH: Duration = Duration::from_secs(6);
/// How long a deep observe waits for one host.
pub const OBSERVE_DEADLINE: Duration = Duration::from_secs(5);

/// The names castra uses on hosts for this project.
pub fn project_names(project: &Project) -> ProjectNames {
    ProjectNames::new(&project.name, &project.state_root.to_string_lossy())
}

/// What the broker's poller reads: the project's hosts and domain prefix.
pub fn targets(project: &Project) -> Targets {
    Targets {
        project: project.name.clone(),
        state_root: project.state_root.to_string_lossy().into_owned(),
        hosts: project
            .hosts
            .values()
            .map(|h| Target {
                name: h.name.clone(),
                uri: h.uri.clone(),
            })
            .collect(),
    }
}

/// Write `hosts/targets.json` (best effort: status then says the host was not observed).
pub fn write_targets(project: &Project) {
    let layout = StateLayout::new(&project.state_root);
    if project.hosts.is_empty() && !layout.hosts_dir().exists() {
        return;
    }
    if create_private_dir(&layout.hosts_dir()).is_ok() {
        let _ = snapshot::write_targets(&layout.host_targets(), &targets(project));
    }
}

/// Every host of the project, as seen now (`Deep`) or last (`Quick`).
pub fn snapshots(project: &Project, depth: Depth) -> BTreeMap<String, HostSnapshot> {
    let layout = StateLayout::new(&project.state_root);
    let names = project_names(project);
    match depth {
        Depth::Quick => project
            .hosts
            .keys()
            .filter_map(|h| {
                let s = snapshot::read(&layout.host_snapshot(h)).ok().flatten()?;
                Some((h.clone(), s))
            })
            .collect(),
        Depth::Deep => {
            let seen: Vec<HostSnapshot> = std::thread::scope(|s| {
                let handles: Vec<_> = project
                    .hosts
                    .values()
                    .map(|h| {
                        let names = &names;
                        s.spawn(move || {
                            let host = Host {
                                name: &h.name,
                                uri: &h.uri,
                            };
                            snapshot::poll(&host, names, OBSERVE_DEADLINE, now_ms())
                        })
                    })
                    .collect();
                handles.into_iter().filter_map(|h| h.join().ok()).collect()
            });
            if !seen.is_empty() && create_private_dir(&layout.hosts_dir()).is_ok() {
                for s in &seen {
                    let _ = snapshot::write(&layout.host_snapshot(&s.host), s);
                }
            }
            seen.into_iter().map(|s| (s.host.clone(), s)).collect()
        }
    }
}

/// Fold the hosts' view into `observed` (which holds the local view).
pub fn merge(
    project: &Project,
    observed: &mut Observed,
    seen: &BTreeMap<String, HostSnapshot>,
    now: u64,
) {
    // Hosts that cannot vouch for their VMs, and why. Only a host that was
    // asked and failed (or stopped answering the poller) is "unreachable";
    // without a running broker nobody asks, and status says that instead.
    let polled = matches!(observed.broker, BrokerState::Running { .. });
    let mut trouble: BTreeMap<&str, String> = BTreeMap::new();
    for (name, spec) in &project.hosts {
        let age_s = |s: &HostSnapshot| now.saturating_sub(s.checked_ms) / 1000;
        let stale =
            |s: &HostSnapshot| now.saturating_sub(s.checked_ms) > SNAPSHOT_FRESH.as_millis() as u64;
        let why = match seen.get(name) {
            Some(s) if s.error.is_some() && !stale(s) => Some(format!(
                "host {name} unreachable ({}): {}",
                spec.uri,
                s.error.as_deref().unwrap_or_default()
            )),
            Some(s) if !stale(s) => None,
            Some(s) if polled => Some(format!(
                "host {name} unreachable ({}): no answer for {} s",
                spec.uri,
                age_s(s)
            )),
            Some(s) => Some(format!(
                "host {name} not observed for {} s: the broker, which polls hosts, is not running (`castra plan` asks them)",
                age_s(s)
            )),
            None => Some(format!(
                "host {name} not observed yet (the broker polls hosts while it runs; `castra plan` asks them)"
            )),
        };
        if let Some(why) = why {
            trouble.insert(name.as_str(), why);
        }
    }
    for (host, snap) in seen {
        if trouble.contains_key(host.as_str()) {
            continue;
        }
        for d in &snap.domains {
            // A domain with our name that castra did not make: never ours.
            let Some(json) = &d.record_json else { continue };
            let vm = domain_vm(host, d, json);
            observed.vms.insert(vm.name.clone(), vm);
        }
    }
    for (vm, host) in &project.placement {
        let found_elsewhere = observed
            .vms
            .get(vm)
            .is_some_and(|o| o.host.is_some() || !matches!(o.state, VmState::Stopped { .. }));
        if found_elsewhere {
            continue;
        }
        let state = match trouble.get(host.as_str()) {
            Some(why) => VmState::Unknown { why: why.clone() },
            None => VmState::Stopped {
                why: format!("not running on host {host}"),
            },
        };
        observed.vms.insert(
            vm.clone(),
            ObservedVm {
                name: vm.clone(),
                state,
                record: None,
                host: Some(host.clone()),
            },
        );
    }
}

/// One of our domains as an observed VM.
fn domain_vm(host: &str, d: &SeenDomain, json: &str) -> ObservedVm {
    let (record, mut reasons) = match serde_json::from_str::<LaunchRecord>(json) {
        Ok(r) => (Some(r), Vec::new()),
        Err(e) => (
            None,
            vec![format!(
                "domain {} on host {host} has a castra record castra cannot read ({e})",
                d.domain
            )],
        ),
    };
    let state = match d.state.as_str() {
        "running" | "in shutdown" if reasons.is_empty() => VmState::Running { pid: 0 },
        "shut off" | "crashed" if reasons.is_empty() => VmState::Stopped {
            why: format!("domain {} is {} on host {host}", d.domain, d.state),
        },
        other => {
            if reasons.is_empty() {
                reasons.push(format!("domain {} is {other} on host {host}", d.domain));
            }
            VmState::Broken { reasons }
        }
    };
    ObservedVm {
        name: d.vm.clone(),
        state,
        record,
        host: Some(host.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::snapshot::SeenDomain;

    fn project() -> Project {
        crate::config::load_str(
            "[hosts.a]\nuri = \"qemu:///system\"\n[hosts.b]\nuri = \"qemu+tcp://10.9.9.9/system\"\n[hosts.c]\nuri = \"qemu+tcp://10.9.9.10/system\"\n[[vms]]\nname = \"ona\"\nhost = \"a\"\n[[vms]]\nname = \"onb\"\nhost = \"b\"\n[[vms]]\nname = \"onc\"\nhost = \"c\"\n[[vms]]\nname = \"here\"\n",
            std::path::Path::new("/srv/p/castra.toml"),
        )
        .unwrap()
    }

    fn snap(
        host: &str,
        checked_ms: u64,
        error: Option<&str>,
        domains: Vec<SeenDomain>,
    ) -> HostSnapshot {
        HostSnapshot {
            host: host.into(),
            uri: String::new(),
            checked_ms,
            error: error.map(Into::into),
            domains,
        }
    }

    fn record_json(p: &Project, vm: &str) -> String {
        let spec = p.vms.iter().find(|v| v.name == vm).unwrap().clone();
        serde_json::to_string(&LaunchRecord {
            fingerprint: super::super::record::fingerprint(&spec, ""),
            spec,
            image_id: String::new(),
            accel: crate::qemu::Accel::Tcg,
            accel_reason: String::new(),
            process: crate::qemu::process::ProcessIdentity {
                pid: 0,
                start_ticks: 0,
            },
            qmp_socket: Default::default(),
            launched_at_ms: 1,
            castra_version: String::new(),
            argv: vec![],
            host: Some("a".into()),
        })
        .unwrap()
    }

    #[test]
    fn each_host_vouches_only_for_its_own_vms() {
        let p = project();
        let now = 100_000;
        let names = project_names(&p);
        let seen: BTreeMap<String, HostSnapshot> = [
            snap(
                "a",
                now - 500,
                None,
                vec![
                    SeenDomain {
                        vm: "ona".into(),
                        domain: names.domain("ona"),
                        state: "running".into(),
                        record_json: Some(record_json(&p, "ona")),
                    },
                    // Our prefix, no record: not ours, never observed.
                    SeenDomain {
                        vm: "stray".into(),
                        domain: names.domain("stray"),
                        state: "running".into(),
                        record_json: None,
                    },
                ],
            ),
            snap("b", now - 500, Some("Connection refused"), vec![]),
            snap("c", now - 60_000, None, vec![]),
        ]
        .into_iter()
        .map(|s| (s.host.clone(), s))
        .collect();
        let mut o = Observed {
            broker: BrokerState::Running { pid: 1 },
            ..Observed::default()
        };
        merge(&p, &mut o, &seen, now);
        let st = |vm: &str| o.get(vm).map(|v| (v.state.clone(), v.host.clone()));
        assert_eq!(
            st("ona"),
            Some((VmState::Running { pid: 0 }, Some("a".into())))
        );
        assert!(o.get("ona").unwrap().record.is_some());
        assert_eq!(st("stray"), None);
        assert_eq!(
            st("onb"),
            Some((
                VmState::Unknown {
                    why: "host b unreachable (qemu+tcp://10.9.9.9/system): Connection refused"
                        .into()
                },
                Some("b".into())
            ))
        );
        assert_eq!(
            st("onc"),
            Some((
                VmState::Unknown {
                    why: "host c unreachable (qemu+tcp://10.9.9.10/system): no answer for 60 s"
                        .into()
                },
                Some("c".into())
            ))
        );
        assert_eq!(st("here"), None, "local VMs are observe.rs's");

        // Without a broker nobody polls: a stale host is "not observed", not "unreachable".
        let mut o = Observed::default();
        merge(&p, &mut o, &seen, now);
        match &o.get("onc").unwrap().state {
            VmState::Unknown { why } => assert!(
                why.contains("broker, which polls hosts, is not running"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
