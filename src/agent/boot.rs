//! Where the agent learns who it is: the kernel command line
//! (`castra.vm=<name> castra.broker_port=<port>`) and the fw_cfg token file
//! that castra attaches to every VM (read with `broker::token::read_token`, the one
//! reader host and guest share). Pure parsing plus a small read.

use std::path::Path;

/// Default kernel command line file.
pub const CMDLINE: &str = "/proc/cmdline";
/// Where QEMU's fw_cfg exposes the token castra passes with
/// `-fw_cfg name=opt/castra/token,file=...`.
pub const FW_CFG_TOKEN: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/castra/token/raw";

/// What the kernel command line says about castra.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootParams {
    pub vm: Option<String>,
    pub broker_port: Option<u16>,
}

/// Parse `castra.vm=` and `castra.broker_port=` (the last occurrence wins,
/// as with kernel parameters; an unparsable port is ignored).
pub fn parse_cmdline(cmdline: &str) -> BootParams {
    let mut p = BootParams::default();
    for word in cmdline.split_ascii_whitespace() {
        if let Some(vm) = word.strip_prefix("castra.vm=") {
            p.vm = Some(vm.to_owned()).filter(|v| !v.is_empty());
        } else if let Some(Ok(port)) = word.strip_prefix("castra.broker_port=").map(str::parse) {
            p.broker_port = Some(port);
        }
    }
    p
}

/// Read the kernel command line (empty when unreadable).
pub fn read_cmdline(path: &Path) -> BootParams {
    parse_cmdline(&std::fs::read_to_string(path).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_table() {
        let cases = [
            (
                "console=ttyS0 castra.vm=web castra.broker_port=7750 quiet",
                Some("web"),
                Some(7750),
            ),
            ("castra.vm=a castra.vm=b", Some("b"), None),
            ("castra.broker_port=99999 castra.vm=", None, None),
            ("castra.vmx=web xcastra.vm=no", None, None),
            ("", None, None),
        ];
        for (line, vm, port) in cases {
            let p = parse_cmdline(line);
            assert_eq!((p.vm.as_deref(), p.broker_port), (vm, port), "{line}");
        }
    }
}
