//! A VM from a user's qcow2 disk: castra runs it on a copy-on-write overlay
//! (`qemu-img create -f qcow2 -F qcow2 -b base`), never writing the base.
//! The disk holds no OS, so the guest sits in firmware: this checks the disk
//! path (overlay, q35, launch, status, the shutdown ladder's SIGTERM stage
//! for a guest that ignores the power button, clean, the name and broker
//! port handed over by fw_cfg), not a boot.

mod common;

use std::process::Command;

use common::{Project, stderr, stdout, vm};

#[test]
fn a_disk_vm_runs_on_an_overlay_and_leaves_the_base_alone() {
    let port = common::free_port();
    let p = Project::new(&format!(
        "[project]\nname = \"disk\"\n[broker]\nport = {port}\n[lifecycle]\npowerdown_wait = \"1s\"\n\
         [[vms]]\nname = \"d\"\nmemory = \"128M\"\naccel = \"tcg\"\nimage = {{ disk = \"base.qcow2\" }}\n"
    ));
    let base = p.path().join("base.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("64M")
        .status()
        .expect("qemu-img");
    assert!(made.success());
    let base_before = std::fs::read(&base).unwrap();

    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let s = p.json(&["status", "--json"]);
    assert_eq!(vm(&s, "d")["state"], "running", "{s}");

    let overlay = p.path().join(".castra/vms/d/overlay.qcow2");
    let info = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&overlay)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["backing-filename"],
        base.to_string_lossy().as_ref(),
        "{info}"
    );
    let launch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path().join(".castra/vms/d/launch.json")).unwrap())
            .unwrap();
    let argv = launch["argv"].to_string();
    assert!(argv.contains("q35"), "{argv}");
    // A disk booted through firmware gets no castra kernel command line: its
    // name and the broker port go by fw_cfg (the agent reads them from there).
    assert!(argv.contains("name=opt/castra/vm,file="), "{argv}");
    assert!(argv.contains("name=opt/castra/broker_port,file="), "{argv}");
    let dir = p.path().join(".castra/vms/d");
    assert_eq!(std::fs::read_to_string(dir.join("fw_cfg.vm")).unwrap(), "d");
    assert_eq!(
        std::fs::read_to_string(dir.join("fw_cfg.broker_port")).unwrap(),
        port.to_string()
    );

    // Firmware ignores the power button: the ladder escalates to SIGTERM.
    let out = p.castra(&["down"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("d: stopped by SIGTERM"),
        "{}",
        stdout(&out)
    );
    assert!(p.qemu_pids().is_empty());
    assert_eq!(
        std::fs::read(&base).unwrap(),
        base_before,
        "the base disk changed"
    );

    let c = p.json(&["clean", "--json"]);
    assert!(c["reclaimed_bytes"].as_u64().unwrap() > 0, "{c}");
    assert!(!overlay.exists());
}
