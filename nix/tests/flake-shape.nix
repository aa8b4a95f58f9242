# Offline checks of flake.nix and flake.lock: the input and the lock agree
# and the lock is well formed (builtins only). With `lib` (a nixpkgs lib
# directory, imported), also evaluates `outputs` against a nixpkgs whose
# package sets are never forced, and checks the names of every output the
# docs promise. Package builds need the real nixpkgs; this checks wiring.
#   nix-instantiate --eval --strict nix/tests/flake-shape.nix [--arg lib 'import .../lib']
# Evaluates to `true` or throws.
{ lib ? null }:
let
  flake = import ../../flake.nix;
  lock = builtins.fromJSON (builtins.readFile ../../flake.lock);
  node = lock.nodes.nixpkgs;
  check = name: ok: if ok then true else throw "flake-shape: ${name}";
  eq = name: got: want: check "${name}: got ${builtins.toJSON got}, want ${builtins.toJSON want}" (got == want);

  url = flake.inputs.nixpkgs.url;
  parts = builtins.match "github:([^/]+)/([^/]+)/(.+)" url;

  # Outputs against a nixpkgs that has the real lib and nothing else.
  stubNixpkgs = {
    inherit lib;
    legacyPackages = throw "flake-shape: package sets are not available offline";
    outPath = "/nonexistent-nixpkgs";
  };
  outputs = flake.outputs { self = outputs; nixpkgs = stubNixpkgs; };
  names = builtins.attrNames;
  x86 = "x86_64-linux";
in
builtins.all (x: x) ([
  (check "description" (builtins.isString flake.description))
  (eq "inputs" (names flake.inputs) [ "nixpkgs" ])
  (eq "outputs arguments" (builtins.functionArgs flake.outputs) { self = false; nixpkgs = false; })
  (check "nixpkgs url is github:owner/repo/ref" (parts != null))
  (eq "lock version" lock.version 7)
  (eq "lock root" lock.nodes.${lock.root}.inputs { nixpkgs = "nixpkgs"; })
  (eq "lock original = flake input"
    [ node.original.type node.original.owner node.original.repo node.original.ref ]
    ([ "github" ] ++ parts))
  (check "locked rev is 40 hex digits" (builtins.match "[0-9a-f]{40}" node.locked.rev != null))
  (check "narHash is SRI sha256" (builtins.match "sha256-[A-Za-z0-9+/]{43}=" node.locked.narHash != null))
  (check "locked names the same repository" (node.locked.owner == node.original.owner && node.locked.repo == node.original.repo))
  (check "lastModified is a timestamp" (builtins.isInt node.locked.lastModified && node.locked.lastModified > 1700000000))
] ++ (if lib == null then [ ] else [
  (eq "top-level outputs" (names outputs)
    [ "apps" "checks" "devShells" "lib" "nixosConfigurations" "nixosModules" "packages" ])
  (eq "systems" (names outputs.packages) [ "aarch64-linux" "x86_64-linux" ])
  (eq "x86_64 packages" (names outputs.packages.${x86}) [ "castra" "castra-agent" "default" "guest-image" ])
  (eq "aarch64 packages" (names outputs.packages.aarch64-linux) [ "castra" "castra-agent" "default" ])
  (eq "apps" (names outputs.apps.${x86}) [ "default" ])
  (eq "app type" outputs.apps.${x86}.default.type "app")
  (eq "x86_64 checks" (names outputs.checks.${x86})
    [ "agent" "clippy" "fmt" "nix-files" "nixos-guest-stories" "package" ])
  (eq "devShells" (names outputs.devShells.${x86}) [ "default" ])
  (eq "nixosModules" (names outputs.nixosModules) [ "default" "guest" ])
  (check "nixosModules.guest is a module function" (builtins.isFunction outputs.nixosModules.guest))
  (eq "lib.toToml renders" (outputs.lib.toToml { broker.port = 1; }) "[broker]\nport = 1\n")
]))
