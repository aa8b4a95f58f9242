# NixOS VM test: castra on a NixOS host runs the NixOS guest image, one
# subtest per user story:
#   1. `castra apply` brings the guest up and it becomes reachable
#      (`castra status --json` says reachable: its agent holds a bus session);
#   2. `castra status` answers on the host (table and JSON agree);
#   3. `castra down` stops it and leaves no QEMU process behind.
#
# The guest runs nested inside the test VM. castra's `accel = "auto"` is its
# "kvm:tcg": KVM when a bounded probe shows it works (the test VM has
# /dev/kvm only with nested virtualisation), otherwise TCG. Pass
# `accel = "tcg"` to force software emulation (CASTRA_ACCEL).
{ pkgs, castra, guestImage, toToml, accel ? "auto" }:
let
  project = "/root/demo";
  castraToml = pkgs.writeText "castra.toml" (toToml {
    project.name = "nixtest";
    vms = [{
      name = "web";
      machine = "q35";
      memory = "1536M";
      image = {
        kernel = "${guestImage}/kernel";
        initrd = "${guestImage}/initrd";
        inherit (guestImage) cmdline;
      };
    }];
    broker.port = 7750;
  });
in
pkgs.testers.runNixOSTest {
  name = "castra-apply-status-down";

  nodes.host = { ... }: {
    # The nested guest gets 1.5 GiB (its Nix store lives in RAM).
    virtualisation.memorySize = 3072;
    virtualisation.cores = 2;
    environment.systemPackages = [ castra pkgs.jq pkgs.procps ];
    # In the node's closure, so the guest image is in its store.
    environment.etc."castra-demo/castra.toml".source = castraToml;
  };

  testScript = ''
    import json

    def castra(args, check=True):
        cmd = f"cd ${project} && CASTRA_ACCEL=${accel} castra {args}"
        return host.succeed(cmd) if check else host.execute(cmd)

    def status():
        return json.loads(castra("status --json"))

    def vm(st, name):
        return next(v for v in st["vms"] if v["name"] == name)

    start_all()
    host.wait_for_unit("multi-user.target")
    host.succeed("mkdir -p ${project} && cp /etc/castra-demo/castra.toml ${project}/castra.toml")

    with subtest("apply brings the guest up and reachable"):
        castra("plan --json", check=False)  # exit 2: changes pending
        castra("apply >&2")
        # Booting NixOS nested (TCG when there is no nested KVM) takes a while.
        host.wait_until_succeeds(
            "cd ${project} && castra status --json | jq -e '.vms[] | select(.name == \"web\") | .reachable == true'",
            timeout=900,
        )
        st = status()
        web = vm(st, "web")
        assert web["state"] == "running", web
        assert web["last_handshake_age_ms"] is not None, web
        host.log(f"web: accel={web.get('accel')} ({web.get('accel_reason')})")
        # A second apply has nothing to do.
        castra("plan")

    with subtest("castra status answers on the host"):
        table = castra("status")
        assert "web" in table and "reachable" in table, table
        st = status()
        assert st["project"] == "nixtest", st
        assert st["broker"]["state"] == "running", st["broker"]
        assert st["broker"]["port"] == 7750, st["broker"]

    with subtest("down leaves no qemu process"):
        castra("down >&2")
        # The bracket keeps the pattern from matching the shell running pgrep.
        host.fail("pgrep -af '[q]emu-system-'")
        web = vm(status(), "web")
        assert web["state"] == "stopped", web
        assert web["reachable"] is False, web
  '';
}
