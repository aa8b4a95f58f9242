# Test of guest/nixos-module.nix with the real nixpkgs `lib` (evalModules,
# option types, merging), without the rest of nixpkgs: the two NixOS options
# the module sets (`boot.kernelModules`, `systemd.services`) are declared
# here as loose stand-ins. Checks that good settings evaluate to the
# expected service and that bad ones are rejected by the option types.
#   nix-instantiate --eval --strict nix/tests/module-lib.nix --arg lib 'import <nixpkgs/lib>'
# scripts/check-nix.sh runs it when CASTRA_NIXPKGS_LIB points at a nixpkgs
# lib directory. Evaluates to `true` or throws.
{ lib }:
let
  stand-ins = {
    options.boot.kernelModules = lib.mkOption { type = lib.types.listOf lib.types.str; default = [ ]; };
    options.systemd.services = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
    options.nix.package = lib.mkOption { type = lib.types.package; default = pkg "nix"; };
    options.system.build = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { nixos-rebuild = pkg "nixos-rebuild"; }; };
    config._module.args.pkgs = builtins.listToAttrs
      (map (n: { name = n; value = pkg n; }) [ "git" "bash" "coreutils" "gnugrep" "gnused" "findutils" ]);
  };
  pkg = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
  agent = {
    type = "derivation";
    name = "castra-agent";
    outPath = "/nix/store/00000000000000000000000000000000-castra-agent";
  };
  fwCfg = "/sys/firmware/qemu_fw_cfg/by_name/opt/castra/token/raw";

  eval = settings: (lib.evalModules {
    modules = [ ../../guest/nixos-module.nix stand-ins { services.castra-agent = settings; } ];
  }).config;
  on = settings: eval ({ enable = true; package = agent; } // settings);
  execStart = settings: (on settings).systemd.services.castra-agent.serviceConfig.ExecStart;

  rejected = name: settings:
    let r = builtins.tryEval (builtins.deepSeq (execStart settings) true);
    in if r.success then throw "module-lib: ${name} was accepted" else true;
  eq = name: got: want:
    if got == want then true
    else throw "module-lib ${name}: got ${builtins.toJSON got}, want ${builtins.toJSON want}";
in
builtins.all (x: x) [
  (eq "disabled: nothing" (let c = eval { }; in [ c.systemd.services c.boot.kernelModules ]) [ { } [ ] ])
  (eq "defaults" (execStart { })
    (lib.escapeShellArgs [ "${agent.outPath}/bin/castra-agent" "--host" "10.0.2.2" "--token-file" fwCfg ]))
  (eq "all set" (execStart { vmName = "web-1"; brokerPort = 7751; heartbeatMs = 1000; })
    (lib.escapeShellArgs [ "${agent.outPath}/bin/castra-agent" "--host" "10.0.2.2" "--token-file" fwCfg "--vm" "web-1" "--port" "7751" "--heartbeat-ms" "1000" ]))
  (eq "kernel module" (on { }).boot.kernelModules [ "qemu_fw_cfg" ])
  (eq "bootstrap on: unconfined, nix on PATH"
    (let svc = (on { }).systemd.services.castra-agent; in [ (svc.serviceConfig ? ProtectSystem) (map (p: p.name) svc.path) svc.restartIfChanged ])
    [ false [ "castra-agent" "nix" "nixos-rebuild" "git" "bash" "coreutils" "gnugrep" "gnused" "findutils" ] false ])
  (eq "bootstrap off: no capabilities"
    (on { bootstrap.enable = false; }).systemd.services.castra-agent.serviceConfig.CapabilityBoundingSet "")
  (rejected "bootstrap.enable as string" { bootstrap.enable = "yes"; })
  (rejected "port 70000" { brokerPort = 70000; })
  (rejected "port as string" { brokerPort = "7750"; })
  (rejected "upper-case VM name" { vmName = "Web"; })
  (rejected "33-character VM name" { vmName = "abcdefghijklmnopqrstuvwxyz0123456"; })
  (rejected "host name as brokerHost" { brokerHost = "host.example"; })
  (rejected "relative tokenFile" { tokenFile = "token"; })
  (rejected "heartbeat 0" { heartbeatMs = 0; })
  (rejected "missing package" { package = null; })
]
