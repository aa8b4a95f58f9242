//! Safe apply with a real QEMU guest (default image, TCG): a change that
//! cannot start is refused at plan time and the running VM is untouched; a
//! replacement that fails after the old VM stopped (a QEMU failure injected
//! by the `CASTRA_TEST_BREAK_RESTART` test seam) is rolled back to the
//! previous spec; and the final message says what it reports (QEMU running),
//! not that the guests are ready. One guest, booted twice.

mod common;

use std::process::{Command, Output};

use common::{Project, stderr, stdout, vm};

fn config(port: u16, memory: &str, image: &str) -> String {
    format!(
        "[project]\nname = \"safe\"\n\n[broker]\nport = {port}\n\n[[vms]]\nname = \"a\"\nmemory = \"{memory}\"\nimage = {image}\n\n[lifecycle]\npowerdown_wait = \"3s\"\nsigterm_wait = \"2s\"\n"
    )
}

fn apply_breaking(p: &Project, vm: &str) -> Output {
    Command::new(common::castra_bin())
        .arg("apply")
        .current_dir(p.path())
        .env_remove("CASTRA_CONFIG")
        .env("CASTRA_TEST_BREAK_RESTART", vm)
        .output()
        .expect("run castra apply")
}

fn a_of(p: &Project) -> (String, i64, u64) {
    let s = p.json(&["status", "--json"]);
    let a = vm(&s, "a");
    (
        a["state"].as_str().unwrap_or_default().to_owned(),
        a["pid"].as_i64().unwrap_or(-1),
        a["memory_bytes"].as_u64().unwrap_or(0),
    )
}

const MIB: u64 = 1024 * 1024;

#[test]
fn refuses_what_cannot_start_and_rolls_back_a_failed_restart() {
    common::ensure_image();
    let port = common::free_port();
    let p = Project::new(&config(port, "128M", "\"default\""));
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    // The final line reports QEMU state, and says the guest may not answer yet.
    let text = stdout(&out);
    assert!(
        text.contains("1 VM(s) running in QEMU as declared"),
        "{text}"
    );
    assert!(!text.contains("converged"), "{text}");
    let (state, pid, mem) = a_of(&p);
    assert_eq!((state.as_str(), mem), ("running", 128 * MIB));

    // 1. A kernel that does not exist: plan and apply say where, nothing stops.
    p.write_config(&config(port, "128M", "{ kernel = \"missing/vmlinux\" }"));
    let out = p.castra(&["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("~ restart a"), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("image.kernel"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("--> castra.toml:10:20"), "{err}");
    let out = p.castra(&["apply"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(a_of(&p), (state.clone(), pid, 128 * MIB), "a was touched");

    // 2. A restart whose new QEMU fails after the old one stopped: rolled back.
    p.write_config(&config(port, "160M", "\"default\""));
    let out = apply_breaking(&p, "a");
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("rolled back"), "{all}");
    let (state, rolled_pid, mem) = a_of(&p);
    assert_eq!(state, "running", "{all}");
    assert_ne!(rolled_pid, pid, "a new QEMU runs the previous spec");
    assert_eq!(mem, 128 * MIB, "the previous spec, not the new one: {all}");
    let events = std::fs::read_to_string(p.path().join(".castra/events.jsonl")).unwrap();
    assert!(events.contains("\"event\":\"vm_rolled_back\""), "{events}");
    // The change is still pending, and applies once QEMU takes it.
    let out = p.castra(&["plan"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("~ restart a (memory 128M -> 160M)"),
        "{}",
        stdout(&out)
    );
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(a_of(&p).2, 160 * MIB);

    let out = p.castra(&["down"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
