# The castra crate built with nixpkgs' rustPlatform (Cargo.lock vendored by
# `cargoLock.lockFile`, no hash to maintain). Two flavours from one recipe:
#
# - `castra` (default): the CLI, wrapped so QEMU is on its PATH (after the
#   user's own, so a QEMU you install wins); the check phase runs the library
#   unit tests and the CLI tests (tests/cli.rs: the real binary, no VM).
# - `agentOnly = true`: only the `castra-agent` guest binary, no checks
#   (the same tests ran in the default package). Called from `pkgsStatic`
#   by the flake, so it is a static musl binary.
#
# The integration tests under tests/ that boot real QEMU guests (e2e_apply,
# image_boot, qemu_process, broker) are not run here: the sandbox has no KVM
# and the default image needs apt-get. The NixOS VM tests (nixos-tests/)
# cover apply/status/down end to end instead.
{ lib
, rustPlatform
, rustc
, makeWrapper
, installShellFiles
, stdenv
, qemu_kvm
, agentOnly ? false
}:
let
  # notify-types 2.3 declares rust-version 1.91; the crate uses edition 2024
  # and let-chains (1.88). Fail at evaluation with a useful message rather
  # than deep inside cargo.
  minRust = "1.91";
  fs = lib.fileset;
in
assert lib.assertMsg (lib.versionAtLeast rustc.version minRust) ''
  castra needs rustc >= ${minRust}; this nixpkgs has ${rustc.version}.
  Update the flake's nixpkgs input (`nix flake update`) or follow a newer
  release branch in flake.nix.'';
rustPlatform.buildRustPackage {
  pname = if agentOnly then "castra-agent" else "castra";
  version = (lib.importTOML ../Cargo.toml).package.version;

  # What cargo needs and nothing else, so editing docs/NIX.md or a .nix file
  # does not rebuild castra. docs/ stays: a test include_str!s
  # docs/CONFIG.md; guest/ holds the scripts the image builder include_str!s;
  # the insta .snap files live under src/.
  src = fs.toSource {
    root = ../.;
    fileset = fs.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../tests
      ../benches
      ../docs
      ../guest/init.sh
      ../guest/handshake.sh
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = lib.optionals agentOnly [ "--bin" "castra-agent" ];

  nativeBuildInputs = lib.optionals (!agentOnly) [ makeWrapper installShellFiles ];

  doCheck = !agentOnly;
  # The accelerator-probe unit tests boot a tiny stub kernel under TCG.
  nativeCheckInputs = lib.optionals (!agentOnly) [ qemu_kvm ];
  # Unit tests (src/**) and the CLI tests; never rewrite snapshots.
  cargoTestFlags = [ "--lib" "--test" "cli" ];
  INSTA_UPDATE = "no";
  CI = "true";
  checkFlags = [
    # Asserts that /bin/sh is a dynamic executable (true on Debian); the
    # Nix sandbox's /bin/sh is a static busybox.
    "--skip" "image::binary::tests::real_binaries_on_this_host"
  ];

  # Completions and man pages come from the binary itself (`castra
  # completions`, `castra man`), so they cannot fall behind the CLI; skipped
  # when cross-compiling, where the binary cannot run on the build machine.
  postInstall = lib.optionalString (!agentOnly && stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    installShellCompletion --cmd castra \
      --bash <($out/bin/castra completions bash) \
      --zsh <($out/bin/castra completions zsh) \
      --fish <($out/bin/castra completions fish)
    $out/bin/castra man --out man
    installManPage man/*.1
  '' + lib.optionalString (!agentOnly) ''
    wrapProgram $out/bin/castra --suffix PATH : ${lib.makeBinPath [ qemu_kvm ]}
  '';

  meta = {
    description =
      if agentOnly then "castra's guest agent (bus session with the host broker)"
      else "Declare a project's QEMU VMs in castra.toml and converge them";
    mainProgram = if agentOnly then "castra-agent" else "castra";
    platforms = lib.platforms.linux;
  };
}
