# NixOS VM test: castra on a NixOS host runs a NixOS guest (the flake's guest
# image plus ./guest-flake and a bus echo service), one subtest per user
# story, all on one nested guest booted once:
#   1. `castra apply` brings the guest up and it becomes reachable
#      (`castra status --json` says reachable: its agent holds a bus session);
#   2. `castra status` answers on the host (table and JSON agree);
#   3. a bus message round-trips host -> guest -> host (`castra bus publish`
#      on `ping`, the guest's echo service answers on `pong`, `castra bus
#      tail` shows it from vm:web);
#   4. bootstrap-by-flake: a bootstrap added to castra.toml runs `nix run` on
#      the guest's local flake without restarting the VM, status says ok, the
#      app's bus message arrives, and a second apply has nothing to do;
#   5. `castra down` stops it and leaves no QEMU process behind.
#
# The guest runs nested inside the test VM. castra's `accel = "auto"` is its
# "kvm:tcg": KVM when a bounded probe shows it works (the test VM has
# /dev/kvm only with nested virtualisation), otherwise TCG. Pass
# `accel = "tcg"` to force software emulation (CASTRA_ACCEL).
{ pkgs, castra, mkGuestImage, toToml, accel ? "auto" }:
let
  project = "/root/demo";

  # What this test adds to the guest image.
  testGuest = { config, lib, pkgs, ... }: {
    # `nix run` on a local flake, offline: flakes on, no registry download.
    nix.settings.experimental-features = [ "nix-command" "flakes" ];
    nix.settings.flake-registry = "";
    # The flake's app is built with the guest's own tools (no nixpkgs input),
    # and nothing is downloaded: the nested guest has no internet.
    nix.settings.sandbox = false;
    nix.settings.substituters = lib.mkForce [ ];
    # The flake the bootstrap runs, in the guest's own store.
    environment.etc."castra-flake".source = ./guest-flake;
    # Echo: every message on `ping` is published back on `pong`.
    systemd.services.castra-echo = {
      description = "echo ping -> pong over the castra bus";
      wantedBy = [ "multi-user.target" ];
      after = [ "castra-agent.service" ];
      path = [ config.services.castra-agent.package pkgs.jq ];
      # subscribe exits when its session ends; systemd starts it again.
      script = ''
        castra-agent subscribe --topic ping | while read -r line; do
          printf '%s' "$line" | jq -c .payload | castra-agent publish --topic pong -
        done
      '';
      serviceConfig = { Restart = "always"; RestartSec = 1; };
    };
  };
  guestImage = mkGuestImage [ testGuest ];

  vmBase = {
    name = "web";
    machine = "q35";
    memory = "1536M";
    image = {
      kernel = "${guestImage}/kernel";
      initrd = "${guestImage}/initrd";
      inherit (guestImage) cmdline;
    };
  };
  config = vm: pkgs.writeText "castra.toml" (toToml {
    project.name = "nixtest";
    vms = [ vm ];
    broker.port = 7750;
  });
  plainToml = config vmBase;
  # Story 4: the same VM with a bootstrap (never part of the launch spec, so
  # adding it restarts nothing).
  flakeToml = config (vmBase // {
    bootstrap = {
      flake = "path:/etc/castra-flake";
      env.GREETING = "hello from the host";
      timeout = "5m";
    };
  });
in
pkgs.testers.runNixOSTest {
  name = "castra-guest-stories";

  nodes.host = { ... }: {
    # The nested guest gets 1.5 GiB (its Nix store lives in RAM).
    virtualisation.memorySize = 3072;
    virtualisation.cores = 2;
    environment.systemPackages = [ castra pkgs.jq pkgs.procps ];
    # In the node's closure, so the guest image is in its store.
    environment.etc."castra-demo/castra.toml".source = plainToml;
    environment.etc."castra-demo/castra-flake.toml".source = flakeToml;
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
        code, _ = castra("plan", check=False)
        assert code == 2, f"plan with a VM to start exits 2, not {code}"
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

    with subtest("a bus message round-trips host -> guest -> host"):
        # The echo service subscribes once the guest is up; publish until
        # its answer is in the bus log (every publish is durable first).
        host.wait_until_succeeds(
            "cd ${project} && castra bus publish --topic ping '{\"n\": 42}' >&2"
            " && sleep 2"
            " && castra bus tail --topic pong --json"
            " | jq -e -s 'map(select(.vm == \"web\" and .payload.n == 42)) | length > 0'",
            timeout=300,
        )
        web = vm(status(), "web")
        assert web["last_publish_age_ms"] is not None, web

    with subtest("bootstrap-by-flake runs in the guest and reports success"):
        pid = vm(status(), "web")["pid"]
        host.succeed("cp /etc/castra-demo/castra-flake.toml ${project}/castra.toml")
        code, plan = castra("plan", check=False)
        assert code == 2 and "> bootstrap web (auto: never ran, flake)" in plan, plan
        castra("apply --bootstrap-timeout 10m >&2")
        web = vm(status(), "web")
        assert web["pid"] == pid, "adding a bootstrap must not restart the VM"
        assert web["bootstrap"]["state"] == "ok", web
        log = host.succeed(f"cat {web['bootstrap']['log']}")
        assert "marker written" in log, log
        done = castra("bus tail --vm web --topic flake.done --json")
        assert "hello from the host" in done and "/run/castra-flake-marker" in done, done
        # auto: done once, not again.
        castra("plan")

    with subtest("down leaves no qemu process"):
        castra("down >&2")
        # The bracket keeps the pattern from matching the shell running pgrep.
        host.fail("pgrep -af '[q]emu-system-'")
        web = vm(status(), "web")
        assert web["state"] == "stopped", web
        assert web["reachable"] is False, web
  '';
}
