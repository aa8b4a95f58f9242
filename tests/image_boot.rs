//! End-to-end test of the default guest image with the stock Debian kernel
//! (`--kernel debian`; the fast kernel is booted by every e2e suite and checked
//! in `e2e_boot.rs`): build it with the library API
//! into a temporary cache (this downloads the Debian kernel package with
//! apt), boot it with a hand-written `-M microvm` QEMU command under TCG, and
//! check what castra relies on: the ready line, the handshake with the real
//! `castra broker` over the user-mode network carrying the fw_cfg token, the
//! agent hook, and that QMP `system_powerdown` makes QEMU exit on its own.
//! QEMU and the broker are always killed at the end.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use castra::image::{self, BuildOptions, DefaultImage, KernelChoice};
use common::broker::{Broker, state_root_with_tokens};
use common::free_port;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const POWERDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// Kills and reaps QEMU whatever happens in the test.
struct Qemu {
    child: Child,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Boot {
    qemu: Qemu,
    serial: PathBuf,
    qmp: PathBuf,
    started: Instant,
}

fn boot(image: &DefaultImage, dir: &Path, vm: &str, token: &str, broker_port: u16) -> Boot {
    fs::create_dir_all(dir).unwrap();
    let token_file = dir.join("token");
    fs::write(&token_file, token).unwrap();
    let serial = dir.join("serial.log");
    let qmp = dir.join("qmp.sock");
    // Without the host's TSC rate the guest hangs calibrating against the PIT
    // on a loaded host (see src/image/clock.rs).
    let tcg =
        castra::qemu::guest_clock::tcg_kernel_args_for_host().expect("x86-64 host with a TSC");
    let append = format!(
        "{} castra.vm={vm} castra.broker_port={broker_port} {tcg}",
        image.cmdline
    );
    let started = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,acpi=on",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "256",
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-device,netdev=n0",
        ])
        .arg("-fw_cfg")
        .arg(format!(
            "name=opt/castra/token,file={}",
            token_file.display()
        ))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .arg("-append")
        .arg(append)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("qemu.log")).unwrap())
        .spawn()
        .expect("qemu-system-x86_64 must be installed");
    Boot {
        qemu: Qemu { child },
        serial,
        qmp,
        started,
    }
}

impl Boot {
    fn console(&self) -> String {
        fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits for a whole console line containing `needle`; returns it.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let text = self.console();
            // Only whole lines: the serial log may end in the middle of one.
            let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            if let Some(line) = whole.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Ok(Some(status)) = self.qemu.child.try_wait() {
                panic!("qemu exited ({status}) before {needle:?}; console:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the console within {READY_TIMEOUT:?}; console:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `system_powerdown` over QMP and returns how long QEMU took to exit.
    fn power_down(&mut self) -> Duration {
        let stream = UnixStream::connect(&self.qmp).expect("connect to the QMP socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains("\"QMP\""), "QMP greeting: {line}");
        for cmd in ["qmp_capabilities", "system_powerdown"] {
            writeln!(writer, "{{\"execute\":\"{cmd}\"}}").unwrap();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if line.contains("\"return\"") {
                    break;
                }
                assert!(!line.contains("\"error\""), "{cmd}: {line}");
            }
        }
        let sent = Instant::now();
        loop {
            if let Some(status) = self.qemu.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "qemu exit status after powerdown: {status}"
                );
                return sent.elapsed();
            }
            assert!(
                sent.elapsed() < POWERDOWN_TIMEOUT,
                "qemu still running {POWERDOWN_TIMEOUT:?} after system_powerdown; console:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The stock Debian kernel (a temporary cache would compile the fast one again).
fn debian() -> BuildOptions {
    BuildOptions {
        kernel: KernelChoice::Debian,
        ..BuildOptions::default()
    }
}

fn timed_build(opts: &BuildOptions) -> (DefaultImage, Vec<String>, Duration) {
    let mut lines = Vec::new();
    let started = Instant::now();
    let image = image::build(opts, &mut |l: &str| {
        println!("  build: {l}");
        lines.push(l.to_string());
    })
    .unwrap_or_else(|e| panic!("image build failed: {e}"));
    (image, lines, started.elapsed())
}

#[test]
fn default_image_builds_boots_handshakes_and_powers_off() {
    let cache = tempfile::tempdir().unwrap();
    // SAFETY: this is the only test in this binary and no other thread runs yet.
    unsafe { std::env::set_var("CASTRA_CACHE_DIR", cache.path()) };

    // A missing image names the command that builds it.
    let missing = image::locate().unwrap_err().to_string();
    assert!(missing.contains("castra image build"), "{missing}");

    // Cold build, then a warm one that must be a no-op with the same image.
    let (img, _, cold) = timed_build(&debian());
    let (again, lines, warm) = timed_build(&debian());
    assert_eq!(again, img);
    assert!(
        lines.iter().any(|l| l.contains("up to date")),
        "warm build did not say it was a no-op: {lines:?}"
    );
    assert_eq!(image::locate().unwrap(), img);
    let initrd_size = fs::metadata(&img.initrd).unwrap().len();
    let kernel_size = fs::metadata(&img.kernel).unwrap().len();
    // Only finished images under their key: no scratch directories left.
    let leftovers: Vec<_> = fs::read_dir(cache.path().join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "scratch left behind: {leftovers:?}");

    // Boot 1: no agent, so the init does a handshake-only hello to the broker.
    let token = "3f1c0ffee0ddba11";
    let root = state_root_with_tokens(&[("testvm", token)]);
    let port = free_port();
    let broker = Broker::start(root.path(), port, &[]);
    let mut vm = boot(&img, &cache.path().join("vm1"), "testvm", token, port);
    let ready = vm.wait_for_line("castra-guest: ready");
    let boot_to_ready = vm.started.elapsed();
    assert!(ready.contains("vm=testvm"), "{ready}");
    let handshake = vm.wait_for_line("castra-guest: broker handshake:");
    let connect = vm.started.elapsed();
    assert!(handshake.ends_with("broker handshake: ok"), "{handshake}");
    // The real broker granted it: so the hello carried the VM name from the
    // command line and the fw_cfg token (a wrong one is denied), and asked
    // for no bus (no session, no capabilities).
    let granted = broker.wait_event(|e| e["event"] == "handshake_granted" && e["vm"] == "testvm");
    assert_eq!(granted["session"], serde_json::Value::Null, "{granted}");
    assert_eq!(granted["capabilities"], serde_json::json!([]), "{granted}");
    let s = broker.state_when(|s| s.vms.get("testvm").is_some_and(|v| v.handshakes == 1));
    assert!(s.vms["testvm"].handshake_only, "{s:#?}");
    assert_eq!(s.denied_unknown_vm + s.vms["testvm"].denials, 0, "{s:#?}");
    let powerdown = vm.power_down();
    assert!(
        vm.console()
            .contains("castra-init: power button, powering off"),
        "{}",
        vm.console()
    );
    drop(vm);

    // Boot 2: an extra file at /bin/castra-agent is started by the init with
    // castra's environment; changing the inputs builds a new image.
    let agent = cache.path().join("agent.sh");
    fs::write(
        &agent,
        "#!/bin/sh\necho \"agent-test: up vm=$CASTRA_VM broker=$CASTRA_BROKER_HOST:$CASTRA_BROKER_PORT host=$(hostname) token=$(cat $CASTRA_TOKEN_FILE)\"\n",
    )
    .unwrap();
    let opts = BuildOptions {
        extra_files: vec![(agent, "/bin/castra-agent".into(), 0o755)],
        ..debian()
    };
    let (with_agent, _, rebuild) = timed_build(&opts);
    assert_ne!(with_agent.id, img.id);
    assert_eq!(image::locate().unwrap(), with_agent);
    let mut vm = boot(
        &with_agent,
        &cache.path().join("vm2"),
        "agentvm",
        "tok2",
        4999,
    );
    let line = vm.wait_for_line("agent-test: up");
    assert!(
        line.ends_with("agent-test: up vm=agentvm broker=10.0.2.2:4999 host=agentvm token=tok2"),
        "{line}"
    );
    assert!(!vm.console().contains("broker handshake"));
    let powerdown2 = vm.power_down();
    drop(vm);

    println!(
        "measured: cold build {:.1}s, warm build {:.2}s, rebuild with agent {:.1}s, \
         kernel {} KiB, initrd {} KiB, boot-to-ready {:.2}s, boot-to-handshake {:.2}s, \
         powerdown-to-exit {:.2}s / {:.2}s",
        cold.as_secs_f64(),
        warm.as_secs_f64(),
        rebuild.as_secs_f64(),
        kernel_size / 1024,
        initrd_size / 1024,
        boot_to_ready.as_secs_f64(),
        connect.as_secs_f64(),
        powerdown.as_secs_f64(),
        powerdown2.as_secs_f64(),
    );
}
