//! Bad configs -> rendered errors: the table of cases, each an insta file
//! snapshot (`snapshots/`, the config text is recorded as its description),
//! with a location and a help line on every error.

use super::*;

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
    (
        "legacy_config_of_the_original_castra",
        "version = \"0.1\"\n\n[[vms]]\nname = \"devbox\"\nbase_image = \"alpine.qcow2\"\nport_forwards = [{ host = 2222, guest = 22 }]\nmemroy = \"1G\"\n\n[[vms.instances]]\nid = \"devbox-0\"\n\n[lifecycle]\nsigterm_wait_secs = 10\nboot_timeout_secs = 60\n\n[workflows]\ninit = [\"echo hi\"]\n",
    ),
    (
        "suggestion_names_the_type_it_takes",
        "[lifecycle]\nsigterm_wait_sec = 5\n",
    ),
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
