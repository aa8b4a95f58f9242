//! The human table of `castra status` and its legend. Pure: report in, text out.

use super::StatusReport;
use crate::config::ByteSize;

/// Shown by `castra status --help`.
pub const LEGEND: &str = "\
First line: the project, its broker (state, pid, guest port) and, when there are any, the
host consumers holding a bus session (`castra bus subscribe`).

Columns:
  VM         instance name (`web-2` for the second replica of `web`)
  HOST       (only when a VM runs on a libvirt host) its `[hosts.NAME]`, or local
  STATE      running | stopped | broken (contradictory evidence, e.g. QEMU alive
             without a launch record; `castra apply` replaces it) | unknown (its
             host does not answer; `--json` reasons say which and why). `*` after the
             state: castra.toml changed since launch (`castra plan` names the fields).
             `(not in castra.toml)`: still running but removed from the config.
  BROKER     reachable: the guest proved it is up (handshake or heartbeat with its
             per-launch token within the last 15 s); waiting: running but not (yet)
             heard from; offline: the project's broker is not running; -: VM stopped
  BUS        subscribed: a bus session of the VM subscribes to a topic; open: it holds a
             bus session without subscriptions; -: no bus session
  BUS AGE    time since the VM's latest durable publish on the bus (-: never, or
             the VM is not running; `--json` keeps the age)
  BOOT       the latest bootstrap and how long ago it ended: ok 2m05s | failed 9s
             (`castra status --json` has its log) | running | never (declared, not
             run yet) | -: no bootstrap declared
  CPU/MEM    vCPUs and memory it runs with (or is declared with, when stopped)
  UPTIME     time since launch
  ACCEL      accelerator in use: kvm or tcg (software emulation)
  FORWARDS   host address:port -> guest port/protocol

JSON (`--json`), stable field names:
  project, config, state_root
  broker: {state, pid, port, reason, host_sessions (open `castra bus subscribe` sessions)}
  vms[]: {name, host (`local` or the [hosts.NAME]), state, reasons[], in_config, config_changed, pid, cpus, memory_bytes,
          uptime_s, accel, accel_reason, forwards[], reachable, last_handshake_age_ms,
          last_heartbeat_age_ms, sessions, bus_subscribed, last_publish_age_ms,
          bootstrap: {state: never|running|ok|failed, age_ms, run, log, error} | null}
  Absent values are null. Fields may be added; none is renamed without a version bump.

Status never blocks: it reads launch records, the broker's state file and /proc
only, so it answers at once even when a QEMU or the broker is frozen. Exit code 0 whenever the report could be made.";

/// Render the table.
pub fn table(report: &StatusReport) -> String {
    let broker_up = report.broker.state == "running";
    let mut rows: Vec<[String; 10]> = vec![[
        "VM".into(),
        "STATE".into(),
        "BROKER".into(),
        "BUS".into(),
        "BUS AGE".into(),
        "BOOT".into(),
        "CPU/MEM".into(),
        "UPTIME".into(),
        "ACCEL".into(),
        "FORWARDS".into(),
    ]];
    for vm in &report.vms {
        let mut state = vm.state.clone();
        if vm.config_changed {
            state.push('*');
        }
        if !vm.in_config {
            state.push_str(" (not in castra.toml)");
        }
        let cpu_mem = match (vm.cpus, vm.memory_bytes) {
            (Some(c), Some(m)) => format!("{c}/{}", ByteSize::from_bytes(m)),
            _ => "-".into(),
        };
        let guest = match (vm.state.as_str(), broker_up, vm.reachable) {
            ("running", _, true) => "reachable".to_string(),
            ("running", false, false) => "offline".to_string(),
            ("running", true, false) => "waiting".to_string(),
            _ => "-".to_string(),
        };
        let bus = match (vm.bus_subscribed, vm.sessions) {
            (true, _) => "subscribed",
            (false, 0) => "-",
            (false, _) => "open",
        };
        rows.push([
            vm.name.clone(),
            state,
            guest,
            bus.into(),
            vm.last_publish_age_ms
                .filter(|_| vm.state == "running")
                .map(|ms| uptime(ms / 1000))
                .unwrap_or_else(|| "-".into()),
            match &vm.bootstrap {
                None => "-".into(),
                Some(b) => match b.age_ms {
                    Some(ms) if b.state != "running" => {
                        format!("{} {}", b.state, uptime(ms / 1000))
                    }
                    _ => b.state.clone(),
                },
            },
            cpu_mem,
            vm.uptime_s.map(uptime).unwrap_or_else(|| "-".into()),
            vm.accel.clone().unwrap_or_else(|| "-".into()),
            if vm.forwards.is_empty() {
                "-".into()
            } else {
                vm.forwards.join(",")
            },
        ]);
    }
    // A HOST column only when some VM runs on a libvirt host.
    let with_host = report
        .vms
        .iter()
        .any(|v| v.host != crate::config::LOCAL_HOST);
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let mut r = r.to_vec();
            if with_host {
                let host = match i {
                    0 => "HOST".to_string(),
                    _ => report.vms[i - 1].host.clone(),
                };
                r.insert(1, host);
            }
            r
        })
        .collect();
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let consumers = match report.broker.host_sessions {
        Some(1) => ", 1 host consumer".to_owned(),
        Some(n) if n > 1 => format!(", {n} host consumers"),
        Some(_) | None => String::new(),
    };
    let mut out = format!(
        "project {}  broker {} (port {}{consumers})\n",
        report.project,
        match report.broker.pid {
            Some(pid) => format!("{} pid {pid}", report.broker.state),
            None => report.broker.state.clone(),
        },
        report.broker.port
    );
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if report.vms.is_empty() {
        out.push_str("(no VMs declared)\n");
    }
    out
}

/// `3d4h`, `2h05m`, `4m12s`, `9s`
pub fn uptime(s: u64) -> String {
    let (d, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{sec:02}s")
    } else {
        format!("{sec}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{BrokerStatus, VmStatus};

    fn vm(name: &str, state: &str) -> VmStatus {
        VmStatus {
            name: name.into(),
            host: "local".into(),
            state: state.into(),
            reasons: vec![],
            in_config: true,
            config_changed: false,
            pid: None,
            cpus: Some(1),
            memory_bytes: Some(256 << 20),
            uptime_s: None,
            accel: None,
            accel_reason: None,
            forwards: vec![],
            reachable: false,
            last_handshake_age_ms: None,
            last_heartbeat_age_ms: None,
            sessions: 0,
            bus_subscribed: false,
            last_publish_age_ms: None,
            bootstrap: None,
            boot_timeline: None,
        }
    }

    #[test]
    fn table_shows_every_column_and_marks() {
        let mut web = vm("web", "running");
        web.pid = Some(42);
        web.uptime_s = Some(125);
        web.accel = Some("tcg".into());
        web.forwards = vec!["127.0.0.1:8080->80/tcp".into()];
        web.config_changed = true;
        web.reachable = true;
        web.sessions = 2;
        web.bus_subscribed = true;
        web.last_publish_age_ms = Some(4_200);
        web.bootstrap = Some(crate::status::BootstrapStatus {
            state: "ok".into(),
            age_ms: Some(61_000),
            run: Some("1-ab".into()),
            log: None,
            error: None,
        });
        let mut booting = vm("api", "running");
        booting.pid = Some(43);
        booting.bootstrap = Some(crate::status::BootstrapStatus {
            state: "never".into(),
            age_ms: None,
            run: None,
            log: None,
            error: None,
        });
        let mut old = vm("old", "running");
        old.in_config = false;
        old.cpus = Some(2);
        old.memory_bytes = Some(1 << 30);
        let report = StatusReport {
            project: "demo".into(),
            config: "/p/castra.toml".into(),
            state_root: "/p/.castra".into(),
            broker: BrokerStatus {
                state: "running".into(),
                pid: Some(77),
                port: 7750,
                reason: None,
                host_sessions: Some(2),
            },
            vms: vec![web, booting, vm("db", "stopped"), old],
        };
        insta::assert_snapshot!(table(&report), @r#"
            project demo  broker running pid 77 (port 7750, 2 host consumers)
            VM   STATE                         BROKER     BUS         BUS AGE  BOOT      CPU/MEM  UPTIME  ACCEL  FORWARDS
            web  running*                      reachable  subscribed  4s       ok 1m01s  1/256M   2m05s   tcg    127.0.0.1:8080->80/tcp
            api  running                       waiting    -           -        never     1/256M   -       -      -
            db   stopped                       -          -           -        -         1/256M   -       -      -
            old  running (not in castra.toml)  waiting    -           -        -         2/1G     -       -      -
            "#);
    }

    #[test]
    fn a_host_column_appears_when_a_vm_runs_on_a_libvirt_host() {
        let mut far = vm("far", "unknown");
        far.host = "b".into();
        let report = StatusReport {
            project: "demo".into(),
            config: "/p/castra.toml".into(),
            state_root: "/p/.castra".into(),
            broker: BrokerStatus {
                state: "running".into(),
                pid: Some(77),
                port: 7750,
                reason: None,
                host_sessions: None,
            },
            vms: vec![vm("web", "stopped"), far],
        };
        insta::assert_snapshot!(table(&report), @r#"
            project demo  broker running pid 77 (port 7750)
            VM   HOST   STATE    BROKER  BUS  BUS AGE  BOOT  CPU/MEM  UPTIME  ACCEL  FORWARDS
            web  local  stopped  -       -    -        -     1/256M   -       -      -
            far  b      unknown  -       -    -        -     1/256M   -       -      -
            "#);
    }

    #[test]
    fn uptime_units() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (61, "1m01s"),
            (3725, "1h02m"),
            (90000, "1d1h"),
        ];
        for (s, want) in cases {
            assert_eq!(uptime(s), want, "{s}");
        }
    }
}
