//! Good configs -> the `Project` fields: documented defaults, the project
//! name from the directory, and every key read back (images, shares,
//! forwards, machine and accel included).

use super::*;
use std::time::Duration;

#[test]
fn a_minimal_vm_gets_the_documented_defaults() {
    let p = ok("[[vms]]\nname = \"web\"\n");
    assert_eq!(p.name, "demo");
    assert_eq!(p.config_path, Path::new("/srv/demo/castra.toml"));
    assert_eq!(p.root_dir, Path::new("/srv/demo"));
    assert_eq!(p.state_root, Path::new("/srv/demo/.castra"));
    assert_eq!(
        p.broker,
        BrokerConfig {
            // No [broker] port: the first port of /srv/demo's block.
            port: crate::config::default_broker_port(Path::new("/srv/demo")),
            allow_tokenless_handshake: false
        }
    );
    assert_eq!(p.lifecycle.powerdown_wait, Duration::from_secs(20));
    assert_eq!(p.lifecycle.sigterm_wait, Duration::from_secs(5));
    assert_eq!(
        p.vms,
        vec![VmSpec {
            name: "web".into(),
            cpus: 1,
            memory: ByteSize::from_mib(256),
            image: ImageSpec::Default,
            machine: Machine::Microvm,
            accel: AccelChoice::Auto,
            forwards: vec![],
            shares: vec![],
        }]
    );
}

#[test]
fn an_empty_file_is_a_project_without_vms() {
    let p = ok("");
    assert!(p.vms.is_empty());
    assert_eq!(p.name, "demo");
}

#[test]
fn the_default_project_name_comes_from_the_directory() {
    let name = |path: &str| load_str("", Path::new(path)).unwrap().name;
    assert_eq!(name("/home/me/My Project/castra.toml"), "my-project");
    assert_eq!(name("/srv/2024_lab/castra.toml"), "castra-2024-lab");
    assert_eq!(name("castra.toml"), "castra");
    assert_eq!(name("/castra.toml"), "castra");
    let p = load_str("", Path::new("castra.toml")).unwrap();
    assert_eq!(p.root_dir, Path::new("."));
    assert_eq!(p.state_root, Path::new("./.castra"));
}

#[test]
fn every_key_is_read() {
    let p = ok(r#"
[project]
name = "lab"
state_dir = "/var/lib/castra-lab"

[broker]
port = 7900
allow_tokenless_handshake = true

[lifecycle]
powerdown_wait = "1m30s"
sigterm_wait = "500ms"

[[vms]]
name = "web"
cpus = 4
memory = "1.5 GiB"
image = { kernel = "boot/vmlinux", initrd = "/abs/initrd.img", cmdline = "console=ttyS0 quiet" }
accel = "tcg"
forwards = ["8080:80", "0.0.0.0:2222:22", "udp:5353:53", "127.0.0.3:8443:443"]

[[vms]]
name = "db"
memory = 2048
image = { disk = "disks/base.qcow2" }
accel = "KVM"

[[vms]]
name = "k"
image.kernel = "vmlinux"
machine = "q35"

[[vms]]
name = "nix"
image = { disk = "/img/disk.qcow2", kernel = "/img/vmlinux", initrd = "/img/initrd.img", cmdline = "root=/dev/vda rw" }
shares = [
  { host = "flake", guest = "/mnt/flake/" },
  { host = "/srv/out", guest = "/out", tag = "results", readonly = false },
]
"#);
    assert_eq!(p.name, "lab");
    assert_eq!(p.state_root, Path::new("/var/lib/castra-lab"));
    assert_eq!(p.broker.port, 7900);
    assert!(p.broker.allow_tokenless_handshake);
    assert_eq!(p.lifecycle.powerdown_wait, Duration::from_secs(90));
    assert_eq!(p.lifecycle.sigterm_wait, Duration::from_millis(500));

    let web = &p.vms[0];
    assert_eq!(web.cpus, 4);
    assert_eq!(web.memory.to_string(), "1536M");
    assert_eq!(
        web.image,
        ImageSpec::Kernel {
            kernel: "/srv/demo/boot/vmlinux".into(),
            initrd: Some("/abs/initrd.img".into()),
            cmdline: Some("console=ttyS0 quiet".into()),
            disk: None,
        }
    );
    assert_eq!(web.machine, Machine::Microvm);
    assert_eq!(web.accel, AccelChoice::Tcg);
    let fw: Vec<String> = web.forwards.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        fw,
        [
            "127.0.0.1:8080->80/tcp",
            "0.0.0.0:2222->22/tcp",
            "127.0.0.1:5353->53/udp",
            "127.0.0.3:8443->443/tcp"
        ]
    );

    let db = &p.vms[1];
    assert_eq!(db.memory, ByteSize::from_mib(2048));
    assert_eq!(
        db.image,
        ImageSpec::Disk {
            path: "/srv/demo/disks/base.qcow2".into()
        }
    );
    assert_eq!(db.machine, Machine::Q35, "disks default to q35");
    assert_eq!(db.accel, AccelChoice::Kvm);

    let k = &p.vms[2];
    assert_eq!(k.machine, Machine::Q35);
    assert_eq!(
        k.image,
        ImageSpec::Kernel {
            kernel: "/srv/demo/vmlinux".into(),
            initrd: None,
            cmdline: None,
            disk: None,
        }
    );

    let n = &p.vms[3];
    assert_eq!(
        n.machine,
        Machine::Microvm,
        "kernel + disk defaults to microvm"
    );
    assert_eq!(
        n.image,
        ImageSpec::Kernel {
            kernel: "/img/vmlinux".into(),
            initrd: Some("/img/initrd.img".into()),
            cmdline: Some("root=/dev/vda rw".into()),
            disk: Some("/img/disk.qcow2".into()),
        }
    );
    assert_eq!(
        n.shares,
        [
            Share {
                host: "/srv/demo/flake".into(),
                tag: "flake".into(),
                guest: "/mnt/flake".into(),
                readonly: true,
            },
            Share {
                host: "/srv/out".into(),
                tag: "results".into(),
                guest: "/out".into(),
                readonly: false,
            },
        ]
    );
}

#[test]
fn inline_vm_tables_work_too() {
    let p = ok("vms = [{ name = \"a\" }, { name = \"b\", cpus = 2 }]\n");
    let names: Vec<(&str, u32)> = p.vms.iter().map(|v| (v.name.as_str(), v.cpus)).collect();
    assert_eq!(names, [("a", 1), ("b", 2)]);
}
