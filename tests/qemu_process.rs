//! Real-QEMU tests of the process layer (TCG only): launch through the argv
//! builder, liveness from /proc (also while QEMU is SIGSTOPped), QMP, the
//! shutdown ladder, launch errors and kill -9. The guest is a tiny PVH ELF
//! written here that halts forever and ignores the power button, so the
//! cooperative (powerdown) stage is covered by the end-to-end tests with a
//! real Linux guest instead. Every QEMU started here is SIGKILLed by a guard.

mod common;

use castra::config::{
    AccelChoice, ByteSize, Forward, ImageSpec, Lifecycle, Machine, Proto, VmSpec,
};
use castra::layout::{StateLayout, VmPaths};
use castra::qemu::argv::{self, LaunchInputs};
use castra::qemu::process::{self, LaunchError, Liveness, ProcessIdentity};
use castra::qemu::qmp::{Qmp, QmpError};
use castra::qemu::shutdown::{self, ShutdownEvent, Stage};
use castra::qemu::{Accel, BootImage, qemu_binary};
use common::free_port;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An ELF32 that QEMU boots via PVH: one PT_LOAD at 1 MiB, a Xen
/// PHYS32_ENTRY note, and code `cli; hlt; jmp .-1`.
fn pvh_halt_stub() -> Vec<u8> {
    const BASE: u32 = 0x10_0000;
    const NOTE_OFF: u32 = 52 + 2 * 32;
    const CODE_OFF: u32 = NOTE_OFF + 20;
    const CODE: [u8; 4] = [0xfa, 0xf4, 0xeb, 0xfd];
    const SIZE: u32 = CODE_OFF + CODE.len() as u32;
    let entry = BASE + CODE_OFF;

    let mut b = Vec::new();
    let u16le = |b: &mut Vec<u8>, v: u16| b.extend_from_slice(&v.to_le_bytes());
    let u32le = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
    // ELF header.
    b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0]);
    b.extend_from_slice(&[0; 8]);
    u16le(&mut b, 2); // ET_EXEC
    u16le(&mut b, 3); // EM_386
    u32le(&mut b, 1); // EV_CURRENT
    u32le(&mut b, entry);
    u32le(&mut b, 52); // e_phoff
    u32le(&mut b, 0); // e_shoff
    u32le(&mut b, 0); // e_flags
    u16le(&mut b, 52); // e_ehsize
    u16le(&mut b, 32); // e_phentsize
    u16le(&mut b, 2); // e_phnum
    u16le(&mut b, 40); // e_shentsize
    u16le(&mut b, 0); // e_shnum
    u16le(&mut b, 0); // e_shstrndx
    // PT_LOAD: the whole file at 1 MiB.
    for v in [1, 0, BASE, BASE, SIZE, SIZE, 5, 0x1000] {
        u32le(&mut b, v);
    }
    // PT_NOTE.
    for v in [4, NOTE_OFF, BASE + NOTE_OFF, BASE + NOTE_OFF, 20, 20, 4, 4] {
        u32le(&mut b, v);
    }
    // Note: namesz, descsz, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0", entry.
    for v in [4, 4, 18] {
        u32le(&mut b, v);
    }
    b.extend_from_slice(b"Xen\0");
    u32le(&mut b, entry);
    b.extend_from_slice(&CODE);
    assert_eq!(b.len(), SIZE as usize);
    b
}

/// SIGKILLs the QEMU when the test ends, however it ends.
struct Guard {
    id: ProcessIdentity,
    marker: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if process::probe(&self.id, &self.marker) == Liveness::Alive {
            let _ = kill(Pid::from_raw(self.id.pid), Signal::SIGKILL);
        }
    }
}

struct Vm {
    _dir: tempfile::TempDir,
    paths: VmPaths,
    kernel: PathBuf,
    token: PathBuf,
}

impl Vm {
    /// A VM directory under a temp dir whose name contains a comma, so every
    /// launch also proves the argv's escaping against real QEMU.
    fn new(name: &str) -> Vm {
        let dir = tempfile::Builder::new()
            .prefix("castra,q")
            .tempdir()
            .unwrap();
        let paths = StateLayout::new(dir.path().join("state")).vm(name);
        let kernel = dir.path().join("stub,pvh.elf");
        std::fs::write(&kernel, pvh_halt_stub()).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret").unwrap();
        Vm {
            _dir: dir,
            paths,
            kernel,
            token,
        }
    }

    fn marker(&self) -> String {
        self.paths.qmp_socket().to_string_lossy().into_owned()
    }

    fn argv(&self, kernel: &Path) -> Vec<String> {
        let spec = VmSpec {
            name: self.paths.dir.file_name().unwrap().to_string_lossy().into(),
            cpus: 1,
            memory: ByteSize(64 * 1024 * 1024),
            image: ImageSpec::Default,
            machine: Machine::Microvm,
            accel: AccelChoice::Tcg,
            forwards: vec![Forward {
                proto: Proto::Tcp,
                host_addr: "127.0.0.1".parse().unwrap(),
                host_port: free_port(),
                guest_port: 80,
            }],
            shares: vec![],
        };
        let boot = BootImage::Kernel {
            kernel: kernel.to_path_buf(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            disk: None,
        };
        argv::build(&LaunchInputs {
            spec: &spec,
            boot: &boot,
            accel: Accel::Tcg,
            paths: &self.paths,
            fw_cfg: &[("opt/castra/token".into(), self.token.clone())],
            extra_cmdline: &["castra.vm=t".into()],
        })
    }

    fn launch(&self) -> (ProcessIdentity, Guard) {
        let id = process::launch(&qemu_binary(), &self.argv(&self.kernel), &self.paths)
            .unwrap_or_else(|e| panic!("launch failed: {e}"));
        let guard = Guard {
            id,
            marker: self.marker(),
        };
        (id, guard)
    }
}

fn signal(id: &ProcessIdentity, sig: Signal) {
    kill(Pid::from_raw(id.pid), sig).unwrap();
}

fn wait_until_gone(id: &ProcessIdentity, marker: &str) -> Vec<Liveness> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let l = process::probe(id, marker);
        if seen.last() != Some(&l) {
            seen.push(l);
        }
        if l == Liveness::Gone || Instant::now() > deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn launch_probe_qmp_freeze_and_sigterm_ladder() {
    let vm = Vm::new("web");
    let marker = vm.marker();
    let start = Instant::now();
    let (id, _guard) = vm.launch();
    eprintln!("launch took {:?}", start.elapsed());

    assert_eq!(process::probe(&id, &marker), Liveness::Alive);
    assert_eq!(
        process::probe(&id, "/some/other/vm/qmp.sock"),
        Liveness::Reused,
        "another VM's marker must not match"
    );
    assert!(process::wait_for_socket(
        &vm.paths.qmp_socket(),
        Duration::from_secs(5)
    ));
    {
        let mut qmp = Qmp::connect(&vm.paths.qmp_socket(), Duration::from_secs(5)).unwrap();
        assert!(qmp.greeting().version.0 >= 7);
        let status = qmp.query_status().unwrap();
        assert!(status.running, "{status:?}");
        assert_eq!(status.status, "running");
        // The token travelled by file: QEMU exposes the fw_cfg entry, no secret in argv.
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", id.pid)).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains("s3cret"));
    }

    // A frozen QEMU: probe still answers at once, QMP times out instead of hanging.
    signal(&id, Signal::SIGSTOP);
    let start = Instant::now();
    let l = process::probe(&id, &marker);
    let took = start.elapsed();
    assert_eq!(l, Liveness::Alive);
    eprintln!("probe of a SIGSTOPped qemu took {took:?}");
    // Bounds that only catch a hang: a frozen QEMU never answers by itself.
    assert!(took < Duration::from_secs(10), "probe took {took:?}");
    let start = Instant::now();
    let err = Qmp::connect(&vm.paths.qmp_socket(), Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30));
    signal(&id, Signal::SIGCONT);

    // The halting guest ignores the power button: SIGTERM stops it.
    let waits = Lifecycle {
        powerdown_wait: Duration::from_millis(800),
        sigterm_wait: Duration::from_secs(10),
    };
    let mut events = Vec::new();
    let out = shutdown::shutdown(&id, &marker, &vm.paths.qmp_socket(), &waits, &mut |e| {
        events.push(e)
    });
    assert_eq!(
        events,
        vec![
            ShutdownEvent::PowerdownSent,
            ShutdownEvent::SigtermSent,
            ShutdownEvent::Exited {
                stage: Stage::Sigterm
            },
        ]
    );
    assert_eq!(out.stopped_by, Stage::Sigterm);
    assert!(out.exited);
    assert!(out.elapsed >= waits.powerdown_wait, "{:?}", out.elapsed);
    assert_ne!(process::probe(&id, &marker), Liveness::Alive);
    // -D keeps QEMU's messages after daemonizing.
    let log = std::fs::read_to_string(vm.paths.qemu_log()).unwrap();
    assert!(log.contains("terminating on signal 15"), "qemu.log: {log}");

    // Idempotent.
    let mut again = Vec::new();
    let out = shutdown::shutdown(&id, &marker, &vm.paths.qmp_socket(), &waits, &mut |e| {
        again.push(e)
    });
    assert_eq!(out.stopped_by, Stage::AlreadyStopped);
    assert_eq!(
        again,
        vec![ShutdownEvent::Exited {
            stage: Stage::AlreadyStopped
        }]
    );
}

#[test]
fn a_frozen_qemu_is_stopped_by_sigterm_after_qmp_times_out() {
    let vm = Vm::new("frozen");
    let marker = vm.marker();
    let (id, _guard) = vm.launch();
    signal(&id, Signal::SIGSTOP);
    let waits = Lifecycle {
        powerdown_wait: Duration::from_secs(30),
        sigterm_wait: Duration::from_secs(10),
    };
    let mut events = Vec::new();
    let out = shutdown::shutdown(&id, &marker, &vm.paths.qmp_socket(), &waits, &mut |e| {
        events.push(e)
    });
    assert!(
        matches!(events.first(), Some(ShutdownEvent::QmpUnavailable { reason }) if reason.contains("no answer")),
        "{events:?}"
    );
    assert_eq!(
        events[1..],
        [
            ShutdownEvent::SigtermSent,
            ShutdownEvent::Exited {
                stage: Stage::Sigterm
            }
        ]
    );
    assert_eq!(out.stopped_by, Stage::Sigterm);
    // It did not sit out the 30 s powerdown wait for a button nobody pressed
    // (the first event says QMP gave no answer, so the ladder moved on).
    assert!(out.elapsed < Duration::from_secs(25), "{:?}", out.elapsed);
}

#[test]
fn a_process_ignoring_sigterm_is_sigkilled() {
    let marker = format!("castra-ladder-test-{}", std::process::id());
    // Our own child: once killed it stays a zombie until reaped, which the
    // ladder counts as exited.
    let mut child = common::KillOnDrop::spawn(
        std::process::Command::new("sh")
            .args([
                "-c",
                "trap '' TERM; echo ready; while :; do sleep 1; done",
                &marker,
            ])
            .stdout(std::process::Stdio::piped()),
    );
    // Only once the trap is set may SIGTERM come.
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready, "ready\n");
    let pid = child.id() as i32;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let id = ProcessIdentity {
        pid,
        start_ticks: process::parse_stat(&stat).unwrap().start_ticks,
    };
    assert_eq!(process::probe(&id, &marker), Liveness::Alive);
    let waits = Lifecycle {
        powerdown_wait: Duration::from_secs(5),
        sigterm_wait: Duration::from_millis(500),
    };
    let mut events = Vec::new();
    let out = shutdown::shutdown(
        &id,
        &marker,
        Path::new("/nonexistent/qmp.sock"),
        &waits,
        &mut |e| events.push(e),
    );
    let _ = child.kill();
    child.wait().unwrap();
    assert!(
        matches!(events.first(), Some(ShutdownEvent::QmpUnavailable { .. })),
        "{events:?}"
    );
    assert_eq!(
        events[1..],
        [
            ShutdownEvent::SigtermSent,
            ShutdownEvent::SigkillSent,
            ShutdownEvent::Exited {
                stage: Stage::Sigkill
            }
        ]
    );
    assert_eq!(out.stopped_by, Stage::Sigkill);
    assert!(out.exited);
}

#[test]
fn a_bad_launch_reports_qemu_log_tail() {
    let vm = Vm::new("broken");
    let missing = vm.paths.dir.join("no-such-kernel");
    let err = process::launch(&qemu_binary(), &vm.argv(&missing), &vm.paths).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LaunchError::Failed { .. }), "{msg}");
    assert!(
        msg.starts_with("vm \"broken\": qemu failed to start"),
        "{msg}"
    );
    assert!(msg.contains("qemu.log"), "{msg}");
    assert!(msg.contains("could not open kernel file"), "{msg}");
    assert!(!vm.paths.pidfile().exists());
}

#[test]
fn kill_9_leaves_the_identity_gone() {
    let vm = Vm::new("victim");
    let marker = vm.marker();
    let (id, _guard) = vm.launch();
    assert_eq!(process::probe(&id, &marker), Liveness::Alive);
    signal(&id, Signal::SIGKILL);
    let seen = wait_until_gone(&id, &marker);
    assert_eq!(seen.last(), Some(&Liveness::Gone), "{seen:?}");
    // Before init reaps it, a killed QEMU may show as exiting (its leader a
    // zombie while other threads still die) or as a zombie; never as reused.
    assert!(
        seen.iter().all(|l| matches!(
            l,
            Liveness::Alive | Liveness::Exiting | Liveness::Zombie | Liveness::Gone
        )),
        "{seen:?}"
    );
}
