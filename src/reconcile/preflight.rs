//! Preflight: every input a launch needs, checked at plan time, before
//! anything is stopped. For each VM the plan starts or restarts: the default
//! image is built, kernel / initrd / disk files exist (a disk is qcow2), share
//! directories and bootstrap scripts exist, the QMP socket path fits, QEMU
//! (and `qemu-img` for disks) is installed, `accel = "kvm"` has `/dev/kvm`,
//! and host ports are free (`ports`). Each problem is a diagnostic located at
//! its key in castra.toml (`config::Places`), with a fix.
//!
//! It reads files and binds ports but changes nothing; `apply` refuses to
//! touch any VM while a problem remains, so a change that cannot start never
//! stops a healthy VM.

use std::path::{Path, PathBuf};

use crate::config::{AccelChoice, BootstrapKind, Diagnostic, ImageSpec, Key, Places, Project};
use crate::image;
use crate::layout::StateLayout;

use super::desired::DesiredVm;
use super::observe::Observed;
use super::plan::{Plan, Step};
use super::ports;

/// The problems found, ready to print like config errors.
#[derive(Debug, Clone)]
pub struct Preflight {
    places: Places,
    pub problems: Vec<Diagnostic>,
}

impl Preflight {
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for Preflight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.places.render(&self.problems))
    }
}

/// Check every launch input of the VMs `plan` starts or restarts.
pub fn check(
    project: &Project,
    plan: &Plan,
    desired: &[DesiredVm],
    observed: &Observed,
) -> Preflight {
    let places = Places::read(&project.config_path);
    let mut c = Checker {
        places: &places,
        out: Vec::new(),
    };
    let layout = StateLayout::new(&project.state_root);
    let starting: Vec<&DesiredVm> = plan
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Start { .. } | Step::Restart { .. }))
        .filter_map(|s| desired.iter().find(|d| d.spec.name == s.vm()))
        .collect();
    if !starting.is_empty() {
        c.tool(&crate::qemu::qemu_binary(), "qemu-system-x86", None);
    }
    let mut default_checked = false;
    for want in &starting {
        let vm = want.spec.name.as_str();
        // A QEMU killed a moment ago may still hold its forwards' ports.
        super::launch_prep::wait_previous_qemu(&layout.vm(vm));
        match &want.spec.image {
            ImageSpec::Default if !default_checked => {
                default_checked = true;
                if let Err(e) = image::locate() {
                    c.problem(
                        &[Key::Vm(vm, &["image"])],
                        format!("vm {vm:?}: {e}"),
                        "run `castra image build` once (it is cached in ~/.cache/castra)".into(),
                    );
                }
            }
            ImageSpec::Default => {}
            ImageSpec::Kernel {
                kernel,
                initrd,
                disk,
                ..
            } => {
                c.file(vm, &["image", "kernel"], kernel);
                if let Some(i) = initrd {
                    c.file(vm, &["image", "initrd"], i);
                }
                if let Some(d) = disk {
                    c.disk(vm, d);
                }
            }
            ImageSpec::Disk { path } => c.disk(vm, path),
        }
        for (i, share) in want.spec.shares.iter().enumerate() {
            if !share.host.is_dir() {
                let index = i.to_string();
                c.problem(
                    &[Key::Vm(vm, &["shares", &index, "host"])],
                    format!(
                        "vm {vm:?}: share {:?}: host directory {} {}",
                        share.tag,
                        share.host.display(),
                        missing_words(&share.host)
                    ),
                    "create the directory, or fix `host` (relative to castra.toml)".into(),
                );
            }
        }
        let script = match project.bootstraps.get(vm).map(|b| &b.kind) {
            Some(BootstrapKind::Script { path }) if !path.is_file() => Some(path),
            _ => None,
        };
        if let Some(path) = script {
            c.problem(
                &[
                    Key::Vm(vm, &["bootstrap", "script"]),
                    Key::Top(&["bootstrap", "script"]),
                ],
                format!(
                    "vm {vm:?}: bootstrap script {} {}",
                    path.display(),
                    missing_words(path)
                ),
                "fix `script` (relative to castra.toml), or use `run = \"...\"`".into(),
            );
        }
        let socket = layout.vm(vm).qmp_socket();
        if socket.as_os_str().len() > crate::layout::MAX_SOCKET_PATH {
            c.problem(
                &[Key::Top(&["project", "state_dir"]), Key::Vm(vm, &["name"])],
                format!(
                    "vm {vm:?}: QMP socket path {} is over the {} byte limit of Unix sockets",
                    socket.display(),
                    crate::layout::MAX_SOCKET_PATH
                ),
                "set a shorter [project] state_dir".into(),
            );
        }
        if want.spec.accel == AccelChoice::Kvm && !Path::new("/dev/kvm").exists() {
            c.problem(
                &[Key::Vm(vm, &["accel"])],
                format!("vm {vm:?}: accel = \"kvm\" but this host has no /dev/kvm"),
                "use accel = \"auto\" (KVM when it works, else TCG) or \"tcg\"".into(),
            );
        }
    }
    // A broker killed a moment ago is offline while its last thread still
    // holds the port: let it finish rather than report the port taken.
    if matches!(plan.broker, Some(super::plan::BrokerStep::Start { .. })) {
        crate::broker::control::wait_previous_released(&layout);
    }
    for conflict in ports::check(plan, desired, observed, project.broker.port) {
        c.port(&conflict);
    }
    Preflight {
        problems: c.out,
        places,
    }
}

struct Checker<'a> {
    places: &'a Places,
    out: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn problem(&mut self, keys: &[Key<'_>], message: String, help: String) {
        self.problem_with(keys, message, help, Vec::new());
    }

    fn problem_with(
        &mut self,
        keys: &[Key<'_>],
        message: String,
        help: String,
        notes: Vec<String>,
    ) {
        let d = self.places.diagnostic(keys, message, help, notes);
        if !self.out.contains(&d) {
            self.out.push(d);
        }
    }

    fn file(&mut self, vm: &str, key: &[&str], path: &Path) {
        if !path.is_file() {
            self.problem(
                &[Key::Vm(vm, key)],
                format!(
                    "vm {vm:?}: {} {} {}",
                    key.join("."),
                    path.display(),
                    missing_words(path)
                ),
                "fix the path (relative paths start at castra.toml's directory)".into(),
            );
        }
    }

    fn disk(&mut self, vm: &str, path: &Path) {
        if !path.is_file() {
            return self.file(vm, &["image", "disk"], path);
        }
        if !is_qcow2(path) {
            self.problem(
                &[Key::Vm(vm, &["image", "disk"])],
                format!(
                    "vm {vm:?}: image.disk {} is not a qcow2 image",
                    path.display()
                ),
                format!(
                    "convert it: qemu-img convert -O qcow2 {} disk.qcow2",
                    path.display()
                ),
            );
        }
        self.tool(Path::new("qemu-img"), "qemu-utils", Some(vm));
    }

    fn tool(&mut self, tool: &Path, package: &str, vm: Option<&str>) {
        if find_program(tool).is_none() {
            let keys: Vec<Key<'_>> = vm
                .map(|v| Key::Vm(v, &["image", "disk"]))
                .into_iter()
                .collect();
            self.problem(
                &keys,
                format!("{} is not installed (or not on PATH)", tool.display()),
                format!("install it (Debian: apt-get install {package}), or set CASTRA_QEMU"),
            );
        }
    }

    fn port(&mut self, conflict: &ports::PortConflict) {
        let (message, keys, notes) = match &conflict.forward {
            Some((vm, index)) => (conflict.to_string(), Some((vm.clone(), index.to_string())), vec![]),
            None => (
                conflict.to_string(),
                None,
                vec!["castra.toml sets no [broker] port: this is the project's default, chosen from its path".to_string()],
            ),
        };
        let help = match &conflict.forward {
            Some(_) => "pick another host port in castra.toml, or stop what holds it",
            None => {
                "set [broker] port to a free port (`castra init` picks a free block for new projects), or stop what holds it"
            }
        };
        match &keys {
            Some((vm, index)) => self.problem_with(
                &[Key::Vm(vm, &["forwards", index])],
                message,
                help.into(),
                notes,
            ),
            None => {
                let explicit = self.places.span(Key::Top(&["broker", "port"])).is_some();
                let notes = if explicit { vec![] } else { notes };
                self.problem_with(
                    &[Key::Top(&["broker", "port"])],
                    message,
                    help.into(),
                    notes,
                )
            }
        }
    }
}

fn missing_words(path: &Path) -> &'static str {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => "is a directory",
        Ok(_) => "is not a directory",
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => "cannot be read",
        Err(_) => "does not exist",
    }
}

/// A qcow2 file starts with `QFI\xfb`.
fn is_qcow2(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"QFI\xfb"
}

/// A program path as the OS would run it: a path with a slash as is, a bare
/// name searched on PATH.
fn find_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return runnable(program).then(|| program.to_path_buf());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| runnable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path_and_by_path() {
        assert!(find_program(Path::new("sh")).is_some());
        assert!(find_program(Path::new("/bin/sh")).is_some());
        assert!(find_program(Path::new("no-such-castra-tool")).is_none());
    }

    #[test]
    fn qcow2_is_recognised_by_its_magic() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.img");
        std::fs::write(&raw, [0u8; 512]).unwrap();
        assert!(!is_qcow2(&raw));
        let q = dir.path().join("d.qcow2");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
        assert!(is_qcow2(&q));
        assert_eq!(missing_words(&dir.path().join("nope")), "does not exist");
        assert_eq!(missing_words(dir.path()), "is a directory");
    }
}
