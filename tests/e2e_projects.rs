//! Two projects on one host, each made by `castra init` and nothing else:
//! both `apply` and converge side by side (each on its own port block, real
//! brokers and QEMUs), and a port taken by the other project is named as
//! that project's, with the line of castra.toml that asks for it.

mod common;

use common::{Project, ok_stdout, stderr, stdout};

fn init(p: &Project) {
    let out = p.castra(&["init", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The image is built (ensure_image): init does not ask to build it again.
    assert!(
        stdout(&out).contains("the default image is built"),
        "{}",
        stdout(&out)
    );
}

fn broker_port(p: &Project) -> u16 {
    let s = p.json(&["status", "--json"]);
    s["broker"]["port"].as_u64().expect("broker port") as u16
}

#[test]
fn two_init_projects_converge_side_by_side() {
    common::ensure_image();
    let a = Project::new("");
    let b = Project::new("");
    init(&a);
    init(&b);
    let (pa, pb) = (broker_port(&a), broker_port(&b));
    assert_ne!(pa, pb, "two projects got one port block");
    for p in [&a, &b] {
        let out = p.castra(&["apply"]);
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        assert!(
            stdout(&out).contains("2 VM(s) running in QEMU as declared"),
            "{}",
            stdout(&out)
        );
    }
    for p in [&a, &b] {
        let s = p.json(&["status", "--json"]);
        assert_eq!(s["broker"]["state"], "running", "{s}");
        assert!(
            s["vms"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v["state"] == "running"),
            "{s}"
        );
    }

    // A third project asking for a's broker port is told whose it is, and where.
    let c = Project::new(&format!(
        "[project]\nname = \"third\"\n\n[broker]\nport = {pa}\n"
    ));
    c.write_config(&format!(
        "[project]\nname = \"third\"\n\n[broker]\nport = {pa}\n\n[[vms]]\nname = \"x\"\n"
    ));
    let out = c.castra(&["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    let a_name = a.json(&["status", "--json"])["project"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        err.contains(&format!(
            "the broker of another castra project, \"{a_name}\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&a.path().join("castra.toml").display().to_string()),
        "{err}"
    );
    assert!(err.contains("--> castra.toml:5:8"), "{err}");

    for p in [&a, &b] {
        ok_stdout(&p.castra(&["down"]));
    }
}
