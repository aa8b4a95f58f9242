//! Bootstraps: a VM's `bootstrap` over the project's `[bootstrap]` default,
//! expanded per replica, and kept out of the VM spec.

use super::*;

#[test]
fn bootstrap_per_vm_over_the_project_default() {
    let p = ok(r#"
[bootstrap]
mode = "always"
env = { REGION = "eu", DB_PASSWORD = "pw" }
timeout = "5m"

[[vms]]
name = "web"
count = 2
bootstrap = { script = "setup/web.sh", env = { REGION = "us", API = "x" }, secret_env = ["API"] }

[[vms]]
name = "db"
bootstrap = { nixos = "./guest#db", mode = "auto", timeout = "30s" }

[[vms]]
name = "cache"

[[vms]]
name = "off"
bootstrap = { mode = "skip" }
"#);
    let names: Vec<&str> = p.bootstraps.keys().map(String::as_str).collect();
    assert_eq!(names, ["db", "web-1", "web-2"]);
    let web = &p.bootstraps["web-2"];
    assert_eq!(
        web.kind,
        BootstrapKind::Script {
            path: "/srv/demo/setup/web.sh".into()
        }
    );
    assert_eq!(web.mode, BootstrapMode::Always);
    assert_eq!(web.timeout, std::time::Duration::from_secs(300));
    let env: Vec<(&str, &str)> = web
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(env, [("API", "x"), ("DB_PASSWORD", "pw"), ("REGION", "us")]);
    let secret: Vec<&str> = web.secret_env.iter().map(String::as_str).collect();
    assert_eq!(secret, ["API", "DB_PASSWORD"]);
    let db = &p.bootstraps["db"];
    assert_eq!(
        db.kind,
        BootstrapKind::Nixos {
            reference: "./guest#db".into()
        }
    );
    assert_eq!(
        (db.mode, db.timeout),
        (BootstrapMode::Auto, std::time::Duration::from_secs(30))
    );
    // The VM spec does not carry the bootstrap: changing it never restarts a VM.
    assert_eq!(p.vms[0], ok("[[vms]]\nname = \"web\"\ncount = 2\n").vms[0]);
}

#[test]
fn a_project_default_with_a_kind_applies_to_every_vm() {
    let p = ok(
        "[bootstrap]\nflake = \"./guest#setup\"\n\n[[vms]]\nname = \"a\"\n\n[[vms]]\nname = \"b\"\nbootstrap = { mode = \"skip\" }\n",
    );
    assert_eq!(
        p.bootstraps["a"].kind,
        BootstrapKind::Flake {
            reference: "./guest#setup".into()
        }
    );
    assert_eq!(p.bootstraps["a"].mode, BootstrapMode::Auto);
    assert_eq!(p.bootstraps["b"].mode, BootstrapMode::Skip);
}
