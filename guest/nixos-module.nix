# NixOS module: the castra guest agent as a systemd service
# (`services.castra-agent`, exported by the flake as `nixosModules.guest`).
#
# It owns the service and its options only. It does not build an image
# (nix/guest-image.nix does), configure the guest's network (QEMU user-mode
# networking must reach the host at `brokerHost`), or pick the agent
# package: the flake's `nixosModules.guest` sets `package` to its own
# `castra-agent`; when importing this file directly, set it yourself.
#
# By default the agent learns everything from the guest itself, as castra
# launches it: `castra.vm=` and `castra.broker_port=` on the kernel command
# line and the per-launch token through QEMU fw_cfg. See docs/NIX.md.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkEnableOption mkIf mkMerge mkOption optionals optionalAttrs types literalExpression;
  cfg = config.services.castra-agent;

  # Where castra's `-fw_cfg name=opt/castra/token,file=...` appears in the guest.
  fwCfgToken = "/sys/firmware/qemu_fw_cfg/by_name/opt/castra/token/raw";

  # The agent parses an IP address, not a host name (src/agent/mod.rs).
  ipAddress = types.strMatching
    "([0-9]{1,3}[.]){3}[0-9]{1,3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*";

  # castra's VM names: lowercase letters, digits and '-', starting with a
  # letter, at most 32 characters (docs/CONFIG.md).
  vmName = types.strMatching "[a-z][a-z0-9-]{0,31}";

  # The agent's command line; flags win over its other sources.
  args =
    [ "${cfg.package}/bin/castra-agent" "--host" cfg.brokerHost "--token-file" cfg.tokenFile ]
    ++ optionals (cfg.vmName != null) [ "--vm" cfg.vmName ]
    ++ optionals (cfg.brokerPort != null) [ "--port" (toString cfg.brokerPort) ]
    ++ optionals (cfg.heartbeatMs != null) [ "--heartbeat-ms" (toString cfg.heartbeatMs) ];
in
{
  options.services.castra-agent = {
    enable = mkEnableOption ''
      the castra guest agent. It holds a bus session with the castra broker
      on the host (protocol in docs/BUS.md), which is what makes
      `castra status` show the VM as reachable, heartbeats it, and reconnects
      with capped exponential backoff whenever the session ends'';

    package = mkOption {
      type = types.package;
      defaultText = literalExpression "castra.packages.\${system}.castra-agent (set by the flake's nixosModules.guest)";
      example = literalExpression "inputs.castra.packages.x86_64-linux.castra-agent";
      description = ''
        The package providing `bin/castra-agent`. The flake's
        `nixosModules.guest` sets it to its static `castra-agent`; importing
        `guest/nixos-module.nix` on its own leaves it for you to set.
      '';
    };

    vmName = mkOption {
      type = types.nullOr vmName;
      default = null;
      example = "web";
      description = ''
        The VM name the agent announces (`hello vm:<name>`). `null` reads it
        from `castra.vm=` on the kernel command line, which castra appends to
        every direct kernel boot. Set it for guests castra boots from a disk
        image, whose kernel command line castra does not control.
      '';
    };

    brokerHost = mkOption {
      type = ipAddress;
      default = "10.0.2.2";
      example = "10.0.2.2";
      description = ''
        IP address (not a host name) of the castra broker as the guest sees
        it. QEMU user-mode networking shows the host at 10.0.2.2, and castra's
        broker listens on the host's 127.0.0.1 behind it.
      '';
    };

    brokerPort = mkOption {
      type = types.nullOr types.port;
      default = null;
      example = 7750;
      description = ''
        TCP port of the broker (`[broker] port` in castra.toml, 7750 by
        default). `null` reads it from `castra.broker_port=` on the kernel
        command line.
      '';
    };

    tokenFile = mkOption {
      type = types.strMatching "/.+";
      default = fwCfgToken;
      description = ''
        Absolute path of the file holding this VM's secret (whitespace is
        trimmed). castra generates a fresh token per launch and passes it
        with QEMU fw_cfg, which the `qemu_fw_cfg` kernel module exposes at
        the default path. A string, never a Nix path: a path would copy the
        secret into the world-readable Nix store.
      '';
    };

    bootstrap.enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Let the agent run the bootstraps `castra apply` sends (`script`,
        `run`, `flake` = `nix run`, `nixos` = `nixos-rebuild switch --flake`;
        docs/CONFIG.md). A bootstrap provisions the guest, so the agent then
        runs as unconfined root (like cloud-init) with `bootstrap.path` on its
        PATH. `false` runs the agent in a tight systemd sandbox (no
        capabilities, read-only system, IP sockets only): it still holds the
        bus session and heartbeats, but a bootstrap fails (read-only file
        system, no Nix daemon socket), and its run log says so.
      '';
    };

    bootstrap.path = mkOption {
      type = types.listOf types.package;
      default = [
        config.nix.package
        config.system.build.nixos-rebuild
        pkgs.git
        pkgs.bash
        pkgs.coreutils
        pkgs.gnugrep
        pkgs.gnused
        pkgs.findutils
      ];
      defaultText = literalExpression
        "[ config.nix.package config.system.build.nixos-rebuild pkgs.git pkgs.bash pkgs.coreutils pkgs.gnugrep pkgs.gnused pkgs.findutils ]";
      description = ''
        Packages on the PATH of bootstrap commands (and the agent). The
        agent itself is always on it, so a bootstrap can call
        `castra-agent publish`.
      '';
    };

    heartbeatMs = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      example = 5000;
      description = ''
        Interval between heartbeats in milliseconds. `null` keeps the
        agent's default (the broker's documented heartbeat interval).
      '';
    };
  };

  config = mkIf cfg.enable {
    # The token arrives by fw_cfg; without this module (or the driver built
    # in) the default tokenFile does not exist and the broker refuses the agent.
    boot.kernelModules = [ "qemu_fw_cfg" ];

    systemd.services.castra-agent = {
      description = "castra guest agent (bus session with the host's castra broker)";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" "systemd-modules-load.service" ];
      # A bootstrap may be `nixos-rebuild switch`, run by this very service:
      # restarting it mid-switch would kill the switch. A changed agent takes
      # effect on the next boot (castra relaunches guests, not services).
      restartIfChanged = false;
      # The agent reconnects by itself; it exits only on a configuration
      # error, so systemd's start rate limit is what stops a broken setup.
      path = [ cfg.package ] ++ optionals cfg.bootstrap.enable cfg.bootstrap.path;
      serviceConfig = mkMerge [
        {
          ExecStart = lib.escapeShellArgs args;
          Restart = "always";
          RestartSec = 2;
          # Root: the fw_cfg token file is 0400 root, and bootstraps provision
          # the system (nixos-rebuild switch needs all of root).
          User = "root";
          # Bootstraps run in the agent's process group; a stop kills them too.
          KillMode = "control-group";
        }
        # Without bootstraps the agent only needs the network and the token.
        (optionalAttrs (!cfg.bootstrap.enable) {
          CapabilityBoundingSet = "";
          NoNewPrivileges = true;
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          RestrictAddressFamilies = [ "AF_INET" "AF_INET6" ];
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          LockPersonality = true;
          MemoryDenyWriteExecute = true;
          SystemCallArchitectures = "native";
          SystemCallFilter = [ "@system-service" "~@privileged" ];
          UMask = "0077";
        })
      ];
    };
  };
}
