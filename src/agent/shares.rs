//! Host directory shares, guest side: the share table castra hands to the
//! guest by fw_cfg (`opt/castra/shares`, one `tag<TAB>mount point<TAB>ro|rw`
//! line per share; `render` is the host's half of the format) and mounting
//! it (`mount -t 9p -o trans=virtio,...`) before the agent first connects, so
//! a bootstrap can use a shared flake. Idempotent: a mount point that is
//! already a mount is left alone (the agent may restart). Does not load
//! modules beyond what `mount` asks the kernel for.

use std::path::Path;
use std::process::Command;

use crate::config::Share;

/// Where QEMU's fw_cfg exposes the share table castra passes with
/// `-fw_cfg name=opt/castra/shares,file=...`.
pub const FW_CFG_SHARES: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/castra/shares/raw";
/// The fw_cfg name of the share table.
pub const FW_CFG_NAME: &str = "opt/castra/shares";

/// One share as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestShare {
    pub tag: String,
    pub mount_point: String,
    pub readonly: bool,
}

/// The table for a VM's shares (config validation keeps tabs and newlines
/// out of tags and mount points).
pub fn render(shares: &[Share]) -> String {
    shares
        .iter()
        .map(|s| {
            let mode = if s.readonly { "ro" } else { "rw" };
            format!("{}\t{}\t{mode}\n", s.tag, s.guest)
        })
        .collect()
}

/// Parse the table; malformed lines are skipped and named in the second list.
pub fn parse(text: &str) -> (Vec<GuestShare>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            [tag, mount, mode @ ("ro" | "rw")] if !tag.is_empty() && mount.starts_with('/') => ok
                .push(GuestShare {
                    tag: (*tag).to_owned(),
                    mount_point: (*mount).to_owned(),
                    readonly: *mode == "ro",
                }),
            _ => bad.push(line.to_owned()),
        }
    }
    (ok, bad)
}

/// The `mount` arguments for one share.
pub fn mount_args(s: &GuestShare) -> Vec<String> {
    let mut opts = String::from("trans=virtio,version=9p2000.L,msize=262144");
    if s.readonly {
        opts.push_str(",ro");
    }
    vec![
        "-t".into(),
        "9p".into(),
        "-o".into(),
        opts,
        s.tag.clone(),
        s.mount_point.clone(),
    ]
}

/// Whether `/proc/mounts` text lists `mount_point` as a mount point.
pub fn is_mounted(proc_mounts: &str, mount_point: &str) -> bool {
    proc_mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|m| m == mount_point)
}

/// Mount every share in the table at `table` (absent table: nothing to do).
/// Returns one line per share for the console; failures do not stop the agent.
pub fn mount_all(table: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(table) else {
        return Vec::new();
    };
    let (shares, bad) = parse(&text);
    let mut out: Vec<String> = bad
        .iter()
        .map(|l| format!("share table line {l:?} is malformed; skipped"))
        .collect();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for s in &shares {
        if is_mounted(&mounts, &s.mount_point) {
            out.push(format!(
                "share {} already mounted on {}",
                s.tag, s.mount_point
            ));
            continue;
        }
        if let Err(e) = std::fs::create_dir_all(&s.mount_point) {
            out.push(format!(
                "share {}: cannot create {}: {e}",
                s.tag, s.mount_point
            ));
            continue;
        }
        match Command::new("mount").args(mount_args(s)).output() {
            Ok(o) if o.status.success() => {
                out.push(format!("share {} mounted on {}", s.tag, s.mount_point))
            }
            Ok(o) => out.push(format!(
                "share {}: mount on {} failed: {}",
                s.tag,
                s.mount_point,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => out.push(format!("share {}: cannot run mount: {e}", s.tag)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(tag: &str, guest: &str, readonly: bool) -> Share {
        Share {
            host: "/host/dir".into(),
            tag: tag.into(),
            guest: guest.into(),
            readonly,
        }
    }

    #[test]
    fn the_table_round_trips() {
        let table = render(&[
            share("flake", "/mnt/flake", true),
            share("out", "/srv/out", false),
        ]);
        insta::assert_snapshot!(table, @r"
        flake	/mnt/flake	ro
        out	/srv/out	rw
        ");
        let (shares, bad) = parse(&table);
        assert!(bad.is_empty());
        assert_eq!(
            shares,
            [
                GuestShare {
                    tag: "flake".into(),
                    mount_point: "/mnt/flake".into(),
                    readonly: true
                },
                GuestShare {
                    tag: "out".into(),
                    mount_point: "/srv/out".into(),
                    readonly: false
                },
            ]
        );
    }

    #[test]
    fn malformed_lines_are_reported_not_mounted() {
        let (ok, bad) = parse("a\t/m\tro\nb\trelative\tro\nc\t/m\tmaybe\njunk\n\n");
        assert_eq!(ok.len(), 1);
        assert_eq!(bad, ["b\trelative\tro", "c\t/m\tmaybe", "junk"]);
    }

    #[test]
    fn mount_arguments() {
        let (s, _) = parse("flake\t/mnt/flake\tro\n");
        insta::assert_snapshot!(mount_args(&s[0]).join(" "), @"-t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro flake /mnt/flake");
    }

    #[test]
    fn mounted_is_decided_by_the_mount_point_column() {
        let mounts = "flake /mnt/flake 9p ro,relatime 0 0\n/dev/vda / ext4 rw 0 0\n";
        assert!(is_mounted(mounts, "/mnt/flake"));
        assert!(is_mounted(mounts, "/"));
        assert!(!is_mounted(mounts, "/mnt"));
        assert!(!is_mounted(mounts, "flake"));
    }
}
