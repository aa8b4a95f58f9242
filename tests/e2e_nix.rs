//! End to end with the Debian 12 + Nix guest (`guest/debian-nix/build.sh`)
//! under TCG: one VM, booted once by direct kernel boot with its root on a
//! copy-on-write overlay of the image's disk, a local flake shared in
//! read-only over virtio-9p. Bootstrap-by-flake for real: `nix run` of an app
//! that writes a marker and publishes it on the bus; `status` shows ok; a
//! failing app shows failed with its log; `auto` does not rerun; a changed
//! plan reruns; `down` is cooperative and leaves the base disk alone.
//!
//! The image must exist: `scripts/test.sh` builds it (a no-op when cached).
//! This test fails, never skips, when it is missing.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::{Project, stderr, stdout, vm};

/// The built image: files and the kernel command line from its manifest.
struct Image {
    disk: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
}

fn locate_image() -> Image {
    let dir = castra::image::cache_root().join("debian-nix");
    let key = std::fs::read_to_string(dir.join("current")).unwrap_or_else(|e| {
        panic!(
            "no Debian+Nix guest image ({}: {e}); build it with guest/debian-nix/build.sh \
             (scripts/test.sh does, as root)",
            dir.join("current").display()
        )
    });
    let dir = dir.join(key.trim());
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json"))
            .unwrap_or_else(|e| panic!("{}: {e}; rebuild the image", dir.display())),
    )
    .expect("manifest.json is JSON");
    let file = |k: &str| {
        let p = dir.join(manifest[k].as_str().expect("manifest names the file"));
        assert!(p.exists(), "{} is missing; rebuild the image", p.display());
        p
    };
    Image {
        disk: file("disk"),
        kernel: file("kernel"),
        initrd: file("initrd"),
        cmdline: manifest["cmdline"].as_str().unwrap().to_owned(),
    }
}

/// A flake with no inputs (no nixpkgs: nothing to download). Each app is a
/// derivation built with the guest's /bin/sh that copies a script of the
/// flake; nix 2.8 cannot run a plain `"${self}/app.sh"` program (it asserts
/// on a source path where it expects a derivation output).
const FLAKE: &str = r#"{
  description = "castra e2e: bootstrap apps without nixpkgs";
  outputs = { self }:
    let
      app = name: derivation {
        inherit name;
        system = "x86_64-linux";
        builder = "/bin/sh";
        args = [ "-c" "/bin/mkdir -p $out/bin && /bin/cp ${self}/${name}.sh $out/bin/${name} && /bin/chmod +x $out/bin/${name}" ];
      };
      run = name: { type = "app"; program = "${app name}/bin/${name}"; };
    in {
      apps.x86_64-linux = { ok = run "ok"; fail = run "fail"; };
    };
}
"#;

const OK_APP: &str = r#"#!/bin/sh
echo "hello from the flake, run $CASTRA_BOOTSTRAP_RUN"
if touch /mnt/flake/probe 2>/dev/null; then echo "the share is writable"; exit 9; fi
echo "marker-$CASTRA_BOOTSTRAP_RUN" > /var/tmp/castra-nix-marker
castra-agent publish --topic boot.done "{\"marker\":\"$(cat /var/tmp/castra-nix-marker)\"}"
"#;

const FAIL_APP: &str = "#!/bin/sh\necho \"the flake app fails\"\nexit 3\n";

fn config(port: u16, img: &Image, app: &str) -> String {
    format!(
        r#"[project]
name = "nix"

[broker]
port = {port}

[[vms]]
name = "n"
cpus = 2
memory = "1G"
accel = "tcg"
image = {{ disk = "{}", kernel = "{}", initrd = "{}", cmdline = "{}" }}
shares = [{{ host = "flake", guest = "/mnt/flake" }}]
bootstrap = {{ flake = "/mnt/flake#{app}", timeout = "3m" }}
"#,
        img.disk.display(),
        img.kernel.display(),
        img.initrd.display(),
        img.cmdline
    )
}

fn run_id(p: &Project) -> String {
    let s = p.json(&["status", "--json"]);
    vm(&s, "n")["bootstrap"]["run"]
        .as_str()
        .unwrap_or_else(|| panic!("no bootstrap run: {s}"))
        .to_owned()
}

fn boot_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("> ")).collect()
}

#[test]
fn bootstrap_by_flake_in_a_debian_nix_guest() {
    let img = locate_image();
    let port = common::free_port();
    let p = Project::new(&config(port, &img, "ok"));
    let flake = p.path().join("flake");
    std::fs::create_dir(&flake).unwrap();
    std::fs::write(flake.join("flake.nix"), FLAKE).unwrap();
    for (name, text) in [("ok.sh", OK_APP), ("fail.sh", FAIL_APP)] {
        std::fs::write(flake.join(name), text).unwrap();
    }
    let disk_before = std::fs::metadata(&img.disk).unwrap().modified().unwrap();

    // 1. Cold apply: boot, handshake, `nix run /mnt/flake#ok`, all in one command.
    let t = Instant::now();
    let out = p.castra(&["apply", "--bootstrap-timeout", "240s"]);
    let took = t.elapsed();
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{o}{e}{}", serial(&p));
    assert!(o.contains("bootstrap n: ok in "), "{o}{e}");
    assert!(e.contains("n | hello from the flake"), "{e}");
    eprintln!("apply (cold boot + nix run) -> bootstrap done in {took:?}");
    let s = p.json(&["status", "--json"]);
    let b = &vm(&s, "n")["bootstrap"];
    assert_eq!(b["state"], "ok", "{s}");
    assert_eq!(vm(&s, "n")["reachable"], true, "{s}");
    let log = std::fs::read_to_string(b["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("building '/nix/store/"),
        "nix built nothing: {log}"
    );
    assert!(log.contains("hello from the flake"), "{log}");
    let run_ok = run_id(&p);
    let tail = stdout(&p.castra(&["bus", "tail", "--vm", "n", "--topic", "boot.done", "--json"]));
    assert!(tail.contains(&format!("marker-{run_ok}")), "{tail}");
    // The VM runs on an overlay of the image's disk, by direct kernel boot.
    let launch = std::fs::read_to_string(p.path().join(".castra/vms/n/launch.json")).unwrap();
    for arg in ["virtio-blk-device", "virtio-9p-device", "mount_tag=flake"] {
        assert!(launch.contains(arg), "no {arg} in {launch}");
    }

    // 2. Nothing changed: auto does not rerun.
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("no-op"), "{}", stdout(&out));
    assert_eq!(run_id(&p), run_ok, "auto reran an unchanged bootstrap");

    // 3. A failing app: the changed plan reruns, status says failed, the log says why.
    p.write_config(&config(port, &img, "fail"));
    let out = p.castra(&["plan"]);
    assert_eq!(
        boot_lines(&stdout(&out)),
        ["> bootstrap n (auto: plan changed, flake)"]
    );
    let out = p.castra(&["apply", "--bootstrap-timeout", "120s"]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(e.contains("bootstrap n: FAILED: exit code 3"), "{o}{e}");
    let s = p.json(&["status", "--json"]);
    let b = &vm(&s, "n")["bootstrap"];
    assert_eq!(b["state"], "failed", "{s}");
    let log = std::fs::read_to_string(b["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("the flake app fails"), "{log}");
    let run_fail = run_id(&p);
    assert_ne!(run_fail, run_ok);

    // 4. Back to the good app: reruns (the build is cached in the guest's store).
    p.write_config(&config(port, &img, "ok"));
    let t = Instant::now();
    let out = p.castra(&["apply"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    eprintln!("apply (guest up) -> bootstrap done in {:?}", t.elapsed());
    let run_again = run_id(&p);
    assert!(run_again != run_fail && run_again != run_ok);

    // 5. Down: the guest's systemd powers off on the ACPI button; the base is untouched.
    let out = p.castra(&["down"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("n: stopped by ACPI powerdown (cooperative)"),
        "{}",
        stdout(&out)
    );
    assert!(p.qemu_pids().is_empty());
    assert_eq!(
        std::fs::metadata(&img.disk).unwrap().modified().unwrap(),
        disk_before,
        "the image's disk was written"
    );
}

fn serial(p: &Project) -> String {
    std::fs::read_to_string(p.path().join(".castra/vms/n/serial.log")).unwrap_or_default()
}
