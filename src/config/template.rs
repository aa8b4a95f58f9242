//! The commented example `castra.toml` that `castra init` writes. It is a
//! working project (tested to load) and a tour of the keys; docs/CONFIG.md
//! is the full reference. Its ports come from the project's port block
//! (`project_ports`), so two projects made by `init` do not collide.

use super::project_ports::PortBlock;

/// The template with the ports of `block`: the broker on its first port,
/// `web` on the next (its replicas after it), `db` five further on.
pub fn init_template(block: PortBlock) -> String {
    INIT_TEMPLATE
        .replace("@BROKER@", &block.broker().to_string())
        .replace("@WEB@", &block.port(0).to_string())
        .replace("@WEB2@", &block.port(1).to_string())
        .replace("@DB@", &block.port(4).to_string())
}

/// A 2-VM demo project (`web` and `db` on the default guest image), with
/// `@BROKER@`, `@WEB@`, `@WEB2@` and `@DB@` where the block's ports go.
const INIT_TEMPLATE: &str = r#"# castra.toml: the VMs of this project. `castra apply` starts what is
# declared here and stops what is not; `castra plan` shows what would change.
# Every key is described in docs/CONFIG.md.

[project]
# name = "demo"            # default: this directory's name
# state_dir = ".castra"    # pidfiles, sockets, logs, overlays (relative to this file)

[[vms]]
name = "web"               # lowercase letters, digits and '-', at most 32 characters
cpus = 1
memory = "256M"            # binary units: "512M", "1G", "1.5GiB"; a bare number is MiB
image = "default"          # castra's guest image (build it with `castra image build`)
# accel = "auto"           # "auto" (KVM if a probe shows it works, else TCG), "kvm" or "tcg"
# Host ports forwarded into the guest: "host:guest", "addr:host:guest",
# "udp:host:guest". The host address defaults to 127.0.0.1.
forwards = ["@WEB@:80"]       # 127.0.0.1:@WEB@ on the host -> port 80 in the guest
# count = 2                # replicas web-1, web-2; replica i (from 0) binds host port + i (web-2: @WEB2@)

[[vms]]
name = "db"
memory = "512M"
forwards = ["127.0.0.1:@DB@:5432"]

# Boot your own kernel instead of the default image (paths are relative to
# this file; machine defaults to "microvm"):
#   image = { kernel = "vmlinux", initrd = "initrd.img", cmdline = "console=ttyS0" }
# Or a qcow2 disk, run on a copy-on-write overlay (machine defaults to "q35"):
#   image = { disk = "base.qcow2" }
# Or both: the kernel boots with the disk's overlay as its root (/dev/vda):
#   image = { disk = "root.qcow2", kernel = "vmlinux", initrd = "initrd.img" }
# Host directories the guest mounts (virtio-9p; read-only unless readonly = false):
#   shares = [{ host = "flake", guest = "/mnt/flake" }]
# Run something inside a VM once it is up, over the bus (no SSH): a script file,
# an inline command, `nix run <flake>` or `nixos-rebuild switch --flake <flake>#<host>`.
# mode "auto" runs it once per change, "always" on every apply, "skip" never:
#   bootstrap = { script = "setup.sh", mode = "auto", env = { ROLE = "db" } }

[broker]
# This project's ports: castra init chose @BROKER@..@BROKER@+9 from a hash of
# this directory's path (a free block in 17000-24999), so projects on one
# host do not collide. Without `port`, the broker still uses @BROKER@.
port = @BROKER@               # guests reach the broker at 10.0.2.2:<port>
# allow_tokenless_handshake = false   # let `echo hello vm:NAME | nc 10.0.2.2 PORT`
#                                     # (no token) mark a VM reachable

[lifecycle]
# powerdown_wait = "20s"   # after the ACPI power button, before SIGTERM
# sigterm_wait = "5s"      # after SIGTERM, before SIGKILL
"#;
