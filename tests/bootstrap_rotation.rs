//! A bootstrap whose reports cross bus log rotations: the real `castra
//! broker` rotating the per-VM log every couple of KiB, the real
//! `castra-agent` running the script as guest `web` (on this host), and the
//! host side of bootstrap (`bootstrap::host::run_all`) following the VM's
//! log with the crate's one follower. It must see every line and the result,
//! not wait for its timeout. Everything it starts dies with the test.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use castra::bootstrap::{host, wire};
use castra::broker::buslog::{generations, read_records};
use castra::events::Reporter;
use common::broker::{Broker, agent, state_root_with_tokens};
use common::{KillOnDrop, free_port};

/// Lines the script prints (100 bytes each: several reports of output).
const LINES: usize = 400;

#[test]
fn a_bootstraps_reports_crossing_rotations_are_all_followed() {
    let root = state_root_with_tokens(&[("web", "s3cret")]);
    let port = free_port();
    let script = format!(
        "i=0; while [ $i -lt {LINES} ]; do printf 'line-%04d %090d\\n' $i 0; i=$((i+1)); done"
    );
    let config = root.path().join("castra.toml");
    std::fs::write(
        &config,
        format!(
            "[project]\nname = \"rot\"\nstate_dir = \"{}\"\n\n[broker]\nport = {port}\n\n\
             [[vms]]\nname = \"web\"\nbootstrap = {{ run = {script:?}, timeout = \"2m\" }}\n",
            root.path().display()
        ),
    )
    .unwrap();
    let _broker = Broker::start(
        root.path(),
        port,
        &["--bus-log-max-bytes", "2000", "--bus-log-keep", "200"],
    );
    let _guest = KillOnDrop::spawn(
        agent(port, "web", root.path(), &["--cmdline", "/nonexistent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );

    let project = castra::config::load(&config).unwrap();
    let resolved = host::resolve(&project);
    let pending = host::pending(&resolved, &BTreeMap::new(), &BTreeMap::new());
    assert_eq!(pending.len(), 1, "{pending:?}");
    let launches = BTreeMap::from([("web".to_owned(), 0)]);
    let reporter = Reporter::new(None, false, false);
    let t = Instant::now();
    let outcomes = host::run_all(
        &project,
        &resolved,
        &pending,
        &launches,
        Some(Duration::from_secs(120)),
        &reporter,
    );
    let took = t.elapsed();
    assert_eq!(outcomes.len(), 1);
    let outcome = &outcomes[0];
    assert!(outcome.ok, "{outcome:?}");

    // Every line is in the run log, in order.
    let log = std::fs::read_to_string(&outcome.log).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("line-")).collect();
    assert_eq!(lines.len(), LINES, "{log}");
    for (i, l) in lines.iter().enumerate() {
        assert!(l.starts_with(&format!("line-{i:04} ")), "{i}: {l}");
    }

    // The reports really crossed rotations: this run's records lie in more
    // than one generation of web.log.
    let live = root.path().join("logs/bus/web.log");
    let holding: Vec<_> = generations(&live)
        .into_iter()
        .filter(|g| {
            read_records(g).unwrap().iter().any(|r| {
                r.topic == wire::TOPIC
                    && wire::parse_report(&r.payload).is_some_and(|rep| rep.run() == outcome.run)
            })
        })
        .collect();
    assert!(holding.len() >= 3, "reports in {holding:?}");
    eprintln!(
        "measured: bootstrap of {LINES} lines, reports in {} generations of web.log, done in {took:?}",
        holding.len()
    );
}
