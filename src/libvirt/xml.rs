//! The libvirt domain XML of one castra VM, as a pure function of its launch
//! inputs, and the way back: castra's launch record read out of a domain's
//! metadata.
//!
//! What libvirt models is written as libvirt XML (memory, vCPUs, direct
//! kernel boot, the serial log, fw_cfg entries); the user-mode network and its
//! host forwards go through `<qemu:commandline>` because libvirt 9.0 ignores
//! `<portForward>` on the user network. Secrets never appear here: the token's
//! fw_cfg entry names a file on the host (a storage volume), never its value.

use crate::config::{Machine, VmSpec};
use std::fmt::Write as _;

/// The XML namespace of castra's domain metadata (an identifier, never fetched).
pub const METADATA_NS: &str = "https://castra.invalid/libvirt/record/1";
/// The element name inside `<metadata>`.
pub const METADATA_ELEMENT: &str = "record";
const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// Everything the domain XML depends on.
#[derive(Debug, Clone, Copy)]
pub struct DomainInputs<'a> {
    pub domain: &'a str,
    pub spec: &'a VmSpec,
    /// Paths on the host (storage volumes).
    pub kernel: &'a str,
    pub initrd: Option<&'a str>,
    /// The whole kernel command line.
    pub cmdline: &'a str,
    /// `(name, file on the host)`: fw_cfg entries passed by file (the token).
    pub fw_cfg_files: &'a [(String, String)],
    /// `(name, value)`: fw_cfg entries that are not secret (VM name, broker port).
    pub fw_cfg_values: &'a [(String, String)],
    /// Where the host keeps the guest's serial console.
    pub serial_log: &'a str,
    /// castra's launch record (JSON), kept in the domain's metadata.
    pub record_json: &'a str,
    /// QEMU arguments passed through as `<qemu:arg>` (the user-mode network
    /// and its forwards, as `qemu::argv::network_args` spells them).
    pub qemu_args: &'a [String],
}

/// The `<domain>` document for `virsh create`.
pub fn render(i: &DomainInputs) -> String {
    let spec = i.spec;
    let mut x = String::new();
    let _ = writeln!(x, "<domain type='qemu' xmlns:qemu='{QEMU_NS}'>");
    let _ = writeln!(x, "  <name>{}</name>", esc(i.domain));
    let _ = writeln!(
        x,
        "  <metadata><castra:{METADATA_ELEMENT} xmlns:castra='{METADATA_NS}'>{}</castra:{METADATA_ELEMENT}></metadata>",
        esc(i.record_json)
    );
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", spec.memory.mib());
    let _ = writeln!(x, "  <vcpu>{}</vcpu>", spec.cpus);
    if !i.fw_cfg_files.is_empty() || !i.fw_cfg_values.is_empty() {
        x.push_str("  <sysinfo type='fwcfg'>\n");
        for (name, value) in i.fw_cfg_values {
            let _ = writeln!(x, "    <entry name='{}'>{}</entry>", esc(name), esc(value));
        }
        for (name, file) in i.fw_cfg_files {
            let _ = writeln!(x, "    <entry name='{}' file='{}'/>", esc(name), esc(file));
        }
        x.push_str("  </sysinfo>\n");
    }
    x.push_str("  <os>\n");
    let _ = writeln!(
        x,
        "    <type arch='x86_64' machine='{}'>hvm</type>",
        spec.machine.as_str()
    );
    let _ = writeln!(x, "    <kernel>{}</kernel>", esc(i.kernel));
    if let Some(initrd) = i.initrd {
        let _ = writeln!(x, "    <initrd>{}</initrd>", esc(initrd));
    }
    let _ = writeln!(x, "    <cmdline>{}</cmdline>", esc(i.cmdline));
    x.push_str("  </os>\n");
    x.push_str("  <features><acpi/></features>\n");
    x.push_str("  <cpu mode='maximum' migratable='on'/>\n");
    x.push_str("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>\n");
    x.push_str("  <devices>\n");
    let _ = writeln!(
        x,
        "    <serial type='file'><source path='{}'/><target port='0'/></serial>",
        esc(i.serial_log)
    );
    if spec.machine == Machine::Microvm {
        x.push_str("    <controller type='usb' model='none'/>\n");
    }
    x.push_str("    <memballoon model='none'/>\n");
    x.push_str("  </devices>\n");
    x.push_str("  <qemu:commandline>\n");
    for arg in i.qemu_args {
        let _ = writeln!(x, "    <qemu:arg value='{}'/>", esc(arg));
    }
    x.push_str("  </qemu:commandline>\n");
    x.push_str("</domain>\n");
    x
}

/// XML text and attribute escaping.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn unesc(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#34;", "\"")
        .replace("&amp;", "&")
}

/// The record JSON in what `virsh metadata DOMAIN URI` prints
/// (`<castra:record xmlns:castra="...">{...}</castra:record>`, prefix
/// chosen by libvirt), or `None` when there is none.
pub fn record_from_metadata(text: &str) -> Option<String> {
    let start = text.find('>')? + 1;
    let end = text.rfind("</")?;
    if end < start || !text[..start].contains(METADATA_ELEMENT) {
        return None;
    }
    Some(unesc(text[start..end].trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccelChoice, Forward, ImageSpec, Proto, parse_size};

    fn spec() -> VmSpec {
        VmSpec {
            name: "web".into(),
            cpus: 2,
            memory: parse_size("512M").unwrap(),
            image: ImageSpec::Default,
            machine: Machine::Microvm,
            accel: AccelChoice::Tcg,
            forwards: vec![Forward {
                proto: Proto::Tcp,
                host_addr: "127.0.0.1".parse().unwrap(),
                host_port: 8080,
                guest_port: 80,
            }],
            shares: vec![],
        }
    }

    #[test]
    fn the_domain_names_files_never_secrets_and_keeps_the_record() {
        let s = spec();
        let files = [(
            "opt/castra/token".to_string(),
            "/var/lib/libvirt/castra/d-token".to_string(),
        )];
        let values = [("opt/castra/vm".to_string(), "web".to_string())];
        let xml = render(&DomainInputs {
            domain: "castra-demo-0a1b2c-web",
            spec: &s,
            kernel: "/pool/k",
            initrd: Some("/pool/i"),
            cmdline: "console=ttyS0 castra.vm=web",
            fw_cfg_files: &files,
            fw_cfg_values: &values,
            serial_log: "/var/log/x.log",
            record_json: "{\"a\":\"<&>\"}",
            qemu_args: &crate::qemu::argv::network_args(&s, "castranet0"),
        });
        assert!(xml.contains("<name>castra-demo-0a1b2c-web</name>"), "{xml}");
        assert!(xml.contains("<memory unit='MiB'>512</memory>"), "{xml}");
        assert!(xml.contains("<vcpu>2</vcpu>"), "{xml}");
        assert!(xml.contains("machine='microvm'"), "{xml}");
        assert!(
            xml.contains("<entry name='opt/castra/token' file='/var/lib/libvirt/castra/d-token'/>"),
            "{xml}"
        );
        assert!(
            xml.contains("hostfwd=tcp:127.0.0.1:8080-:80"),
            "forwards ride the qemu command line: {xml}"
        );
        assert!(
            xml.contains("{&quot;a&quot;:&quot;&lt;&amp;&gt;&quot;}"),
            "{xml}"
        );
        // libvirt gives the metadata back with its own prefix and quoting.
        let back = format!(
            "<ns0:record xmlns:ns0=\"{METADATA_NS}\">{}</ns0:record>\n",
            "{\"a\":\"&lt;&amp;&gt;\"}"
        );
        assert_eq!(
            record_from_metadata(&back).as_deref(),
            Some("{\"a\":\"<&>\"}")
        );
        assert_eq!(record_from_metadata(""), None);
    }
}
