//! Execute on a libvirt host: start a VM as a transient domain and stop it
//! (ACPI power button through libvirt, then `virsh destroy`). The image is
//! uploaded to the host's `castra` pool once, named by its content; each
//! launch's fresh token travels as a storage volume (mode 0600) that the
//! domain's fw_cfg entry names by path, so it is never in an argv or the XML.
//! castra's launch record rides in the domain's metadata.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{HostSpec, ImageSpec};
use crate::events::{Event, now_ms};
use crate::fsutil::{create_private_dir, remove_if_exists};
use crate::image;
use crate::layout::VmPaths;
use crate::libvirt::xml::{self, DomainInputs};
use crate::libvirt::{Host, VirshError, names};
use crate::qemu::fw_cfg::{FW_CFG_BROKER_PORT, FW_CFG_VM, TOKEN_FW_CFG};
use crate::qemu::process::ProcessIdentity;
use crate::qemu::shutdown::{POWERDOWN_REPEAT, ShutdownOutcome, Stage};
use crate::qemu::{Accel, guest_clock};

use super::desired::DesiredVm;
use super::execute::{Executor, RUNNING_TIMEOUT};
use super::hosts::project_names;
use super::record::LaunchRecord;
use super::secret;
use super::step_error::StepError;

/// One upload at a time per castra run: two VMs on one host share their
/// image volumes, and the second must find the first's finished.
static UPLOADS: Mutex<()> = Mutex::new(());

/// What `apply` reports about a domain's accelerator.
const ACCEL_REASON: &str = "libvirt domain type qemu (TCG)";

impl Executor<'_> {
    fn host_spec(&self, vm: &str, host: &str) -> Result<&HostSpec, StepError> {
        self.project.hosts.get(host).ok_or_else(|| StepError::Host {
            vm: vm.into(),
            host: host.into(),
            uri: "?".into(),
            what: "host".into(),
            error: "not declared in castra.toml ([hosts.NAME])".into(),
        })
    }

    /// The VM's host as libvirt's client, and how a failed virsh call there
    /// becomes a step error naming the VM, the host, its URI and the action.
    fn on_host(
        &self,
        vm: &str,
        host_name: &str,
    ) -> Result<(Host<'_>, impl Fn(&str, VirshError) -> StepError), StepError> {
        let hs = self.host_spec(vm, host_name)?;
        let vm = vm.to_owned();
        let fail = move |what: &str, e: VirshError| StepError::Host {
            vm: vm.clone(),
            host: hs.name.clone(),
            uri: hs.uri.clone(),
            what: what.into(),
            error: e.to_string(),
        };
        let host = Host {
            name: &hs.name,
            uri: &hs.uri,
        };
        Ok((host, fail))
    }

    /// Start `want` on its host and wait until libvirt says it runs.
    pub(super) fn start_on_host(
        &self,
        want: &DesiredVm,
        host_name: &str,
        paths: &VmPaths,
        t0: Instant,
    ) -> Result<(), StepError> {
        let spec = &want.spec;
        let vm = spec.name.as_str();
        let (host, fail) = self.on_host(vm, host_name)?;
        create_private_dir(&paths.dir)?;
        let names = project_names(self.project);
        let domain = names.domain(vm);
        if host
            .state(&domain)
            .map_err(|e| fail("look up", e))?
            .is_some()
        {
            return Err(fail(
                "start",
                VirshError::Failed(format!(
                    "a domain named {domain} already exists there and castra did not make it (or it is still stopping): castra leaves it alone; remove or rename it"
                )),
            ));
        }
        let (kernel, initrd, cmdline, image_hash) = match &spec.image {
            ImageSpec::Default => {
                let img = image::locate()?;
                (img.kernel, Some(img.initrd), img.cmdline, img.id)
            }
            ImageSpec::Kernel {
                kernel,
                initrd,
                cmdline,
                disk: None,
            } => {
                super::overlay::must_exist(vm, "image.kernel", kernel)?;
                let hash = content_hash(kernel, initrd.as_deref())
                    .map_err(|e| fail("read image", VirshError::Failed(e.to_string())))?;
                let cmdline = cmdline.clone().unwrap_or_else(|| "console=ttyS0".into());
                (kernel.clone(), initrd.clone(), cmdline, hash)
            }
            _ => {
                return Err(fail(
                    "start",
                    VirshError::Failed(
                        "only kernel images (image = \"default\" or { kernel = ... } without disk) run on libvirt hosts so far".into(),
                    ),
                ));
            }
        };
        let (kernel_vol, initrd_vol) = {
            let _one = UPLOADS.lock().unwrap_or_else(|e| e.into_inner());
            host.ensure_pool()
                .map_err(|e| fail("make pool castra", e))?;
            let k = host
                .upload(
                    &names::image_volume(&image_hash, "kernel"),
                    &kernel,
                    0o644,
                    false,
                    &paths.dir,
                )
                .map_err(|e| fail("upload the kernel", e))?;
            let i = match &initrd {
                Some(i) => Some(
                    host.upload(
                        &names::image_volume(&image_hash, "initrd"),
                        i,
                        0o644,
                        false,
                        &paths.dir,
                    )
                    .map_err(|e| fail("upload the initrd", e))?,
                ),
                None => None,
            };
            (k, i)
        };
        // A fresh token per launch: local file (the broker checks it), and a
        // private volume on the host that fw_cfg reads.
        secret::write_new_token(&paths.token())?;
        let token_vol = host
            .upload(
                &names.token_volume(vm),
                &paths.token(),
                0o600,
                true,
                &paths.dir,
            )
            .map_err(|e| fail("upload the token", e))?;
        let port = self.project.broker.port.to_string();
        let mut words = vec![
            cmdline,
            format!("castra.vm={vm}"),
            format!("castra.broker_port={port}"),
        ];
        words.extend(guest_clock::tcg_kernel_args_for_host());
        let record = LaunchRecord {
            spec: spec.clone(),
            image_id: want.image_id.clone(),
            fingerprint: want.fingerprint.clone(),
            accel: Accel::Tcg,
            accel_reason: ACCEL_REASON.into(),
            process: ProcessIdentity {
                pid: 0,
                start_ticks: 0,
            },
            qmp_socket: Default::default(),
            launched_at_ms: now_ms(),
            castra_version: env!("CARGO_PKG_VERSION").into(),
            argv: Vec::new(),
            host: Some(host.name.to_owned()),
        };
        let record_json = serde_json::to_string(&record).unwrap_or_default();
        let serial = format!("/var/log/libvirt/qemu/{domain}.serial.log");
        let text = xml::render(&DomainInputs {
            domain: &domain,
            spec,
            kernel: &kernel_vol,
            initrd: initrd_vol.as_deref(),
            cmdline: &words.join(" "),
            fw_cfg_files: &[(TOKEN_FW_CFG.into(), token_vol)],
            fw_cfg_values: &[
                (FW_CFG_VM.into(), vm.into()),
                (FW_CFG_BROKER_PORT.into(), port),
            ],
            serial_log: &serial,
            record_json: &record_json,
            qemu_args: &crate::qemu::argv::network_args(spec, "castranet0"),
        });
        crate::fsutil::write_atomic(&paths.domain_xml(), text.as_bytes()).map_err(|source| {
            StepError::Write {
                vm: vm.into(),
                path: paths.domain_xml(),
                source,
            }
        })?;
        host.create(&paths.domain_xml())
            .map_err(|e| fail("virsh create", e))?;
        let deadline = Instant::now() + RUNNING_TIMEOUT;
        loop {
            match host.state(&domain) {
                Ok(Some(s)) if s == "running" => break,
                Ok(other) if Instant::now() >= deadline => {
                    return Err(fail(
                        "wait for running",
                        VirshError::Failed(format!(
                            "state {} after {} s",
                            other.unwrap_or_else(|| "gone".into()),
                            RUNNING_TIMEOUT.as_secs()
                        )),
                    ));
                }
                Err(e) if Instant::now() >= deadline => return Err(fail("wait for running", e)),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        self.reporter.emit(Event::VmRunning {
            vm: vm.into(),
            pid: 0,
            accel: Accel::Tcg.as_str().into(),
            elapsed: t0.elapsed().as_millis() as u64,
        });
        Ok(())
    }

    /// ACPI power button through libvirt, pressed again every few seconds,
    /// for `powerdown_wait`; then `virsh destroy`. Removes the token volume.
    pub(super) fn stop_on_host(
        &self,
        vm: &str,
        host_name: &str,
    ) -> Result<ShutdownOutcome, StepError> {
        let t0 = Instant::now();
        let (host, fail) = self.on_host(vm, host_name)?;
        let names = project_names(self.project);
        let domain = names.domain(vm);
        let gone = |host: &Host| -> Result<bool, StepError> {
            Ok(host
                .state(&domain)
                .map_err(|e| fail("look up", e))?
                .is_none_or(|s| s == "shut off"))
        };
        let mut stopped_by = Stage::AlreadyStopped;
        if !gone(&host)? {
            stopped_by = Stage::Powerdown;
            let lifecycle = &self.project.lifecycle;
            let until = Instant::now() + lifecycle.powerdown_wait;
            let mut pressed: Option<Instant> = None;
            while !gone(&host)? {
                if Instant::now() >= until {
                    stopped_by = Stage::Destroy;
                    self.emit_stage(
                        vm,
                        "destroy",
                        "guest did not power off in time; virsh destroy",
                    );
                    if let Err(e) = host.destroy(&domain)
                        && !gone(&host)?
                    {
                        return Err(fail("virsh destroy", e));
                    }
                    break;
                }
                if pressed.is_none_or(|p| p.elapsed() >= POWERDOWN_REPEAT) {
                    // The domain may be gone between the check and the press.
                    if host.shutdown(&domain).is_ok() && pressed.is_none() {
                        self.emit_stage(vm, "powerdown", "sent ACPI power button through libvirt");
                    }
                    pressed = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        host.delete_volume(&names.token_volume(vm))
            .map_err(|e| fail("remove the token volume", e))?;
        let paths = self.layout.vm(vm);
        remove_if_exists(&paths.token());
        remove_if_exists(&paths.domain_xml());
        let outcome = ShutdownOutcome {
            stopped_by,
            elapsed: t0.elapsed(),
            exited: true,
        };
        self.reporter.emit(Event::VmStopped {
            vm: vm.into(),
            stopped_by,
            elapsed: outcome.elapsed.as_millis() as u64,
        });
        Ok(outcome)
    }

    fn emit_stage(&self, vm: &str, stage: &str, detail: &str) {
        self.reporter.emit(Event::ShutdownStage {
            vm: vm.into(),
            stage: stage.into(),
            detail: detail.into(),
        });
    }
}

/// sha256 of a kernel (and initrd): the name its volumes get on a host.
fn content_hash(kernel: &Path, initrd: Option<&Path>) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(std::fs::read(kernel)?);
    if let Some(i) = initrd {
        h.update([0u8]);
        h.update(std::fs::read(i)?);
    }
    Ok(hex::encode(h.finalize()))
}
