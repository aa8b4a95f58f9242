//! `[hosts.NAME]` and `host = "NAME"`: hosts are read with their URI, VMs
//! (replicas too) are placed on them, and every mistake (unknown host, bad or
//! missing URI, the reserved name, a table of the wrong shape) is located
//! with a fix.

use super::*;

#[test]
fn hosts_and_placement_are_read() {
    let p = ok(
        "[hosts.a]\nuri = \"qemu+tcp://10.77.0.2/system\"\n\n[hosts.here]\nuri = \"qemu:///system\"\n\n[[vms]]\nname = \"web\"\nhost = \"a\"\ncount = 2\n\n[[vms]]\nname = \"db\"\nhost = \"local\"\n\n[[vms]]\nname = \"cache\"\nhost = \"here\"\n",
    );
    assert_eq!(p.hosts.len(), 2);
    assert_eq!(p.hosts["a"].uri, "qemu+tcp://10.77.0.2/system");
    assert_eq!(p.host_of("web-1").map(|h| h.name.as_str()), Some("a"));
    assert_eq!(p.host_of("web-2").map(|h| h.name.as_str()), Some("a"));
    assert_eq!(
        p.host_of("cache").map(|h| h.uri.as_str()),
        Some("qemu:///system")
    );
    assert_eq!(p.host_of("db"), None, "host = \"local\" is direct QEMU");
    assert!(!p.placement.contains_key("db"));
}

#[test]
fn a_project_without_hosts_is_unchanged() {
    let p = ok("[[vms]]\nname = \"web\"\n");
    assert!(p.hosts.is_empty() && p.placement.is_empty());
}

fn one_error(text: &str) -> (String, String) {
    let err = load_str(text, Path::new("castra.toml")).unwrap_err();
    let d = err.diagnostics();
    assert_eq!(d.len(), 1, "{err}");
    assert!(d[0].location.is_some(), "{err}");
    (d[0].message.clone(), d[0].help.clone().unwrap_or_default())
}

#[test]
fn host_mistakes_are_located_with_a_fix() {
    let (m, h) = one_error(
        "[hosts.a]\nuri = \"qemu:///system\"\n\n[[vms]]\nname = \"web\"\nhost = \"zzz\"\n",
    );
    assert_eq!(m, "unknown host \"zzz\"");
    assert!(h.contains("\"a\"") && h.contains("[hosts.zzz]"), "{h}");

    let (m, h) = one_error(
        "[hosts.alpha]\nuri = \"qemu:///system\"\n\n[[vms]]\nname = \"web\"\nhost = \"alpah\"\n",
    );
    assert_eq!(m, "unknown host \"alpah\"");
    assert_eq!(h, "did you mean host = \"alpha\"?");

    let (m, h) = one_error("[[vms]]\nname = \"web\"\nhost = \"b\"\n");
    assert_eq!(m, "unknown host \"b\"");
    assert!(h.contains("declare it: [hosts.b]"), "{h}");

    let (m, h) = one_error("[hosts.b]\nurl = \"qemu:///system\"\n");
    assert_eq!(m, "unknown key \"url\" in [hosts.NAME]");
    assert!(h.contains("\"uri\""), "{h}");

    let (m, h) = one_error("[hosts.b]\n");
    assert_eq!(m, "[hosts.b] has no uri");
    assert!(h.contains("uri = \"qemu:///system\""), "{h}");

    let (m, _) = one_error("[hosts.b]\nuri = \"ssh://b/system\"\n");
    assert!(
        m.starts_with("invalid uri \"ssh://b/system\" for host \"b\""),
        "{m}"
    );

    let (m, h) = one_error("[hosts.local]\nuri = \"qemu:///system\"\n");
    assert_eq!(m, "host name \"local\" is reserved");
    assert!(h.contains("direct-QEMU"), "{h}");

    let (m, _) = one_error("[hosts.B]\nuri = \"qemu:///system\"\n");
    assert!(m.starts_with("invalid host name \"B\""), "{m}");

    let (m, _) = one_error("hosts = 3\n");
    assert!(m.contains("must be a table of tables"), "{m}");

    let (m, _) = one_error("[hosts]\nb = \"qemu:///system\"\n");
    assert_eq!(m, "[hosts.b] must be a table, found a string");
}

#[test]
fn a_vm_on_an_invalid_host_gets_one_error_not_two() {
    let err = load_str(
        "[hosts.b]\nuri = \"nope\"\n\n[[vms]]\nname = \"web\"\nhost = \"b\"\n",
        Path::new("castra.toml"),
    )
    .unwrap_err();
    assert_eq!(err.diagnostics().len(), 1, "{err}");
}

#[test]
fn disks_and_shares_are_refused_on_hosts_at_load_time() {
    let (m, h) = one_error(
        "[hosts.b]\nuri = \"qemu:///system\"\n[[vms]]\nname = \"web\"\nhost = \"b\"\nimage = { disk = \"base.qcow2\" }\n",
    );
    assert_eq!(
        m,
        "VM \"web\" uses a disk image, which libvirt hosts do not run yet (host \"b\")"
    );
    assert!(h.contains("remove host"), "{h}");
    let (m, _) = one_error(
        "[hosts.b]\nuri = \"qemu:///system\"\n[[vms]]\nname = \"web\"\nhost = \"b\"\ncount = 2\nshares = [{ host = \"x\", guest = \"/mnt/x\" }]\n",
    );
    assert!(m.contains("uses shares"), "{m}");
}
