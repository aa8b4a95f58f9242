//! Data-driven tests of the whole loader: bad configs -> rendered errors
//! (insta snapshots, the config text is recorded as each snapshot's
//! description), good configs -> the `Project` fields, replica expansion,
//! the `castra init` template, and `load` on real files.

use super::*;
use std::path::Path;

fn render_err(text: &str) -> String {
    match load_str(text, Path::new("castra.toml")) {
        Ok(p) => panic!("expected an error, loaded {p:#?}"),
        Err(e) => e.to_string(),
    }
}

fn ok(text: &str) -> Project {
    load_str(text, Path::new("/srv/demo/castra.toml")).unwrap_or_else(|e| panic!("{e}"))
}

const BAD: &[(&str, &str)] = &[
    (
        "unknown_key_in_vm",
        "[[vms]]\nname = \"web\"\nmemroy = \"1G\"\n",
    ),
    (
        "unknown_key_no_suggestion",
        "[[vms]]\nname = \"web\"\nreplicas = 2\n",
    ),
    (
        "vm_key_at_top_level",
        "cpus = 2\n\n[[vms]]\nname = \"web\"\n",
    ),
    ("unknown_table", "[vm]\nname = \"web\"\n"),
    ("unknown_key_in_project", "[project]\nnmae = \"demo\"\n"),
    (
        "unknown_key_in_lifecycle",
        "[lifecycle]\npowerdown = \"10s\"\n",
    ),
    ("vms_with_single_brackets", "[vms]\nname = \"web\"\n"),
    (
        "project_with_double_brackets",
        "[[project]]\nname = \"demo\"\n",
    ),
    (
        "cpus_wrong_type",
        "[[vms]]\nname = \"web\"\ncpus = \"two\"\n",
    ),
    ("cpus_float", "[[vms]]\nname = \"web\"\ncpus = 1.5\n"),
    (
        "cpus_huge",
        "[[vms]]\nname = \"web\"\ncpus = 99999999999999999999\n",
    ),
    ("tab_indented", "[[vms]]\n\tname = \"WEB\"\n"),
    ("cpus_zero", "[[vms]]\nname = \"web\"\ncpus = 0\n"),
    ("cpus_too_many", "[[vms]]\nname = \"web\"\ncpus = 1000\n"),
    (
        "memory_bad_unit",
        "[[vms]]\nname = \"web\"\nmemory = \"1Q\"\n",
    ),
    (
        "memory_too_small",
        "[[vms]]\nname = \"web\"\nmemory = \"32M\"\n",
    ),
    (
        "memory_bare_number_too_small",
        "[[vms]]\nname = \"web\"\nmemory = 32\n",
    ),
    (
        "memory_not_whole_mib",
        "[[vms]]\nname = \"web\"\nmemory = \"100000K\"\n",
    ),
    ("memory_negative", "[[vms]]\nname = \"web\"\nmemory = -1\n"),
    (
        "memory_wrong_type",
        "[[vms]]\nname = \"web\"\nmemory = true\n",
    ),
    ("vm_without_name", "[[vms]]\ncpus = 2\n"),
    ("vm_name_invalid", "[[vms]]\nname = \"Web_1\"\n"),
    ("vm_name_starts_with_digit", "[[vms]]\nname = \"1web\"\n"),
    (
        "vm_name_too_long",
        "[[vms]]\nname = \"abcdefghijklmnopqrstuvwxyz0123456789\"\n",
    ),
    (
        "vm_name_too_long_for_count",
        "[[vms]]\nname = \"abcdefghijklmnopqrstuvwxyz01234\"\ncount = 10\n",
    ),
    ("project_name_invalid", "[project]\nname = \"My Demo\"\n"),
    (
        "duplicate_vm_name",
        "[[vms]]\nname = \"web\"\n\n[[vms]]\nname = \"db\"\n\n[[vms]]\nname = \"web\"\n",
    ),
    (
        "replica_name_collision",
        "[[vms]]\nname = \"web\"\ncount = 2\n\n[[vms]]\nname = \"web-2\"\n",
    ),
    (
        "replica_collides_with_earlier_vm",
        "[[vms]]\nname = \"web-1\"\n\n[[vms]]\nname = \"web\"\ncount = 2\n",
    ),
    ("count_zero", "[[vms]]\nname = \"web\"\ncount = 0\n"),
    ("count_too_large", "[[vms]]\nname = \"web\"\ncount = 1000\n"),
    (
        "unknown_machine",
        "[[vms]]\nname = \"web\"\nmachine = \"pc\"\n",
    ),
    (
        "machine_typo",
        "[[vms]]\nname = \"web\"\nmachine = \"mircovm\"\n",
    ),
    (
        "microvm_with_disk",
        "[[vms]]\nname = \"web\"\nimage = { disk = \"base.qcow2\" }\nmachine = \"microvm\"\n",
    ),
    (
        "unknown_accel",
        "[[vms]]\nname = \"web\"\naccel = \"kvmm\"\n",
    ),
    (
        "accel_unrelated",
        "[[vms]]\nname = \"web\"\naccel = \"hvf\"\n",
    ),
    ("broker_port_zero", "[broker]\nport = 0\n"),
    ("broker_port_too_large", "[broker]\nport = 70000\n"),
    ("vm_name_reserved", "[[vms]]\nname = \"host\"\n"),
    ("vm_name_reserved_all", "[[vms]]\nname = \"all\"\n"),
    (
        "image_unknown_name",
        "[[vms]]\nname = \"web\"\nimage = \"debian\"\n",
    ),
    (
        "image_name_typo",
        "[[vms]]\nname = \"web\"\nimage = \"defualt\"\n",
    ),
    (
        "image_file_as_name",
        "[[vms]]\nname = \"web\"\nimage = \"images/base.qcow2\"\n",
    ),
    ("image_wrong_type", "[[vms]]\nname = \"web\"\nimage = 3\n"),
    (
        "image_unknown_key",
        "[[vms]]\nname = \"web\"\nimage = { kernal = \"vmlinux\" }\n",
    ),
    (
        "image_cmdline_with_disk_only",
        "[[vms]]\nname = \"web\"\nimage = { disk = \"base.qcow2\", cmdline = \"root=/dev/vda\" }\n",
    ),
    (
        "share_without_guest",
        "[[vms]]\nname = \"web\"\nshares = [{ host = \"flake\" }]\n",
    ),
    (
        "share_relative_guest",
        "[[vms]]\nname = \"web\"\nshares = [{ host = \"flake\", guest = \"mnt/flake\" }]\n",
    ),
    (
        "share_on_guest_root",
        "[[vms]]\nname = \"web\"\nshares = [{ host = \"flake\", guest = \"/\" }]\n",
    ),
    (
        "share_tag_too_long",
        "[[vms]]\nname = \"web\"\nshares = [{ host = \"a\", guest = \"/a\", tag = \"this-tag-is-much-too-long-for-qemu\" }]\n",
    ),
    (
        "share_tag_bad_character",
        "[[vms]]\nname = \"web\"\nshares = [{ host = \"a\", guest = \"/a\", tag = \"my share\" }]\n",
    ),
    (
        "share_tags_collide",
        "[[vms]]\nname = \"web\"\nshares = [\n  { host = \"a\", guest = \"/srv/data\" },\n  { host = \"b\", guest = \"/mnt/data\" },\n]\n",
    ),
    (
        "share_mount_point_twice",
        "[[vms]]\nname = \"web\"\nshares = [\n  { host = \"a\", guest = \"/mnt/x\", tag = \"a\" },\n  { host = \"b\", guest = \"/mnt/x/\", tag = \"b\" },\n]\n",
    ),
    (
        "share_unknown_key",
        "[[vms]]\nname = \"web\"\nshares = [{ host = \"a\", guest = \"/a\", read_only = true }]\n",
    ),
    (
        "share_not_a_table",
        "[[vms]]\nname = \"web\"\nshares = [\"flake:/mnt/flake\"]\n",
    ),
    (
        "share_host_empty",
        "[[vms]]\nname = \"web\"\nshares = [{ host = \"\", guest = \"/a\" }]\n",
    ),
    (
        "image_initrd_with_disk",
        "[[vms]]\nname = \"web\"\nimage = { disk = \"base.qcow2\", initrd = \"initrd.img\" }\n",
    ),
    (
        "image_initrd_without_kernel",
        "[[vms]]\nname = \"web\"\nimage = { initrd = \"initrd.img\" }\n",
    ),
    ("image_empty_table", "[[vms]]\nname = \"web\"\nimage = {}\n"),
    (
        "kernel_path_empty",
        "[[vms]]\nname = \"web\"\nimage = { kernel = \"\" }\n",
    ),
    (
        "disk_path_with_tilde",
        "[[vms]]\nname = \"web\"\nimage = { disk = \"~/vm/base.qcow2\" }\n",
    ),
    ("state_dir_empty", "[project]\nstate_dir = \"\"\n"),
    (
        "forward_single_port",
        "[[vms]]\nname = \"web\"\nforwards = [\"8080\"]\n",
    ),
    (
        "forward_port_zero",
        "[[vms]]\nname = \"web\"\nforwards = [\"0:80\"]\n",
    ),
    (
        "forward_localhost",
        "[[vms]]\nname = \"web\"\nforwards = [\"localhost:8080:80\"]\n",
    ),
    (
        "forwards_not_an_array",
        "[[vms]]\nname = \"web\"\nforwards = \"8080:80\"\n",
    ),
    (
        "forward_not_a_string",
        "[[vms]]\nname = \"web\"\nforwards = [8080]\n",
    ),
    (
        "forward_conflict",
        "[[vms]]\nname = \"web\"\nforwards = [\"8080:80\"]\n\n[[vms]]\nname = \"api\"\nforwards = [\"127.0.0.1:8080:8000\"]\n",
    ),
    (
        "forward_conflict_wildcard",
        "[[vms]]\nname = \"web\"\nforwards = [\"0.0.0.0:8080:80\"]\n\n[[vms]]\nname = \"api\"\nforwards = [\"8080:80\"]\n",
    ),
    (
        "forward_conflict_with_replica",
        "[[vms]]\nname = \"web\"\ncount = 3\nforwards = [\"8080:80\"]\n\n[[vms]]\nname = \"api\"\nforwards = [\"8082:80\"]\n",
    ),
    (
        "forward_twice_in_one_vm",
        "[[vms]]\nname = \"web\"\nforwards = [\"8080:80\", \"8080:81\"]\n",
    ),
    (
        "forward_on_broker_port",
        "[broker]\nport = 9000\n\n[[vms]]\nname = \"web\"\nforwards = [\"9000:80\"]\n",
    ),
    (
        "forward_ports_past_65535",
        "[[vms]]\nname = \"web\"\ncount = 3\nforwards = [\"65534:80\"]\n",
    ),
    (
        "duration_without_unit",
        "[lifecycle]\npowerdown_wait = \"20\"\n",
    ),
    (
        "duration_bad_unit",
        "[lifecycle]\nsigterm_wait = \"5 sec\"\n",
    ),
    ("duration_wrong_type", "[lifecycle]\nsigterm_wait = 5\n"),
    ("syntax_unclosed_table", "[[vms]\nname = \"web\"\n"),
    (
        "syntax_duplicate_key",
        "[[vms]]\nname = \"web\"\nname = \"db\"\n",
    ),
    ("syntax_bare_string", "[[vms]]\nname = web\n"),
    (
        "several_errors_at_once",
        "[project]\nname = \"demo\"\n\n[[vms]]\nname = \"web\"\ncpus = 0\nmemory = \"12M\"\nforwards = [\"8080:80\"]\n\n[[vms]]\nname = \"db\"\nmachine = \"q36\"\nforwards = [\"8080:5432\"]\n",
    ),
    (
        "several_unknown_keys",
        "[[vms]]\nname = \"web\"\nmemroy = \"1G\"\ncpu = 2\n\n[broker]\nprot = 1\n",
    ),
    (
        "bootstrap_two_kinds",
        "[[vms]]\nname = \"web\"\nbootstrap = { run = \"true\", flake = \"./g#s\" }\n",
    ),
    (
        "bootstrap_nothing_to_run",
        "[[vms]]\nname = \"web\"\nbootstrap = { mode = \"always\" }\n",
    ),
    (
        "bootstrap_mode_typo",
        "[[vms]]\nname = \"web\"\nbootstrap = { run = \"true\", mode = \"alwys\" }\n",
    ),
    (
        "bootstrap_unknown_key",
        "[[vms]]\nname = \"web\"\nbootstrap = { command = \"true\" }\n",
    ),
    (
        "bootstrap_env_not_a_string",
        "[[vms]]\nname = \"web\"\nbootstrap = { run = \"true\", env = { PORT = 80 } }\n",
    ),
    (
        "bootstrap_env_bad_name",
        "[[vms]]\nname = \"web\"\nbootstrap = { run = \"true\", env = { \"1X\" = \"a\" } }\n",
    ),
    (
        "bootstrap_secret_not_in_env",
        "[[vms]]\nname = \"web\"\nbootstrap = { run = \"true\", env = { API_KEY = \"k\" }, secret_env = [\"API_KYE\"] }\n",
    ),
    (
        "bootstrap_empty_run",
        "[[vms]]\nname = \"web\"\nbootstrap = { run = \" \" }\n",
    ),
    (
        "bootstrap_nixos_without_host",
        "[[vms]]\nname = \"web\"\nbootstrap = { nixos = \"./guest\" }\n",
    ),
    ("bootstrap_bad_timeout", "[bootstrap]\ntimeout = \"10\"\n"),
    ("bootstrap_key_at_top_level", "mode = \"auto\"\n"),
];

#[test]
fn bad_configs_render_located_errors_with_a_fix() {
    let mut names = std::collections::HashSet::new();
    for (name, text) in BAD {
        assert!(names.insert(name), "duplicate case name {name}");
        let rendered = render_err(text);
        assert!(
            rendered.contains("--> castra.toml"),
            "{name}: no location in\n{rendered}"
        );
        insta::with_settings!({ description => *text, omit_expression => true }, {
            insta::assert_snapshot!(format!("bad_{name}"), rendered);
        });
    }
}

#[test]
fn every_located_error_has_a_help_line_except_toml_syntax() {
    for (name, text) in BAD {
        let err = load_str(text, Path::new("castra.toml")).unwrap_err();
        for d in err.diagnostics() {
            assert!(d.location.is_some(), "{name}: {d:?}");
            if !name.starts_with("syntax_") {
                assert!(d.help.is_some(), "{name}: no help in {d:?}");
            }
        }
    }
}

#[test]
fn several_errors_are_reported_together() {
    let (_, text) = BAD
        .iter()
        .find(|(n, _)| *n == "several_errors_at_once")
        .unwrap();
    let err = load_str(text, Path::new("castra.toml")).unwrap_err();
    let lines: Vec<usize> = err
        .diagnostics()
        .iter()
        .map(|d| d.location.as_ref().unwrap().line)
        .collect();
    assert_eq!(lines, vec![6, 7, 12, 13]);
}

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
            port: 7750,
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

#[test]
fn replicas_are_numbered_from_one_and_shift_host_ports() {
    let p = ok(r#"
[[vms]]
name = "web"
count = 3
memory = "512M"
forwards = ["8080:80", "udp:127.0.0.2:5353:53"]

[[vms]]
name = "solo"
count = 1
forwards = ["9000:80"]

[[vms]]
name = "db"
forwards = ["8083:5432"]
"#);
    let summary: Vec<String> = p
        .vms
        .iter()
        .map(|v| {
            let fw: Vec<String> = v.forwards.iter().map(|f| f.to_string()).collect();
            format!("{} {} [{}]", v.name, v.memory, fw.join(", "))
        })
        .collect();
    insta::assert_snapshot!(summary.join("\n"), @r"
    web-1 512M [127.0.0.1:8080->80/tcp, 127.0.0.2:5353->53/udp]
    web-2 512M [127.0.0.1:8081->80/tcp, 127.0.0.2:5354->53/udp]
    web-3 512M [127.0.0.1:8082->80/tcp, 127.0.0.2:5355->53/udp]
    solo-1 256M [127.0.0.1:9000->80/tcp]
    db 256M [127.0.0.1:8083->5432/tcp]
    ");
}

#[test]
fn forwards_on_other_addresses_or_protocols_do_not_conflict() {
    let p = ok(r#"
[[vms]]
name = "a"
forwards = ["127.0.0.1:8080:80", "udp:8081:53"]

[[vms]]
name = "b"
forwards = ["127.0.0.2:8080:80", "8081:53", "127.0.0.3:8080:80"]
"#);
    assert_eq!(p.vms.len(), 2);
}

#[test]
fn the_init_template_loads_as_a_two_vm_demo() {
    let p = ok(INIT_TEMPLATE);
    let names: Vec<&str> = p.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["web", "db"]);
    assert!(p.vms.iter().all(|v| v.image == ImageSpec::Default));
    assert!(p.vms.iter().all(|v| v.machine == Machine::Microvm));
    assert_eq!(p.broker, BrokerConfig::default());
    assert_eq!(p.lifecycle, Lifecycle::default());
}

#[test]
fn the_template_documents_every_key() {
    for key in [
        "name",
        "state_dir",
        "cpus",
        "memory",
        "image",
        "accel",
        "forwards",
        "count",
        "kernel",
        "initrd",
        "cmdline",
        "disk",
        "port",
        "allow_tokenless_handshake",
        "powerdown_wait",
        "sigterm_wait",
    ] {
        assert!(
            INIT_TEMPLATE.contains(&format!("{key} =")),
            "template does not mention {key}"
        );
    }
}

#[test]
fn load_reads_a_real_file_and_makes_paths_absolute() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("Web Shop");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join(CONFIG_FILE_NAME);
    std::fs::write(
        &path,
        "[[vms]]\nname = \"web\"\nimage = { kernel = \"vmlinux\" }\n",
    )
    .unwrap();

    let p = load(&path).unwrap();
    assert_eq!(p.name, "web-shop");
    assert_eq!(p.config_path, path);
    assert_eq!(p.state_root, dir.join(".castra"));
    assert_eq!(
        p.vms[0].image,
        ImageSpec::Kernel {
            kernel: dir.join("vmlinux"),
            initrd: None,
            cmdline: None,
            disk: None,
        }
    );
}

#[test]
fn load_reports_unreadable_files() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join(CONFIG_FILE_NAME);
    let err = load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "error: could not read {}: No such file or directory (os error 2)",
            missing.display()
        )
    );

    std::fs::write(&missing, b"name = \"\xff\"\n").unwrap();
    let err = load(&missing).unwrap_err();
    assert!(err.to_string().contains("valid UTF-8"), "{err}");
}

#[test]
fn load_errors_name_the_path_as_given() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(CONFIG_FILE_NAME);
    std::fs::write(&path, "[[vms]]\nname = \"web\"\ncpus = 0\n").unwrap();
    let err = load(&path).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("--> {}:3:8", path.display())),
        "{err}"
    );
}

/// Fenced code blocks of a markdown text: (info string, body).
fn fenced_blocks(md: &str) -> Vec<(usize, &str, String)> {
    let mut blocks = Vec::new();
    let mut lines = md.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let mut body = String::new();
            for (_, l) in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            blocks.push((i, lang, body));
        }
    }
    blocks
}

#[test]
fn docs_config_md_examples_are_real_output() {
    let doc = include_str!("../../docs/CONFIG.md");
    let blocks = fenced_blocks(doc);
    let (_, lang, first) = &blocks[0];
    assert_eq!(*lang, "toml");
    let p = ok(first);
    let names: Vec<&str> = p.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["web-1", "web-2", "db"]);

    let marker_lines: Vec<usize> = doc
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == "<!-- error-example -->")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(marker_lines.len(), 3);
    for m in marker_lines {
        let at = blocks.iter().position(|(i, _, _)| *i == m + 1).unwrap();
        let (_, lang, input) = &blocks[at];
        let (_, out_lang, expected) = &blocks[at + 1];
        assert_eq!((*lang, *out_lang), ("toml", "text"));
        assert_eq!(
            render_err(input),
            expected.trim_end(),
            "example at line {}",
            m + 1
        );
    }
}

#[test]
fn bootstrap_per_vm_over_the_project_default() {
    let p = ok(r#"
[bootstrap]
mode = "always"
env = { REGION = "eu", DB_PASSWORD = "pw" }
timeout = "5m"

[[vms]]
name = "web"
count = 2
bootstrap = { script = "setup/web.sh", env = { REGION = "us", API = "x" }, secret_env = ["API"] }

[[vms]]
name = "db"
bootstrap = { nixos = "./guest#db", mode = "auto", timeout = "30s" }

[[vms]]
name = "cache"

[[vms]]
name = "off"
bootstrap = { mode = "skip" }
"#);
    let names: Vec<&str> = p.bootstraps.keys().map(String::as_str).collect();
    assert_eq!(names, ["db", "web-1", "web-2"]);
    let web = &p.bootstraps["web-2"];
    assert_eq!(
        web.kind,
        BootstrapKind::Script {
            path: "/srv/demo/setup/web.sh".into()
        }
    );
    assert_eq!(web.mode, BootstrapMode::Always);
    assert_eq!(web.timeout, std::time::Duration::from_secs(300));
    let env: Vec<(&str, &str)> = web
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(env, [("API", "x"), ("DB_PASSWORD", "pw"), ("REGION", "us")]);
    let secret: Vec<&str> = web.secret_env.iter().map(String::as_str).collect();
    assert_eq!(secret, ["API", "DB_PASSWORD"]);
    let db = &p.bootstraps["db"];
    assert_eq!(
        db.kind,
        BootstrapKind::Nixos {
            reference: "./guest#db".into()
        }
    );
    assert_eq!(
        (db.mode, db.timeout),
        (BootstrapMode::Auto, std::time::Duration::from_secs(30))
    );
    // The VM spec does not carry the bootstrap: changing it never restarts a VM.
    assert_eq!(p.vms[0], ok("[[vms]]\nname = \"web\"\ncount = 2\n").vms[0]);
}

#[test]
fn a_project_default_with_a_kind_applies_to_every_vm() {
    let p = ok(
        "[bootstrap]\nflake = \"./guest#setup\"\n\n[[vms]]\nname = \"a\"\n\n[[vms]]\nname = \"b\"\nbootstrap = { mode = \"skip\" }\n",
    );
    assert_eq!(
        p.bootstraps["a"].kind,
        BootstrapKind::Flake {
            reference: "./guest#setup".into()
        }
    );
    assert_eq!(p.bootstraps["a"].mode, BootstrapMode::Auto);
    assert_eq!(p.bootstraps["b"].mode, BootstrapMode::Skip);
}
