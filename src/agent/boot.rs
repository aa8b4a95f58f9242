//! Where the agent learns who it is: the kernel command line
//! (`castra.vm=<name> castra.broker_port=<port>`), else the fw_cfg entries
//! `opt/castra/vm` and `opt/castra/broker_port` castra attaches to every VM
//! (a disk booted through firmware gets no castra command line), and the
//! fw_cfg token file (read with `broker::token::read_token`, the one reader host and
//! guest share). Pure parsing plus small reads.

use std::path::Path;

/// Default kernel command line file.
pub const CMDLINE: &str = "/proc/cmdline";
/// Where QEMU's fw_cfg exposes the token castra passes with
/// `-fw_cfg name=opt/castra/token,file=...`.
pub const FW_CFG_TOKEN: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/castra/token/raw";

pub use crate::qemu::fw_cfg::{FW_CFG_BROKER_PORT, FW_CFG_DIR, FW_CFG_VM};

/// What the kernel command line (or fw_cfg) says about castra.
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

impl BootParams {
    /// Fill what the command line did not say from fw_cfg's texts.
    pub fn or_fw_cfg(self, vm: Option<String>, port: Option<String>) -> BootParams {
        BootParams {
            vm: self.vm.or_else(|| {
                vm.map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty() && !v.contains(char::is_whitespace))
            }),
            broker_port: self
                .broker_port
                .or_else(|| port.and_then(|p| p.trim().parse().ok())),
        }
    }
}

/// The command line at `cmdline`, completed from the fw_cfg entries under `fw_dir`.
pub fn read_params(cmdline: &Path, fw_dir: &Path) -> BootParams {
    let entry = |name: &str| std::fs::read_to_string(fw_dir.join(name).join("raw")).ok();
    read_cmdline(cmdline).or_fw_cfg(entry(FW_CFG_VM), entry(FW_CFG_BROKER_PORT))
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

    #[test]
    fn fw_cfg_fills_what_the_command_line_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        std::fs::write(&cmdline, "BOOT_IMAGE=/vmlinuz root=/dev/sda1\n").unwrap();
        // A firmware-booted disk: nothing on the command line, fw_cfg has both.
        for (name, text) in [(FW_CFG_VM, "web\n"), (FW_CFG_BROKER_PORT, "17010")] {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("raw"), text).unwrap();
        }
        let p = read_params(&cmdline, dir.path());
        assert_eq!((p.vm.as_deref(), p.broker_port), (Some("web"), Some(17010)));
        // The command line wins when it has them.
        std::fs::write(&cmdline, "castra.vm=db castra.broker_port=7000").unwrap();
        let p = read_params(&cmdline, dir.path());
        assert_eq!((p.vm.as_deref(), p.broker_port), (Some("db"), Some(7000)));
        // Neither: nothing.
        let p = read_params(&dir.path().join("none"), &dir.path().join("none"));
        assert_eq!(p, BootParams::default());
    }
}
