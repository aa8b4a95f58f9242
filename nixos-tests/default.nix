# The NixOS VM tests, as an attribute set of derivations for the flake's
# `checks` (`nix flake check` runs them; `nix build .#checks.x86_64-linux.<name>`
# runs one). Each file is one scenario booting its guest once; each user story
# in it is a subtest. `mkGuestImage modules` is the flake's guest image with
# extra NixOS modules (a test's own services and files).
args@{ pkgs, castra, mkGuestImage, toToml, accel ? "auto" }:
{
  nixos-guest-stories = import ./guest-stories.nix args;
}
