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
mod tests {
    use super::*;
    use crate::config::{AccelChoice, ByteSize, ImageSpec, Proto};
    use std::net::Ipv4Addr;

    fn spec(machine: Machine, forwards: Vec<Forward>) -> VmSpec {
        VmSpec {
            name: "web".into(),
            cpus: 2,
            memory: ByteSize(512 * 1024 * 1024),
            image: ImageSpec::Default,
            machine,
            accel: AccelChoice::Auto,
            forwards,
            shares: vec![],
        }
    }

    fn kernel_boot() -> BootImage {
        BootImage::Kernel {
            kernel: "/cache/castra/image/vmlinux".into(),
            initrd: Some("/cache/castra/image/initrd.cpio.gz".into()),
            cmdline: "console=ttyS0 quiet".into(),
            disk: None,
        }
    }

    fn paths() -> VmPaths {
        VmPaths {
            dir: "/proj/.castra/vms/web".into(),
        }
    }

    fn fwd(proto: Proto, addr: [u8; 4], host_port: u16, guest_port: u16) -> Forward {
        Forward {
            proto,
            host_addr: IpAddr::V4(Ipv4Addr::from(addr)),
            host_port,
            guest_port,
        }
    }

    /// One option and its value per line, so snapshots read like a launch script.
    fn render(argv: &[String]) -> String {
        let mut out = String::new();
        for arg in argv {
            if arg.starts_with('-') && !out.is_empty() {
                out.push('\n');
            } else if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(arg);
        }
        out
    }

    fn check(
        spec: &VmSpec,
        boot: &BootImage,
        accel: Accel,
        paths: &VmPaths,
        fw_cfg: &[(String, PathBuf)],
        extra: &[String],
    ) -> String {
        render(&build(&LaunchInputs {
            spec,
            boot,
            accel,
            paths,
            fw_cfg,
            extra_cmdline: extra,
        }))
    }

    #[test]
    fn microvm_kernel_boot() {
        let out = check(
            &spec(Machine::Microvm, vec![]),
            &kernel_boot(),
            Accel::Tcg,
            &paths(),
            &[],
            &["castra.vm=web".into(), "castra.broker=10.0.2.2:7750".into()],
        );
        insta::assert_snapshot!(out, @r"
        -name web
        -M microvm,acpi=on
        -accel tcg
        -cpu max
        -smp 2
        -m 512M
        -nodefaults
        -no-user-config
        -display none
        -no-reboot
        -chardev file,id=serial0,path=/proj/.castra/vms/web/serial.log
        -serial chardev:serial0
        -qmp unix:/proj/.castra/vms/web/qmp.sock,server=on,wait=off
        -daemonize
        -pidfile /proj/.castra/vms/web/qemu.pid
        -D /proj/.castra/vms/web/qemu.log
        -netdev user,id=net0
        -device virtio-net-device,netdev=net0
        -kernel /cache/castra/image/vmlinux
        -initrd /cache/castra/image/initrd.cpio.gz
        -append console=ttyS0 quiet castra.vm=web castra.broker=10.0.2.2:7750
        ");
    }

    #[test]
    fn q35_disk_boot() {
        let boot = BootImage::Disk {
            overlay: "/proj/.castra/vms/web/overlay.qcow2".into(),
        };
        let out = check(
            &spec(Machine::Q35, vec![]),
            &boot,
            Accel::Tcg,
            &paths(),
            &[],
            // Ignored: a disk boots its own kernel command line.
            &["castra.vm=web".into()],
        );
        insta::assert_snapshot!(out, @r"
        -name web
        -M q35
        -accel tcg
        -cpu max
        -smp 2
        -m 512M
        -nodefaults
        -no-user-config
        -display none
        -no-reboot
        -chardev file,id=serial0,path=/proj/.castra/vms/web/serial.log
        -serial chardev:serial0
        -qmp unix:/proj/.castra/vms/web/qmp.sock,server=on,wait=off
        -daemonize
        -pidfile /proj/.castra/vms/web/qemu.pid
        -D /proj/.castra/vms/web/qemu.log
        -netdev user,id=net0
        -device virtio-net-pci,netdev=net0
        -drive file=/proj/.castra/vms/web/overlay.qcow2,if=virtio,format=qcow2
        ");
    }

    #[test]
    fn microvm_disk_uses_virtio_mmio() {
        let boot = BootImage::Disk {
            overlay: "/o.qcow2".into(),
        };
        let argv = build(&LaunchInputs {
            spec: &spec(Machine::Microvm, vec![]),
            boot: &boot,
            accel: Accel::Tcg,
            paths: &paths(),
            fw_cfg: &[],
            extra_cmdline: &[],
        });
        let tail = render(&argv[argv.len() - 4..]);
        insta::assert_snapshot!(tail, @r"
        -drive file=/o.qcow2,if=none,id=disk0,format=qcow2
        -device virtio-blk-device,drive=disk0
        ");
    }

    fn kernel_with_root_disk() -> BootImage {
        BootImage::Kernel {
            kernel: "/img/vmlinux".into(),
            initrd: Some("/img/initrd.img".into()),
            cmdline: "console=ttyS0 root=/dev/vda rw".into(),
            disk: Some("/proj/.castra/vms/web/overlay.qcow2".into()),
        }
    }

    fn with_shares(machine: Machine) -> VmSpec {
        let mut s = spec(machine, vec![]);
        s.shares = vec![
            crate::config::Share {
                host: "/proj/flake".into(),
                tag: "flake".into(),
                guest: "/mnt/flake".into(),
                readonly: true,
            },
            crate::config::Share {
                host: "/proj/out,put".into(),
                tag: "out".into(),
                guest: "/out".into(),
                readonly: false,
            },
        ];
        s
    }

    /// The lines from `-kernel` on (what differs between boot shapes).
    fn boot_tail(spec: &VmSpec, boot: &BootImage) -> String {
        let argv = build(&LaunchInputs {
            spec,
            boot,
            accel: Accel::Tcg,
            paths: &paths(),
            fw_cfg: &[],
            extra_cmdline: &["castra.vm=web".into()],
        });
        let i = argv.iter().position(|a| a == "-kernel").unwrap();
        render(&argv[i..])
    }

    #[test]
    fn microvm_kernel_with_root_disk_and_shares_uses_virtio_mmio() {
        insta::assert_snapshot!(boot_tail(&with_shares(Machine::Microvm), &kernel_with_root_disk()), @r"
        -kernel /img/vmlinux
        -initrd /img/initrd.img
        -append console=ttyS0 root=/dev/vda rw castra.vm=web
        -drive file=/proj/.castra/vms/web/overlay.qcow2,if=none,id=disk0,format=qcow2
        -device virtio-blk-device,drive=disk0
        -fsdev local,id=share0,path=/proj/flake,security_model=none,readonly=on
        -device virtio-9p-device,fsdev=share0,mount_tag=flake
        -fsdev local,id=share1,path=/proj/out,,put,security_model=none
        -device virtio-9p-device,fsdev=share1,mount_tag=out
        ");
    }

    #[test]
    fn q35_kernel_with_root_disk_and_shares_uses_pci() {
        insta::assert_snapshot!(boot_tail(&with_shares(Machine::Q35), &kernel_with_root_disk()), @r"
        -kernel /img/vmlinux
        -initrd /img/initrd.img
        -append console=ttyS0 root=/dev/vda rw castra.vm=web
        -drive file=/proj/.castra/vms/web/overlay.qcow2,if=virtio,format=qcow2
        -fsdev local,id=share0,path=/proj/flake,security_model=none,readonly=on
        -device virtio-9p-pci,fsdev=share0,mount_tag=flake
        -fsdev local,id=share1,path=/proj/out,,put,security_model=none
        -device virtio-9p-pci,fsdev=share1,mount_tag=out
        ");
    }

    #[test]
    fn forwards_tcp_udp_and_non_loopback_bind() {
        let forwards = vec![
            fwd(Proto::Tcp, [127, 0, 0, 1], 8080, 80),
            fwd(Proto::Udp, [127, 0, 0, 1], 5353, 53),
            fwd(Proto::Tcp, [0, 0, 0, 0], 2222, 22),
            fwd(Proto::Tcp, [10, 1, 2, 3], 8443, 443),
        ];
        let argv = build(&LaunchInputs {
            spec: &spec(Machine::Q35, forwards),
            boot: &kernel_boot(),
            accel: Accel::Tcg,
            paths: &paths(),
            fw_cfg: &[],
            extra_cmdline: &[],
        });
        let i = argv.iter().position(|a| a == "-netdev").unwrap();
        insta::assert_snapshot!(render(&argv[i..i + 4]), @r"
        -netdev user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53,hostfwd=tcp:0.0.0.0:2222-:22,hostfwd=tcp:10.1.2.3:8443-:443
        -device virtio-net-pci,netdev=net0
        ");
    }

    #[test]
    fn kvm_uses_host_cpu_and_tcg_uses_max() {
        let s = spec(Machine::Microvm, vec![]);
        let accel_args = |accel| {
            let argv = build(&LaunchInputs {
                spec: &s,
                boot: &kernel_boot(),
                accel,
                paths: &paths(),
                fw_cfg: &[],
                extra_cmdline: &[],
            });
            let i = argv.iter().position(|a| a == "-accel").unwrap();
            render(&argv[i..i + 4])
        };
        insta::assert_snapshot!(accel_args(Accel::Kvm), @r"
        -accel kvm
        -cpu host
        ");
        insta::assert_snapshot!(accel_args(Accel::Tcg), @r"
        -accel tcg
        -cpu max
        ");
    }

    #[test]
    fn fw_cfg_entries_pass_files_not_contents() {
        let fw_cfg = vec![
            (
                "opt/castra/token".to_string(),
                PathBuf::from("/proj/.castra/vms/web/token"),
            ),
            (
                "opt/castra/broker".to_string(),
                PathBuf::from("/proj/.castra/vms/web/broker"),
            ),
        ];
        let argv = build(&LaunchInputs {
            spec: &spec(Machine::Microvm, vec![]),
            boot: &kernel_boot(),
            accel: Accel::Tcg,
            paths: &paths(),
            fw_cfg: &fw_cfg,
            extra_cmdline: &[],
        });
        let i = argv.iter().position(|a| a == "-fw_cfg").unwrap();
        insta::assert_snapshot!(render(&argv[i..]), @r"
        -fw_cfg name=opt/castra/token,file=/proj/.castra/vms/web/token
        -fw_cfg name=opt/castra/broker,file=/proj/.castra/vms/web/broker
        ");
    }

    #[test]
    fn commas_in_paths_are_doubled_where_qemu_parses_options() {
        let paths = VmPaths {
            dir: "/home/a,b/.castra/vms/web".into(),
        };
        let boot = BootImage::Kernel {
            kernel: "/img,s/vmlinux".into(),
            initrd: None,
            cmdline: String::new(),
            disk: None,
        };
        let fw_cfg = vec![("opt/castra/token".to_string(), paths.dir.join("token"))];
        let out = check(
            &spec(Machine::Microvm, vec![]),
            &boot,
            Accel::Tcg,
            &paths,
            &fw_cfg,
            &[],
        );
        insta::assert_snapshot!(out, @r"
        -name web
        -M microvm,acpi=on
        -accel tcg
        -cpu max
        -smp 2
        -m 512M
        -nodefaults
        -no-user-config
        -display none
        -no-reboot
        -chardev file,id=serial0,path=/home/a,,b/.castra/vms/web/serial.log
        -serial chardev:serial0
        -qmp unix:/home/a,,b/.castra/vms/web/qmp.sock,server=on,wait=off
        -daemonize
        -pidfile /home/a,b/.castra/vms/web/qemu.pid
        -D /home/a,b/.castra/vms/web/qemu.log
        -netdev user,id=net0
        -device virtio-net-device,netdev=net0
        -kernel /img,s/vmlinux
        -fw_cfg name=opt/castra/token,file=/home/a,,b/.castra/vms/web/token
        ");
    }

    #[test]
    fn memory_rounds_up_to_whole_mebibytes() {
        assert_eq!(mebibytes(1024 * 1024 * 1024), 1024);
        assert_eq!(mebibytes(1024 * 1024 + 1), 2);
        assert_eq!(mebibytes(1), 1);
    }

    #[test]
    fn kernel_cmdline_joins_words_single_spaced() {
        assert_eq!(
            kernel_cmdline("  console=ttyS0   quiet ", &["a=1".into()]),
            "console=ttyS0 quiet a=1"
        );
        assert_eq!(kernel_cmdline("", &[]), "");
    }
}
