# Offline test of nix/castra-toml.nix (builtins only). Evaluates to `true`
# or throws naming the case that failed. Run by scripts/check-nix.sh.
let
  toToml = import ../castra-toml.nix;
  expect = name: got: want:
    if got == want then true
    else throw "castra-toml ${name}: got\n${got}\nwant\n${want}";
  fails = name: v:
    if (builtins.tryEval (builtins.deepSeq v v)).success
    then throw "castra-toml ${name}: expected an error" else true;
  cases = [
    (expect "full project"
      (toToml {
        project = { name = "demo"; state_dir = ".castra"; };
        vms = [
          { name = "web"; cpus = 2; memory = "512M"; forwards = [ "8080:80" "udp:5353:53" ]; count = 2; }
          { name = "nixos"; machine = "q35"; image = { kernel = "/nix/store/x/kernel"; initrd = "/nix/store/x/initrd"; cmdline = "init=/nix/store/y/init console=ttyS0"; }; }
        ];
        broker = { port = 7750; allow_tokenless_handshake = false; };
        lifecycle = { powerdown_wait = "20s"; sigterm_wait = "5s"; };
      })
      ''
        [project]
        name = "demo"
        state_dir = ".castra"

        [[vms]]
        count = 2
        cpus = 2
        forwards = ["8080:80", "udp:5353:53"]
        memory = "512M"
        name = "web"

        [[vms]]
        image = { cmdline = "init=/nix/store/y/init console=ttyS0", initrd = "/nix/store/x/initrd", kernel = "/nix/store/x/kernel" }
        machine = "q35"
        name = "nixos"

        [broker]
        allow_tokenless_handshake = false
        port = 7750

        [lifecycle]
        powerdown_wait = "20s"
        sigterm_wait = "5s"
      '')
    (expect "escapes" (toToml { project.name = "a\"b\\c\nd"; }) "[project]\nname = \"a\\\"b\\\\c\\nd\"\n")
    (expect "quoted key" (toToml { vms = [ { "odd key" = true; } ]; }) "[[vms]]\n\"odd key\" = true\n")
    (expect "empty" (toToml { }) "")
    (fails "unknown section" (toToml { vm = [ ]; }))
    (fails "float value" (toToml { project.x = 1.5; }))
  ];
in
builtins.all (x: x) cases
