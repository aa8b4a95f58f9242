//! Tests of the QEMU command line: whole argvs per machine and boot mode
//! (insta snapshots), forwards, accelerators, fw_cfg, comma doubling, memory
//! rounding and the kernel command line.

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
