//! The guest agent (`castra-agent`): runs inside every guest of the default
//! image, proves the guest is up by holding a bus session with the host
//! broker, heartbeats it, and reconnects with capped exponential backoff
//! after any failure, re-handshaking each time. Synchronous, std only, so it
//! links statically. Identity comes from `boot`, one connection is `client`,
//! delays are `backoff`; this module parses flags and runs the loop.

pub mod backoff;
pub mod boot;
pub mod bootstrap;
pub mod bus;
pub mod client;
pub mod exec;
pub mod shares;
pub mod timeline;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::broker::session::HEARTBEAT_INTERVAL_MS;
use crate::broker::wire::hello::{CAP_BUS_V1, Hello, valid_vm_name};
use backoff::Backoff;
use client::{Ended, Target};

/// The host as QEMU user networking shows it to the guest.
pub const DEFAULT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2));

const USAGE: &str = "\
usage: castra-agent [--vm NAME] [--host ADDR] [--port PORT] [--token-file PATH]
                    [--cmdline PATH] [--heartbeat-ms MS]
       castra-agent publish [--topic T] [--text] PAYLOAD|-   [connection flags]
       castra-agent subscribe --topic T [--topic T ...]      [connection flags]

publish prints the seq once the broker has made the message durable (exit 0),
else exits 1; PAYLOAD is JSON (or text with --text; - reads stdin).
subscribe prints each message as one JSON line until the session ends (exit 1).

Holds a bus session with the castra broker and reconnects forever. Runs the
bootstrap requests the host publishes on vm:<name> with /bin/sh -c and reports
on castra.bootstrap.
Defaults: vm and port from castra.vm= / castra.broker_port= on /proc/cmdline,
host 10.0.2.2, token from /sys/firmware/qemu_fw_cfg/by_name/opt/castra/token/raw.
Before connecting it mounts the VM's shares (virtio-9p) listed in
/sys/firmware/qemu_fw_cfg/by_name/opt/castra/shares/raw.
Environment: CASTRA_AGENT_VM, CASTRA_AGENT_HOST, CASTRA_AGENT_PORT,
CASTRA_AGENT_TOKEN_FILE (flags win), CASTRA_AGENT_SHARES_FILE.";

/// Resolved agent settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub vm: String,
    pub host: IpAddr,
    pub port: u16,
    pub token_file: PathBuf,
    pub heartbeat_interval: Duration,
    /// The share table to mount before connecting (absent: none).
    pub shares_file: PathBuf,
}

/// Build the config from flags, then environment, then the boot files.
pub fn config_from(
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AgentConfig, String> {
    let flag = |name: &str| -> Result<Option<String>, String> {
        match args.iter().position(|a| a == name) {
            None => Ok(None),
            Some(i) => args
                .get(i + 1)
                .cloned()
                .map(Some)
                .ok_or_else(|| format!("{name} needs a value")),
        }
    };
    let known = [
        "--vm",
        "--host",
        "--port",
        "--token-file",
        "--cmdline",
        "--heartbeat-ms",
    ];
    let mut i = 0;
    while i < args.len() {
        if !known.contains(&args[i].as_str()) {
            return Err(format!("unknown argument {:?}", args[i]));
        }
        i += 2;
    }
    let cmdline = flag("--cmdline")?.unwrap_or_else(|| boot::CMDLINE.into());
    let boot = boot::read_params(cmdline.as_ref(), boot::FW_CFG_DIR.as_ref());
    let vm = flag("--vm")?
        .or_else(|| env("CASTRA_AGENT_VM"))
        .or(boot.vm)
        .ok_or("no VM name: castra.vm= is not on the kernel command line nor opt/castra/vm in fw_cfg (or pass --vm)")?;
    if !valid_vm_name(&vm) {
        return Err(format!("invalid VM name {vm:?}"));
    }
    let host = match flag("--host")?.or_else(|| env("CASTRA_AGENT_HOST")) {
        Some(h) => h
            .parse()
            .map_err(|_| format!("invalid host address {h:?}"))?,
        None => DEFAULT_HOST,
    };
    let port = match flag("--port")?.or_else(|| env("CASTRA_AGENT_PORT")) {
        Some(p) => p.parse().map_err(|_| format!("invalid port {p:?}"))?,
        None => boot.broker_port.ok_or(
            "no broker port: castra.broker_port= is not on the kernel command line (or pass --port)",
        )?,
    };
    let token_file = flag("--token-file")?
        .or_else(|| env("CASTRA_AGENT_TOKEN_FILE"))
        .unwrap_or_else(|| boot::FW_CFG_TOKEN.into())
        .into();
    let heartbeat_ms = match flag("--heartbeat-ms")? {
        Some(ms) => ms
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| format!("invalid --heartbeat-ms {ms:?}"))?,
        None => HEARTBEAT_INTERVAL_MS,
    };
    Ok(AgentConfig {
        vm,
        host,
        port,
        token_file,
        heartbeat_interval: Duration::from_millis(heartbeat_ms),
        shares_file: env("CASTRA_AGENT_SHARES_FILE")
            .unwrap_or_else(|| crate::config::share_table::FW_CFG_SHARES_PATH.into())
            .into(),
    })
}

/// Logs a line only when the agent's state changes.
struct StateLog {
    last: String,
}

impl StateLog {
    fn say(&mut self, key: &str, line: &str) {
        if self.last != key {
            eprintln!("castra-agent: {line}");
            self.last = key.to_owned();
        }
    }
}

fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// The connection target for `config` (token read now).
fn target(config: &AgentConfig) -> Target {
    Target {
        addr: SocketAddr::new(config.host, config.port),
        hello: Hello {
            vm: config.vm.clone(),
            capabilities: vec![CAP_BUS_V1.to_owned()],
            token: crate::broker::token::read_token(&config.token_file),
            boot: Vec::new(),
        },
        heartbeat_interval: config.heartbeat_interval,
        connect_timeout: Duration::from_secs(3),
    }
}

/// A `publish` or `subscribe` command line, split from the connection flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusCommand {
    pub subscribe: bool,
    pub topics: Vec<String>,
    pub text: bool,
    pub payload: Option<String>,
    /// The rest, for [`config_from`].
    pub connection: Vec<String>,
}

/// Parse `publish ...` / `subscribe ...` (`args` without the command word).
pub fn bus_command(subscribe: bool, args: &[String]) -> Result<BusCommand, String> {
    let mut cmd = BusCommand {
        subscribe,
        topics: Vec::new(),
        text: false,
        payload: None,
        connection: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--topic" => cmd
                .topics
                .push(it.next().ok_or("--topic needs a value")?.clone()),
            "--text" if !subscribe => cmd.text = true,
            flag if flag.starts_with("--") => {
                cmd.connection.push(a.clone());
                cmd.connection
                    .push(it.next().ok_or(format!("{flag} needs a value"))?.clone());
            }
            _ if !subscribe && cmd.payload.is_none() => cmd.payload = Some(a.clone()),
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    if subscribe && cmd.topics.is_empty() {
        return Err("subscribe needs at least one --topic".into());
    }
    if !subscribe && cmd.topics.len() > 1 {
        return Err("publish takes one --topic".into());
    }
    if !subscribe && cmd.topics.is_empty() {
        cmd.topics
            .push(crate::broker::wire::topic::BROADCAST.to_owned());
    }
    Ok(cmd)
}

fn run_bus(cmd: &BusCommand, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    let config = config_from(&cmd.connection, env)?;
    let target = target(&config);
    if cmd.subscribe {
        return bus::subscribe(&target, &cmd.topics, &mut std::io::stdout().lock());
    }
    let raw = match cmd.payload.as_deref() {
        Some("-") | None => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| format!("reading stdin: {e}"))?;
            s
        }
        Some(p) => p.to_owned(),
    };
    let payload = if cmd.text {
        serde_json::Value::String(raw.strip_suffix('\n').unwrap_or(&raw).to_owned())
    } else {
        serde_json::from_str(&raw)
            .map_err(|e| format!("payload is not valid JSON ({e}); pass --text to send text"))?
    };
    let seq = bus::publish(&target, &cmd.topics[0], payload)?;
    println!("{seq}");
    Ok(())
}

/// Run forever (returns only on a configuration error). `started_ms` is the
/// guest uptime at which the agent started (its boot timeline mark).
pub fn run(config: &AgentConfig, started_ms: u64) -> ExitCode {
    let boot_marks = timeline::marks(started_ms, &|k| std::env::var(k).ok());
    let addr = SocketAddr::new(config.host, config.port);
    let mut log = StateLog {
        last: String::new(),
    };
    eprintln!(
        "castra-agent: vm {} connecting to broker {addr} (heartbeat every {} ms)",
        config.vm,
        config.heartbeat_interval.as_millis()
    );
    for line in shares::mount_all(&config.shares_file) {
        eprintln!("castra-agent: {line}");
    }
    let mut backoff = Backoff::default();
    let bootstraps = bootstrap::Bootstraps::default();
    let mut shown_timeline = false;
    loop {
        let mut target = target(config);
        target.hello.boot = boot_marks.clone();
        target
            .hello
            .capabilities
            .push(crate::broker::stream::wire::CAP_EXEC_V1.to_owned());
        if target.hello.token.is_none() {
            log.say(
                "no-token",
                &format!(
                    "no token in {} (sending hello without one)",
                    config.token_file.display()
                ),
            );
        }
        let mut opened = false;
        let ended = client::run_once(
            &target,
            &mut |session| {
                opened = true;
                if !std::mem::replace(&mut shown_timeline, true) {
                    eprintln!("castra-agent: {}", timeline::console_line(&boot_marks));
                }
                log.say(
                    &format!("connected {session}"),
                    &format!("connected session={session}"),
                );
            },
            &mut |topic, from, payload| {
                bootstraps.handle(&target, topic, from, payload);
            },
            &mut |id| exec::open(&target, id),
        );
        if opened {
            backoff.reset();
        }
        match ended {
            Ended::Unreachable(why) => log.say(
                "unreachable",
                &format!("broker unreachable: {why} (retrying)"),
            ),
            Ended::Refused(reason) => log.say(
                &format!("refused {reason}"),
                &format!("handshake refused: {reason} (retrying)"),
            ),
            Ended::Lost { session, why } => log.say(
                &format!("lost {session}"),
                &format!("disconnected session={session}: {why} (reconnecting)"),
            ),
        }
        std::thread::sleep(backoff.next_delay(random()));
    }
}

/// Entry point of `src/bin/castra-agent.rs`.
pub fn main() -> ExitCode {
    let started_ms = timeline::uptime_ms();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if let Some(word @ ("publish" | "subscribe")) = args.first().map(String::as_str) {
        let env = |k: &str| std::env::var(k).ok();
        let result =
            bus_command(word == "subscribe", &args[1..]).and_then(|cmd| run_bus(&cmd, &env));
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("castra-agent {word}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match config_from(&args, &|k| std::env::var(k).ok()) {
        Ok(config) => run(&config, started_ms),
        Err(e) => {
            eprintln!("castra-agent: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn bus_command_lines() {
        let cmd = bus_command(false, &args("--topic jobs --vm web {\"a\":1} --port 9")).unwrap();
        assert_eq!(cmd.topics, vec!["jobs"]);
        assert_eq!(cmd.payload.as_deref(), Some("{\"a\":1}"));
        assert_eq!(cmd.connection, args("--vm web --port 9"));
        let cmd = bus_command(false, &args("--text -")).unwrap();
        assert_eq!((cmd.topics[0].as_str(), cmd.text), ("broadcast", true));
        let cmd = bus_command(true, &args("--topic a --topic vm:web")).unwrap();
        assert_eq!(cmd.topics, vec!["a", "vm:web"]);
        for (sub, a, want) in [
            (true, "", "at least one --topic"),
            (true, "--topic a extra", "unexpected argument"),
            (false, "a b", "unexpected argument"),
            (false, "--topic", "needs a value"),
            (false, "--topic a --topic b 1", "one --topic"),
        ] {
            let err = bus_command(sub, &args(a)).unwrap_err();
            assert!(err.contains(want), "{a}: {err}");
        }
    }

    #[test]
    fn config_sources_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        std::fs::write(&cmdline, "quiet castra.vm=web castra.broker_port=7750\n").unwrap();
        let c = cmdline.display().to_string();
        let no_env = |_: &str| None;
        let cfg = config_from(&args(&format!("--cmdline {c}")), &no_env).unwrap();
        assert_eq!(
            (cfg.vm.as_str(), cfg.host, cfg.port, cfg.heartbeat_interval),
            ("web", DEFAULT_HOST, 7750, Duration::from_secs(5))
        );
        assert_eq!(cfg.token_file, PathBuf::from(boot::FW_CFG_TOKEN));
        let env = |k: &str| (k == "CASTRA_AGENT_VM").then(|| "db".to_owned());
        let cfg = config_from(&args(&format!("--cmdline {c}")), &env).unwrap();
        assert_eq!(cfg.vm, "db");
        let cfg = config_from(
            &args(&format!(
                "--cmdline {c} --vm x --host 127.0.0.1 --port 9 --heartbeat-ms 50"
            )),
            &env,
        )
        .unwrap();
        assert_eq!((cfg.vm.as_str(), cfg.port), ("x", 9));
        assert_eq!(cfg.host, IpAddr::V4(Ipv4Addr::LOCALHOST));

        let missing = dir.path().join("none").display().to_string();
        for (a, want) in [
            (format!("--cmdline {missing}"), "no VM name"),
            (format!("--cmdline {missing} --vm web"), "no broker port"),
            (format!("--cmdline {c} --vm ../x"), "invalid VM name"),
            (format!("--cmdline {c} --port x"), "invalid port"),
            (format!("--cmdline {c} --bogus 1"), "unknown argument"),
            (format!("--cmdline {c} --vm"), "needs a value"),
        ] {
            let err = config_from(&args(&a), &no_env).unwrap_err();
            assert!(err.contains(want), "{a}: {err}");
        }
    }
}
