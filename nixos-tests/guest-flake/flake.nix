# The flake the NixOS VM test's guest bootstraps from (`nix run`). No
# inputs, so it works offline: the app is a script of the flake itself,
# which `nix run` copies into the guest's store and runs.
{
  outputs = { self }: {
    apps.x86_64-linux.default = {
      type = "app";
      program = "${self}/app.sh";
    };
  };
}
