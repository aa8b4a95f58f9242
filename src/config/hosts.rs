//! `[hosts.NAME]` tables and `host = "NAME"` in `[[vms]]`: host names follow
//! the VM name rules, every host has a libvirt URI castra can drive, and a VM
//! names a host that exists (with "did you mean" when it is close). Whether a
//! host answers is not checked here: that is plan time (`castra plan`).
//!
//! Pure: strings in, hosts and problems out.

use std::collections::BTreeMap;
use toml::Spanned;

use super::diagnostic::Problem;
use super::model::{HostSpec, ImageSpec, LOCAL_HOST, VmSpec};
use super::names::check_name;
use super::raw::RawHost;
use super::suggest::{closest, one_of};

/// URI schemes castra drives (libvirt's QEMU driver, local or remote).
const SCHEMES: [&str; 4] = ["qemu", "qemu+tcp", "qemu+tls", "qemu+ssh"];

/// The hosts that are valid; each bad one adds a problem and is left out.
pub(super) fn check(
    raw: Option<BTreeMap<Spanned<String>, Spanned<RawHost>>>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, HostSpec> {
    let mut out = BTreeMap::new();
    for (name, host) in raw.into_iter().flatten() {
        let span = host.span();
        let host = host.into_inner();
        let n = name.get_ref();
        if n == LOCAL_HOST {
            problems.push(
                Problem::new("host name \"local\" is reserved", name.span()).help(
                    "\"local\" is the direct-QEMU backend (a VM without host runs there): name the libvirt host otherwise, e.g. [hosts.here] with uri = \"qemu:///system\"",
                ),
            );
            continue;
        }
        if let Err(why) = check_name(n) {
            problems.push(
                Problem::new(format!("invalid host name \"{n}\": {why}"), name.span()).help(
                    "for example: [hosts.a] (lowercase letters, digits and '-', starting with a letter)",
                ),
            );
            continue;
        }
        let Some(uri) = host.uri else {
            problems.push(
                Problem::new(format!("[hosts.{n}] has no uri"), span).help(
                    "add the libvirt URI below it: uri = \"qemu:///system\" (this machine) or uri = \"qemu+tcp://10.0.0.2/system\"",
                ),
            );
            continue;
        };
        if let Err(why) = check_uri(uri.get_ref()) {
            problems.push(
                Problem::new(
                    format!("invalid uri \"{}\" for host \"{n}\": {why}", uri.get_ref()),
                    uri.span(),
                )
                .help(format!(
                    "castra drives libvirt's QEMU driver: the scheme is one of {}, e.g. uri = \"qemu+tcp://10.0.0.2/system\"",
                    one_of(&SCHEMES)
                )),
            );
            continue;
        }
        out.insert(
            n.clone(),
            HostSpec {
                name: n.clone(),
                uri: uri.into_inner(),
            },
        );
    }
    out
}

/// Why `uri` is not a libvirt QEMU URI castra can use.
fn check_uri(uri: &str) -> Result<(), String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err("it has no scheme (such as qemu+tcp://)".into());
    };
    if !SCHEMES.contains(&scheme) {
        return Err(format!("scheme \"{scheme}\" is not a QEMU driver URI"));
    }
    if uri
        .chars()
        .any(|c| c.is_whitespace() || c == '\'' || c == '"')
    {
        return Err("it contains spaces or quotes".into());
    }
    let path = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    if path != "system" && path != "session" {
        return Err("the path must be /system or /session".into());
    }
    Ok(())
}

/// The host a `[[vms]]` entry names: `None` for none or `"local"`, `Some`
/// for a declared host; an unknown one adds a problem (and counts as local,
/// so the other checks still run).
pub(super) fn placement(
    host: Option<&Spanned<String>>,
    hosts: &BTreeMap<String, HostSpec>,
    declared: &[String],
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let h = host?;
    let name = h.get_ref();
    if name == LOCAL_HOST {
        return None;
    }
    if hosts.contains_key(name) {
        return Some(name.clone());
    }
    // Declared but invalid hosts already have their own problem.
    if declared.iter().any(|d| d == name) {
        return None;
    }
    let names: Vec<&str> = hosts.keys().map(String::as_str).collect();
    let help = match closest(name, &names) {
        Some(best) => format!("did you mean host = \"{best}\"?"),
        None if names.is_empty() => format!(
            "declare it: [hosts.{name}] with uri = \"qemu+tcp://10.0.0.2/system\", or remove host to run the VM here with direct QEMU"
        ),
        None => format!(
            "declared hosts: {} (or \"local\" for direct QEMU); or add [hosts.{name}]",
            one_of(&names)
        ),
    };
    problems.push(Problem::new(format!("unknown host \"{name}\""), h.span()).help(help));
    None
}

/// What a libvirt host cannot run yet: disk images (their overlay lives on
/// this machine) and shares (host directories of this machine).
pub(super) fn check_supported(
    spec: &VmSpec,
    host: &str,
    span: std::ops::Range<usize>,
    problems: &mut Vec<Problem>,
) {
    let disk = matches!(
        spec.image,
        ImageSpec::Disk { .. } | ImageSpec::Kernel { disk: Some(_), .. }
    );
    let what = match (disk, spec.shares.is_empty()) {
        (true, _) => "a disk image",
        (false, false) => "shares",
        (false, true) => return,
    };
    problems.push(
        Problem::new(
            format!(
                "VM \"{}\" uses {what}, which libvirt hosts do not run yet (host \"{host}\")",
                spec.name
            ),
            span,
        )
        .help(
            "on a libvirt host use image = \"default\" or { kernel = ... } without disk and no shares; or remove host to run it here with direct QEMU",
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::check_uri;

    #[test]
    fn uris_castra_drives() {
        for ok in [
            "qemu:///system",
            "qemu:///session",
            "qemu+tcp://10.77.0.2/system",
            "qemu+ssh://root@b.example/system?keyfile=/k",
            "qemu+tls://b/system",
        ] {
            assert_eq!(check_uri(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("10.0.0.2", "no scheme"),
            ("xen:///system", "not a QEMU driver"),
            ("qemu+tcp://10.0.0.2/", "/system or /session"),
            ("qemu:///system x", "spaces"),
        ] {
            let e = check_uri(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
