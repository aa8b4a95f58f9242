//! Host directory shares, guest side: reading the share table castra hands to the
//! guest by fw_cfg (its format: `config/share_table.rs`) and mounting
//! it (`mount -t 9p -o trans=virtio,...`) before the agent first connects, so
//! a bootstrap can use a shared flake. Idempotent: a mount point that is
//! already a mount is left alone (the agent may restart). Does not load
//! modules beyond what `mount` asks the kernel for.

use std::path::Path;
use std::process::Command;

use crate::config::share_table::{GuestShare, parse};

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
