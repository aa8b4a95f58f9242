//! The share table as it travels from host to guest: one `tag<TAB>mount point<TAB>ro|rw`
//! line per share, passed by fw_cfg as `opt/castra/shares`. The host renders it when a VM
//! starts (`reconcile`), the guest agent parses it and mounts (`agent/shares.rs`); the
//! format lives here, below both. Pure.

use super::model::Share;

/// Where QEMU's fw_cfg exposes the share table castra passes with
/// `-fw_cfg name=opt/castra/shares,file=...`.
pub const FW_CFG_SHARES_PATH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/castra/shares/raw";
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
}
