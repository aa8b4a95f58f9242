# The flake the NixOS VM test's guest bootstraps from (`nix run`). No
# inputs, so it works offline. The app is a derivation that copies the
# flake's own script into the store with the guest's tools (the test guest
# builds without the sandbox, so /bin/sh and /run/current-system are there);
# a plain `program = "${self}/app.sh"` trips older Nix (2.8 asserts on a
# source path where it expects a derivation output).
{
  outputs = { self }: {
    apps.x86_64-linux.default = {
      type = "app";
      program = "${derivation {
        name = "castra-flake-app";
        system = "x86_64-linux";
        builder = "/bin/sh";
        args = [ "-c" ''
          PATH=/run/current-system/sw/bin:/usr/bin:/bin
          mkdir -p $out/bin && cp ${self}/app.sh $out/bin/app && chmod +x $out/bin/app
        '' ];
      }}/bin/app";
    };
  };
}
