//! The QEMU command line as a pure function of a VM's launch inputs.
//!
//! [`build`] turns a [`VmSpec`], its resolved [`BootImage`], the accelerator
//! and the VM's state paths into QEMU's argv (without the binary). It does no
//! I/O: it neither checks that files exist nor creates directories; launching
//! is `process.rs`'s job. Every path is passed as given, so callers pass
//! absolute paths (QEMU changes its working directory to `/` once daemonized).
//!
//! Escaping: values parsed by QEMU's option parser (`-name`, `-chardev`, `-qmp`,
//! `-drive`, `-fw_cfg`, `-netdev`, `-fsdev`, `-device`) have every ',' doubled; options that take a
//! raw file name (`-pidfile`, `-D`, `-kernel`, `-initrd`, `-append`) do not.
//! Secrets never appear here: fw_cfg entries name files, never contents.

use crate::config::{Forward, Machine, VmSpec};
use crate::layout::VmPaths;
use crate::qemu::{Accel, BootImage};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Everything the command line depends on.
#[derive(Debug, Clone, Copy)]
pub struct LaunchInputs<'a> {
    pub spec: &'a VmSpec,
    pub boot: &'a BootImage,
    pub accel: Accel,
    pub paths: &'a VmPaths,
    /// `(name, file)` pairs passed as `-fw_cfg name=<name>,file=<file>`.
    pub fw_cfg: &'a [(String, PathBuf)],
    /// Words appended to the kernel command line (direct kernel boot only).
    pub extra_cmdline: &'a [String],
}

/// QEMU's argv for one VM, without the binary itself.
pub fn build(i: &LaunchInputs) -> Vec<String> {
    let mut a = Argv::default();
    let spec = i.spec;

    a.push2("-name", escape(&spec.name));
    match spec.machine {
        Machine::Microvm => a.push2("-M", "microvm,acpi=on"),
        Machine::Q35 => a.push2("-M", "q35"),
    }
    match i.accel {
        Accel::Tcg => {
            a.push2("-accel", "tcg");
            a.push2("-cpu", "max");
        }
        Accel::Kvm => {
            a.push2("-accel", "kvm");
            a.push2("-cpu", "host");
        }
    }
    a.push2("-smp", spec.cpus.to_string());
    a.push2("-m", format!("{}M", mebibytes(spec.memory.0)));
    for flag in [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ] {
        a.push(flag);
    }

    // Guest console, QMP, daemon bookkeeping.
    a.push2(
        "-chardev",
        format!(
            "file,id=serial0,path={}",
            escape_path(&i.paths.serial_log())
        ),
    );
    a.push2("-serial", "chardev:serial0");
    a.push2(
        "-qmp",
        format!(
            "unix:{},server=on,wait=off",
            escape_path(&i.paths.qmp_socket())
        ),
    );
    a.push("-daemonize");
    a.push2("-pidfile", raw_path(&i.paths.pidfile()));
    // Once daemonized QEMU sends stderr to /dev/null unless -D names a log;
    // with it, runtime messages ("terminating on signal 15 ...") land in qemu.log.
    a.push2("-D", raw_path(&i.paths.qemu_log()));

    // Network: user-mode NAT, host forwards.
    for arg in network_args(spec, "net0") {
        a.push(arg);
    }

    // What the guest boots.
    match i.boot {
        BootImage::Kernel {
            kernel,
            initrd,
            cmdline,
            disk,
        } => {
            a.push2("-kernel", raw_path(kernel));
            if let Some(initrd) = initrd {
                a.push2("-initrd", raw_path(initrd));
            }
            let append = kernel_cmdline(cmdline, i.extra_cmdline);
            if !append.is_empty() {
                a.push2("-append", append);
            }
            if let Some(overlay) = disk {
                attach_disk(&mut a, spec.machine, overlay);
            }
        }
        BootImage::Disk { overlay } => attach_disk(&mut a, spec.machine, overlay),
    }

    // Host directories over virtio-9p; the guest agent mounts them by tag.
    for (n, share) in spec.shares.iter().enumerate() {
        let mut fsdev = format!(
            "local,id=share{n},path={},security_model=none",
            escape_path(&share.host)
        );
        if share.readonly {
            fsdev.push_str(",readonly=on");
        }
        a.push2("-fsdev", fsdev);
        let device = match spec.machine {
            Machine::Microvm => "virtio-9p-device",
            Machine::Q35 => "virtio-9p-pci",
        };
        a.push2(
            "-device",
            format!("{device},fsdev=share{n},mount_tag={}", escape(&share.tag)),
        );
    }

    for (name, file) in i.fw_cfg {
        a.push2(
            "-fw_cfg",
            format!("name={},file={}", escape(name), escape_path(file)),
        );
    }
    a.0
}

/// The disk as a virtio block device (the guest's `/dev/vda`).
fn attach_disk(a: &mut Argv, machine: Machine, overlay: &Path) {
    let file = escape_path(overlay);
    match machine {
        Machine::Q35 => a.push2("-drive", format!("file={file},if=virtio,format=qcow2")),
        // microvm has no PCI bus: attach the disk to a virtio-mmio device.
        Machine::Microvm => {
            a.push2(
                "-drive",
                format!("file={file},if=none,id=disk0,format=qcow2"),
            );
            a.push2("-device", "virtio-blk-device,drive=disk0");
        }
    }
}

/// Doubles every ',' so QEMU's option parser reads `value` as one value.
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn escape_path(p: &Path) -> String {
    escape(&raw_path(p))
}

fn raw_path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `-netdev user` (netdev `id`) with the VM's host forwards, then its virtio
/// NIC: the four arguments QEMU takes, also passed through libvirt's domain
/// XML (`libvirt/xml.rs`).
pub fn network_args(spec: &VmSpec, id: &str) -> [String; 4] {
    let mut netdev = format!("user,id={id}");
    for f in &spec.forwards {
        netdev.push_str(",hostfwd=");
        netdev.push_str(&hostfwd(f));
    }
    let nic = match spec.machine {
        Machine::Microvm => "virtio-net-device",
        Machine::Q35 => "virtio-net-pci",
    };
    [
        "-netdev".into(),
        netdev,
        "-device".into(),
        format!("{nic},netdev={id}"),
    ]
}

/// `tcp:127.0.0.1:8080-:80`
fn hostfwd(f: &Forward) -> String {
    let addr = match f.host_addr {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    format!(
        "{}:{}:{}-:{}",
        f.proto.as_str(),
        addr,
        f.host_port,
        f.guest_port
    )
}

/// The image's command line followed by the extra words, single-spaced.
fn kernel_cmdline(base: &str, extra: &[String]) -> String {
    let mut words: Vec<&str> = base.split_whitespace().collect();
    words.extend(extra.iter().map(String::as_str));
    words.join(" ")
}

/// Bytes to whole MiB, rounding up so a guest never gets less than asked.
fn mebibytes(bytes: u64) -> u64 {
    bytes.div_ceil(1024 * 1024)
}

#[derive(Default)]
struct Argv(Vec<String>);

impl Argv {
    fn push(&mut self, s: impl Into<String>) {
        self.0.push(s.into());
    }
    fn push2(&mut self, flag: &str, value: impl Into<String>) {
        self.0.push(flag.to_string());
        self.0.push(value.into());
    }
}

#[cfg(test)]
#[path = "argv_tests.rs"]
mod tests;
