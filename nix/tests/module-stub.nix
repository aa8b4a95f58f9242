# Offline test of guest/nixos-module.nix without nixpkgs: the module is
# called with a small stand-in `lib` that records what the module declares
# (options as plain attribute sets, types by name and pattern, `mkIf` as a
# condition/content pair, and `escapeShellArgs` returning its list, so the
# agent's argv can be compared exactly). It checks the module's own logic
# and data: option names, types, defaults, documentation, the patterns of
# the string types (with builtins.match, which is what
# lib.types.strMatching uses) and the command line the service runs. It does
# not check option merging or type enforcement: module-lib.nix does that
# with the real nixpkgs lib when one is available. Evaluates to `true` or
# throws. Run by scripts/check-nix.sh.
let
  stubLib = rec {
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = name: mkOption { type = types.bool; default = false; description = "Whether to enable ${name}."; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    optionals = cond: xs: if cond then xs else [ ];
    optionalAttrs = cond: as: if cond then as else { };
    # The stub merges the way the real one does for disjoint attribute sets.
    mkMerge = builtins.foldl' (a: b: a // b) { };
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    escapeShellArgs = args: args;
    types = {
      bool = { name = "bool"; };
      package = { name = "package"; };
      port = { name = "port"; };
      ints.positive = { name = "positiveInt"; };
      strMatching = pattern: { name = "strMatching"; inherit pattern; };
      nullOr = t: { name = "nullOr"; elemType = t; };
      listOf = t: { name = "listOf"; elemType = t; };
    };
  };

  agent = { outPath = "/nix/store/00000000000000000000000000000000-castra-agent"; };
  pkg = name: { outPath = "/nix/store/00000000000000000000000000000000-${name}"; inherit name; };
  pkgs = builtins.listToAttrs (map (n: { name = n; value = pkg n; }) [ "git" "bash" "coreutils" "gnugrep" "gnused" "findutils" ]);
  nixConfig = { nix.package = pkg "nix"; system.build.nixos-rebuild = pkg "nixos-rebuild"; };

  # Option defaults, one level of nesting (`bootstrap.enable`).
  defaults = opts: builtins.mapAttrs
    (_: o: if (o._type or null) == "option" then o.default or null else defaults o) opts;
  fwCfg = "/sys/firmware/qemu_fw_cfg/by_name/opt/castra/token/raw";

  # The module evaluated against `settings` on top of its own defaults.
  evalWith = settings:
    let
      m = import ../../guest/nixos-module.nix {
        lib = stubLib;
        inherit pkgs;
        config = nixConfig // {
          services.castra-agent = defaults m.options.services.castra-agent // settings;
        };
      };
    in m;

  m = evalWith { enable = true; package = agent; };
  opts = m.options.services.castra-agent;
  service = m.config.content.systemd.services.castra-agent;
  argv = settings: (evalWith ({ enable = true; package = agent; } // settings)).config.content.systemd.services.castra-agent.serviceConfig.ExecStart;

  check = name: ok: if ok then true else throw "module-stub: ${name}";
  eq = name: got: want: check "${name}: got ${builtins.toJSON got}, want ${builtins.toJSON want}" (got == want);
  matches = t: s: builtins.match t.pattern s != null;
  inner = t: if t.name == "nullOr" then t.elemType else t;
in
builtins.all (x: x) ([
  (eq "option names" (builtins.attrNames opts)
    [ "bootstrap" "brokerHost" "brokerPort" "enable" "heartbeatMs" "package" "tokenFile" "vmName" ])
  (eq "bootstrap option names" (builtins.attrNames opts.bootstrap) [ "enable" "path" ])
  (eq "defaults"
    { inherit (builtins.mapAttrs (_: o: o.default or "<none>") opts) vmName brokerHost brokerPort tokenFile heartbeatMs enable package; }
    { vmName = null; brokerHost = "10.0.2.2"; brokerPort = null; tokenFile = fwCfg; heartbeatMs = null; enable = false; package = "<none>"; })
  (eq "types" (builtins.mapAttrs (_: o: o.type.name) (removeAttrs opts [ "bootstrap" ]))
    { enable = "bool"; package = "package"; vmName = "nullOr"; brokerHost = "strMatching"; brokerPort = "nullOr"; tokenFile = "strMatching"; heartbeatMs = "nullOr"; })
  (eq "nullable inner types" (map (n: (inner opts.${n}.type).name) [ "vmName" "brokerPort" "heartbeatMs" ])
    [ "strMatching" "port" "positiveInt" ])
  (check "every option is documented"
    (builtins.all (o: builtins.isString (o.description or null) && builtins.stringLength o.description > 40)
      (builtins.attrValues (removeAttrs opts [ "bootstrap" ]) ++ builtins.attrValues opts.bootstrap)))
  (eq "bootstrap defaults" [ opts.bootstrap.enable.default opts.bootstrap.enable.type.name (map (p: p.name) opts.bootstrap.path.default) ]
    [ true "bool" [ "nix" "nixos-rebuild" "git" "bash" "coreutils" "gnugrep" "gnused" "findutils" ] ])
  (check "package has defaultText" (opts.package ? defaultText))

  # VM names as castra accepts them (docs/CONFIG.md).
  (eq "vmName pattern" (map (matches (inner opts.vmName.type)) [ "web" "web-1" "a" "abcdefghijklmnopqrstuvwxyz012345" "Web" "1web" "web_1" "" "abcdefghijklmnopqrstuvwxyz0123456" ])
    [ true true true true false false false false false ])
  (eq "brokerHost pattern" (map (matches opts.brokerHost.type) [ "10.0.2.2" "127.0.0.1" "::1" "fe80::2" "host.example" "" ])
    [ true true true true false false ])
  (eq "tokenFile pattern" (map (matches opts.tokenFile.type) [ fwCfg "/run/token" "token" "" ])
    [ true true false false ])

  # The service.
  (check "mkIf on enable" (m.config.condition == true && (evalWith { enable = false; }).config.condition == false))
  (eq "fw_cfg module" m.config.content.boot.kernelModules [ "qemu_fw_cfg" ])
  (eq "wantedBy" service.wantedBy [ "multi-user.target" ])
  (eq "restart" service.serviceConfig.Restart "always")
  (eq "not restarted by a switch" service.restartIfChanged false)
  # Bootstraps on (the default): unconfined root, nix and nixos-rebuild on PATH.
  (eq "bootstrap PATH" (map (p: p.name or "agent") service.path)
    [ "agent" "nix" "nixos-rebuild" "git" "bash" "coreutils" "gnugrep" "gnused" "findutils" ])
  (check "bootstrap: no sandbox" (!(service.serviceConfig ? ProtectSystem)))
  # Bootstraps off: the sandbox, and only the agent on PATH.
  (let off = (evalWith { enable = true; package = agent; bootstrap = { enable = false; path = [ ]; }; }).config.content.systemd.services.castra-agent;
   in eq "no bootstrap: sandbox" [ off.serviceConfig.ProtectSystem off.serviceConfig.CapabilityBoundingSet (map (p: p.name or "agent") off.path) ]
     [ "strict" "" [ "agent" ] ])
  (eq "default argv" (argv { })
    [ "${agent}/bin/castra-agent" "--host" "10.0.2.2" "--token-file" fwCfg ])
  (eq "full argv" (argv { vmName = "web"; brokerPort = 7751; brokerHost = "10.0.2.3"; tokenFile = "/run/t"; heartbeatMs = 250; })
    [ "${agent}/bin/castra-agent" "--host" "10.0.2.3" "--token-file" "/run/t" "--vm" "web" "--port" "7751" "--heartbeat-ms" "250" ])
])
