# The NixOS VM tests, as an attribute set of derivations for the flake's
# `checks` (`nix flake check` runs them; `nix build .#checks.x86_64-linux.<name>`
# runs one). Each file is one scenario; each user story in it is a subtest.
args@{ pkgs, castra, guestImage, toToml, accel ? "auto" }:
{
  nixos-apply-status-down = import ./apply-status-down.nix args;
}
