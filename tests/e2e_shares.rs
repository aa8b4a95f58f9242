//! Shares on the default image, end to end with a real guest (TCG): the
//! guest agent mounts a read-only and a writable virtio-9p share before it
//! connects; a bootstrap reads the file the host put in one and writes a
//! file into the other, which the host then reads. One guest.

mod common;

use common::{Project, stderr, stdout};

#[test]
fn the_default_image_mounts_shares_both_ways() {
    common::ensure_image();
    let port = common::free_port();
    let p = Project::new("");
    std::fs::create_dir(p.path().join("in")).unwrap();
    std::fs::create_dir(p.path().join("out")).unwrap();
    std::fs::write(p.path().join("in/hello.txt"), "from-the-host\n").unwrap();
    p.write_config(&format!(
        r#"[broker]
port = {port}

[[vms]]
name = "s"
memory = "160M"
shares = [
  {{ host = "in", guest = "/mnt/in" }},
  {{ host = "out", guest = "/mnt/out", readonly = false }},
]
bootstrap = {{ run = "cat /mnt/in/hello.txt; echo from-the-guest > /mnt/out/guest.txt; if echo x > /mnt/in/nope 2>/dev/null; then echo ro-broken; else echo ro-refused; fi" }}

[lifecycle]
powerdown_wait = "3s"
sigterm_wait = "2s"
"#
    ));
    let out = p.castra(&["apply", "--bootstrap-timeout", "120s"]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{all}");
    // The guest read the host's file over the read-only share, and could not write to it.
    assert!(all.contains("s | from-the-host"), "{all}");
    assert!(all.contains("s | ro-refused"), "{all}");
    assert!(!p.path().join("in/nope").exists());
    // The host reads what the guest wrote on the writable share.
    let written = std::fs::read_to_string(p.path().join("out/guest.txt")).unwrap_or_else(|e| {
        panic!(
            "guest.txt not written ({e}); console:\n{}",
            std::fs::read_to_string(p.path().join(".castra/vms/s/serial.log")).unwrap_or_default()
        )
    });
    assert_eq!(written, "from-the-guest\n");
    let out = p.castra(&["down"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
