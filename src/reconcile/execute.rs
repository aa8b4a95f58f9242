//! Execute: carry out plan steps against real QEMUs. Independent VMs run in parallel (one
//! thread each); every step is idempotent and re-checks what it needs (a stale pidfile, a
//! leftover socket, a missing overlay) instead of trusting that the previous run finished.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::broker::control::{self, BrokerState};
use crate::config::{AccelChoice, ImageSpec, Project};
use crate::events::{Event, Reporter, now_ms};
use crate::fsutil::{create_private_dir, remove_if_exists};
use crate::image;
use crate::layout::{StateLayout, VmPaths};
use crate::qemu::accel::{self, AccelDecision};
use crate::qemu::process::{self, ProcessIdentity};
use crate::qemu::qmp::Qmp;
use crate::qemu::shutdown::{self, ShutdownEvent, ShutdownOutcome, Stage};
use crate::qemu::{Accel, BootImage, argv, guest_clock, qemu_binary};

use super::desired::DesiredVm;
use super::launch_prep::{check_shares, check_socket_path, clear_leftovers};
use super::observe::{Observed, ObservedVm};
use super::overlay::{must_exist, overlay_over};
use super::plan::{Plan, Step};
use super::record::{self, LaunchRecord};
use super::secret;
use super::step_error::StepError;
use super::stop_words::{launched_words, shutdown_words, stage_detail};

pub use crate::qemu::fw_cfg::TOKEN_FW_CFG;

/// The kernel command line of a kernel + root disk image that sets none.
pub const DISK_ROOT_CMDLINE: &str = "console=ttyS0 root=/dev/vda rw";

/// Test seam, read only by tests: when set to a VM's name, the replacement launch of that
/// VM's restart gets an argument QEMU refuses, so the new spec fails after the old VM
/// stopped (and apply must roll back).
pub const TEST_BREAK_RESTART_ENV: &str = "CASTRA_TEST_BREAK_RESTART";

/// How a launch came about: a restart's replacement can be broken by the test seam.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Launch {
    Fresh,
    Replacement,
    Rollback,
}

/// How long a freshly daemonized QEMU may take to answer `query-status` with `running`.
pub const RUNNING_TIMEOUT: Duration = Duration::from_secs(15);

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub vm: String,
    pub action: &'static str,
    pub ok: bool,
    pub detail: String,
    pub elapsed: Duration,
}

/// Shared, per-run context.
pub struct Executor<'a> {
    pub project: &'a Project,
    pub layout: StateLayout,
    pub reporter: &'a Reporter,
    /// `auto` is probed at most once per run per probe kernel.
    accel_cache: Mutex<BTreeMap<(AccelChoice, Option<PathBuf>), AccelDecision>>,
    /// Kernel arguments for TCG guests' clocks, measured once per run (see `guest_clock`).
    tcg_clock_args: OnceLock<Option<String>>,
}

impl<'a> Executor<'a> {
    pub fn new(project: &'a Project, reporter: &'a Reporter) -> Self {
        Executor {
            project,
            layout: StateLayout::new(&project.state_root),
            reporter,
            accel_cache: Mutex::new(BTreeMap::new()),
            tcg_clock_args: OnceLock::new(),
        }
    }

    /// Run every step, independent VMs in parallel. Results in plan order.
    pub fn run(&self, plan: &Plan, desired: &[DesiredVm], observed: &Observed) -> Vec<StepResult> {
        std::thread::scope(|s| {
            let handles: Vec<_> = plan
                .steps
                .iter()
                .map(|step| s.spawn(move || self.run_step(step, desired, observed)))
                .collect();
            handles
                .into_iter()
                .zip(&plan.steps)
                .map(|(h, step)| {
                    h.join().unwrap_or_else(|_| StepResult {
                        vm: step.vm().to_owned(),
                        action: step.action(),
                        ok: false,
                        detail: "internal error: step thread panicked".into(),
                        elapsed: Duration::ZERO,
                    })
                })
                .collect()
        })
    }

    fn run_step(&self, step: &Step, desired: &[DesiredVm], observed: &Observed) -> StepResult {
        let t0 = Instant::now();
        let vm = step.vm();
        let seen = observed.get(vm);
        let want = desired.iter().find(|d| d.spec.name == vm);
        let result: Result<String, StepError> = match step {
            Step::Stop { .. } => self.stop(vm, seen).map(|o| stage_detail(&o)),
            Step::Start { .. } => match want {
                None => Err(StepError::NotDeclared),
                Some(want) => {
                    let previous = seen.and_then(|s| s.record.as_ref()).map(|r| &r.spec.image);
                    self.start(want, previous, Launch::Fresh)
                        .map(|pid| launched_words(want, pid))
                }
            },
            Step::Restart { .. } => match want {
                None => Err(StepError::NotDeclared),
                Some(want) => self.restart(want, seen),
            },
        };
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(e) => (false, e.to_string()),
        };
        StepResult {
            vm: vm.to_owned(),
            action: step.action(),
            ok,
            detail,
            elapsed: t0.elapsed(),
        }
    }

    /// Stop the VM, start it on its new spec; if that fails, start it again
    /// on the spec it ran (from its launch record) and say `rolled back`.
    fn restart(&self, want: &DesiredVm, seen: Option<&ObservedVm>) -> Result<String, StepError> {
        let vm = want.spec.name.as_str();
        let record = seen.and_then(|s| s.record.clone());
        self.stop(vm, seen)?;
        let previous = record.as_ref().map(|r| &r.spec.image);
        let error = match self.start(want, previous, Launch::Replacement) {
            Ok(pid) => return Ok(launched_words(want, pid)),
            Err(e) => e,
        };
        let Some(rec) = record else {
            return Err(error);
        };
        let old = DesiredVm {
            spec: rec.spec,
            image_id: rec.image_id,
            fingerprint: rec.fingerprint,
            host: rec.host,
        };
        match self.start(&old, Some(&want.spec.image), Launch::Rollback) {
            Ok(pid) => {
                self.reporter.emit(Event::VmRolledBack {
                    vm: vm.into(),
                    error: error.to_string(),
                    pid,
                });
                Err(StepError::RolledBack {
                    vm: vm.into(),
                    error: Box::new(error),
                    pid,
                })
            }
            Err(again) => Err(StepError::RollbackFailed {
                error: Box::new(error),
                again: Box::new(again),
            }),
        }
    }

    /// Start one VM and wait until QEMU reports it running. Returns its pid.
    /// `previous`: the image the VM last ran on (its overlay may be reused).
    fn start(
        &self,
        want: &DesiredVm,
        previous: Option<&ImageSpec>,
        launch: Launch,
    ) -> Result<i32, StepError> {
        let t0 = Instant::now();
        let spec = &want.spec;
        let vm = spec.name.as_str();
        let paths = self.layout.vm(vm);
        self.reporter.emit(Event::VmStarting { vm: vm.into() });
        let res = self.start_inner(want, previous, launch, &paths, t0);
        if let Err(error) = &res {
            self.reporter.emit(Event::VmStartFailed {
                vm: vm.into(),
                error: error.to_string(),
            });
        }
        res
    }

    fn start_inner(
        &self,
        want: &DesiredVm,
        previous_image: Option<&ImageSpec>,
        launch: Launch,
        paths: &VmPaths,
        t0: Instant,
    ) -> Result<i32, StepError> {
        if let Some(host) = &want.host {
            return self.start_on_host(want, host, paths, t0).map(|()| 0);
        }
        let spec = &want.spec;
        let vm = spec.name.as_str();
        create_private_dir(&paths.dir)?;
        check_socket_path(vm, &paths.qmp_socket())?;
        let (boot, probe_kernel) = self.boot_image(vm, &spec.image, previous_image, paths)?;
        let decision = self.accel(spec.accel, probe_kernel.as_deref());

        clear_leftovers(paths);

        let mut extra = vec![
            format!("castra.vm={vm}"),
            format!("castra.broker_port={}", self.project.broker.port),
        ];
        let clock_args = match decision.accel {
            Accel::Tcg => self
                .tcg_clock_args
                .get_or_init(guest_clock::tcg_kernel_args_for_host)
                .clone(),
            Accel::Kvm => None,
        };
        extra.extend(
            clock_args
                .iter()
                .flat_map(|a| a.split(' ').map(str::to_owned)),
        );
        // A fresh secret per launch, handed over by file (never on the command line).
        secret::write_new_token(&paths.token())?;
        let mut fw_cfg = vec![(TOKEN_FW_CFG.to_string(), paths.token())];
        // Name and broker port for guests that get no castra command line.
        let port = self.project.broker.port.to_string();
        for (name, file, text) in [
            (crate::qemu::fw_cfg::FW_CFG_VM, paths.fw_name(), vm),
            (
                crate::qemu::fw_cfg::FW_CFG_BROKER_PORT,
                paths.fw_broker_port(),
                &port,
            ),
        ] {
            crate::fsutil::write_atomic(&file, text.as_bytes()).map_err(|source| {
                StepError::Write {
                    vm: vm.into(),
                    path: file.clone(),
                    source,
                }
            })?;
            fw_cfg.push((name.to_string(), file));
        }
        if !spec.shares.is_empty() {
            check_shares(vm, &spec.shares)?;
            let table = crate::config::share_table::render(&spec.shares);
            crate::fsutil::write_atomic(&paths.shares(), table.as_bytes()).map_err(|source| {
                StepError::Write {
                    vm: vm.into(),
                    path: paths.shares(),
                    source,
                }
            })?;
            fw_cfg.push((
                crate::config::share_table::FW_CFG_NAME.to_string(),
                paths.shares(),
            ));
        }
        let mut args = argv::build(&argv::LaunchInputs {
            spec,
            boot: &boot,
            accel: decision.accel,
            paths,
            fw_cfg: &fw_cfg,
            extra_cmdline: &extra,
        });
        let broken = launch == Launch::Replacement
            && std::env::var(TEST_BREAK_RESTART_ENV).is_ok_and(|v| v == vm);
        if broken {
            args.push("-castra-test-break-restart".into());
        }
        // Before the spawn: a handshake before QEMU's parent returns belongs to this launch.
        let launched_at_ms = now_ms();
        let identity = process::launch(&qemu_binary(), &args, paths)?;
        let rec = LaunchRecord {
            spec: spec.clone(),
            image_id: want.image_id.clone(),
            fingerprint: want.fingerprint.clone(),
            accel: decision.accel,
            accel_reason: decision.reason.clone(),
            process: identity,
            qmp_socket: paths.qmp_socket(),
            launched_at_ms,
            castra_version: env!("CARGO_PKG_VERSION").into(),
            argv: std::iter::once(qemu_binary().to_string_lossy().into_owned())
                .chain(args.iter().cloned())
                .collect(),
            host: None,
        };
        record::write(&paths.launch_record(), &rec)?;
        wait_running(vm, &paths.qmp_socket(), RUNNING_TIMEOUT, paths)?;
        self.reporter.emit(Event::VmRunning {
            vm: vm.into(),
            pid: identity.pid,
            accel: decision.accel.as_str().into(),
            elapsed: t0.elapsed().as_millis() as u64,
        });
        Ok(identity.pid)
    }

    /// Resolve what QEMU boots; also the kernel to probe KVM with.
    fn boot_image(
        &self,
        vm: &str,
        image: &ImageSpec,
        previous: Option<&ImageSpec>,
        paths: &VmPaths,
    ) -> Result<(BootImage, Option<PathBuf>), StepError> {
        match image {
            ImageSpec::Default => {
                let img = image::locate()?;
                let probe = Some(img.kernel.clone());
                Ok((
                    BootImage::Kernel {
                        kernel: img.kernel,
                        initrd: Some(img.initrd),
                        cmdline: img.cmdline,
                        disk: None,
                    },
                    probe,
                ))
            }
            ImageSpec::Kernel {
                kernel,
                initrd,
                cmdline,
                disk,
            } => {
                must_exist(vm, "image.kernel", kernel)?;
                if let Some(i) = initrd {
                    must_exist(vm, "image.initrd", i)?;
                }
                let overlay = match disk {
                    Some(base) => Some(overlay_over(vm, base, previous, paths)?),
                    None => None,
                };
                let default_cmdline = match disk {
                    Some(_) => DISK_ROOT_CMDLINE,
                    None => "console=ttyS0",
                };
                Ok((
                    BootImage::Kernel {
                        kernel: kernel.clone(),
                        initrd: initrd.clone(),
                        cmdline: cmdline.clone().unwrap_or_else(|| default_cmdline.into()),
                        disk: overlay,
                    },
                    Some(kernel.clone()),
                ))
            }
            ImageSpec::Disk { path } => {
                let overlay = overlay_over(vm, path, previous, paths)?;
                let probe = image::locate().ok().map(|i| i.kernel);
                Ok((BootImage::Disk { overlay }, probe))
            }
        }
    }

    fn accel(&self, choice: AccelChoice, probe_kernel: Option<&Path>) -> AccelDecision {
        let key = (choice, probe_kernel.map(Path::to_path_buf));
        let mut cache = self.accel_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = cache.get(&key) {
            return d.clone();
        }
        let d = accel::resolve(choice, probe_kernel);
        if choice == AccelChoice::Auto {
            self.reporter.emit(Event::AccelChosen {
                accel: d.accel.as_str().into(),
                reason: d.reason.clone(),
            });
        }
        cache.insert(key, d.clone());
        d
    }

    /// Start the project's broker (idempotent: a running one is left alone).
    pub fn start_broker(&self) -> StepResult {
        let t0 = Instant::now();
        let result = match control::observe(&self.layout) {
            BrokerState::Running { pid } => Ok(pid),
            BrokerState::Offline { .. } => control::start(
                &self.layout,
                self.project.broker.port,
                self.project.broker.allow_tokenless_handshake,
            ),
        };
        let (ok, detail) = match result {
            Ok(pid) => {
                self.reporter.emit(Event::BrokerStarted {
                    pid,
                    port: self.project.broker.port,
                });
                (true, format!("pid {pid}"))
            }
            Err(error) => {
                let error = StepError::from(error).to_string();
                self.reporter.emit(Event::BrokerFailed {
                    error: error.clone(),
                });
                (false, error)
            }
        };
        StepResult {
            vm: "broker".into(),
            action: "start",
            ok,
            detail,
            elapsed: t0.elapsed(),
        }
    }

    /// Stop the project's broker if it runs.
    pub fn stop_broker(&self) -> StepResult {
        let t0 = Instant::now();
        let result = control::stop(&self.layout);
        if let Ok(true) = result {
            self.reporter.emit(Event::BrokerStopped);
        }
        let (ok, detail) = match result {
            Ok(true) => (true, "stopped".to_string()),
            Ok(false) => (true, "was not running".to_string()),
            Err(e) => (false, StepError::from(e).to_string()),
        };
        StepResult {
            vm: "broker".into(),
            action: "stop",
            ok,
            detail,
            elapsed: t0.elapsed(),
        }
    }

    /// Stop one VM with the shutdown ladder and remove its runtime files.
    pub fn stop(&self, vm: &str, seen: Option<&ObservedVm>) -> Result<ShutdownOutcome, StepError> {
        if let Some(host) = seen.and_then(|s| s.host.as_deref()) {
            return self.stop_on_host(vm, host);
        }
        let paths = self.layout.vm(vm);
        let marker = paths.qmp_socket();
        let identity = seen
            .and_then(|s| s.record.as_ref())
            .map(|r| r.process)
            .or_else(|| orphan_identity(&paths));
        let outcome = match identity {
            None => ShutdownOutcome {
                stopped_by: Stage::AlreadyStopped,
                elapsed: Duration::ZERO,
                exited: true,
            },
            Some(id) => {
                let reporter = self.reporter;
                let mut on_event = |ev: ShutdownEvent| {
                    if let Some((stage, detail)) = shutdown_words(&ev) {
                        reporter.emit(Event::ShutdownStage {
                            vm: vm.into(),
                            stage: stage.into(),
                            detail,
                        });
                    }
                };
                shutdown::shutdown(
                    &id,
                    &marker.to_string_lossy(),
                    &marker,
                    &self.project.lifecycle,
                    &mut on_event,
                )
            }
        };
        if !outcome.exited {
            let error = StepError::StillRunning;
            self.reporter.emit(Event::VmStopFailed {
                vm: vm.into(),
                error: error.to_string(),
            });
            return Err(error);
        }
        remove_if_exists(&paths.pidfile());
        remove_if_exists(&paths.qmp_socket());
        remove_if_exists(&paths.launch_record());
        remove_if_exists(&paths.token());
        self.reporter.emit(Event::VmStopped {
            vm: vm.into(),
            stopped_by: outcome.stopped_by,
            elapsed: outcome.elapsed.as_millis() as u64,
        });
        Ok(outcome)
    }
}

/// A QEMU of ours that runs without a launch record (pidfile + marker check).
fn orphan_identity(paths: &VmPaths) -> Option<ProcessIdentity> {
    let pid: i32 = std::fs::read_to_string(paths.pidfile())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    process::identity_of(pid)
}

/// Poll QMP until `query-status` says running.
fn wait_running(
    vm: &str,
    socket: &Path,
    timeout: Duration,
    paths: &VmPaths,
) -> Result<(), StepError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match Qmp::connect(socket, Duration::from_millis(500)) {
            Ok(mut q) => match q.query_status() {
                Ok(s) if s.running => return Ok(()),
                Ok(s) => last = format!("status {}", s.status),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(StepError::NotRunning {
        vm: vm.into(),
        timeout,
        last,
        qemu_log: paths.qemu_log(),
    })
}
