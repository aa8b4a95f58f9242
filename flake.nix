{
  description = "castra: declare a project's QEMU VMs in castra.toml and converge them";

  # One input. nixos-25.11 rather than an older release: the crate needs
  # rustc >= 1.91 (nix/package.nix checks it and says so at evaluation).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      # QEMU guests with direct kernel boot and the NixOS VM tests: Linux only.
      # The VM tests need x86_64 (the guest image and castra's QEMU are x86_64).
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});

      toToml = import ./nix/castra-toml.nix;
      guest = import ./nix/guest-image.nix;

      guestSystem = system: extraModules: nixpkgs.lib.nixosSystem {
        inherit system;
        modules = [ self.nixosModules.guest guest.guestModule ] ++ extraModules;
      };
      mkGuestImage = system: pkgs: extraModules:
        guest.image { inherit pkgs toToml; system = guestSystem system extraModules; };
    in
    {
      lib = { inherit toToml; };

      packages = forAllSystems (system: pkgs: {
        castra = pkgs.callPackage ./nix/package.nix { };
        default = self.packages.${system}.castra;
        castra-agent = pkgs.pkgsStatic.callPackage ./nix/package.nix { agentOnly = true; };
      } // nixpkgs.lib.optionalAttrs (system == "x86_64-linux") {
        guest-image = mkGuestImage system pkgs [ ];
      });

      apps = forAllSystems (system: pkgs: {
        default = {
          type = "app";
          program = nixpkgs.lib.getExe self.packages.${system}.castra;
        };
      });

      # `services.castra-agent`, with `package` defaulting to this flake's
      # static agent for the guest's platform.
      nixosModules.guest = { lib, pkgs, ... }: {
        imports = [ ./guest/nixos-module.nix ];
        services.castra-agent.package =
          lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.castra-agent;
      };
      nixosModules.default = self.nixosModules.guest;

      # A NixOS configuration for the guest image, for `nixos-rebuild build-vm`
      # style inspection (`nix eval .#nixosConfigurations.castra-guest.config...`).
      nixosConfigurations.castra-guest = guestSystem "x86_64-linux" [ ];

      checks = forAllSystems (system: pkgs:
        let
          castra = self.packages.${system}.castra;
          cargoChecks = castra.overrideAttrs (old: {
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy pkgs.rustfmt ];
          });
        in
        {
          # Build + `cargo test --lib --test cli` (INSTA_UPDATE=no).
          package = castra;
          agent = self.packages.${system}.castra-agent;

          clippy = cargoChecks.overrideAttrs (_: {
            pname = "castra-clippy";
            doCheck = false;
            buildPhase = ''
              runHook preBuild
              cargo clippy --offline --frozen --all-targets -- -D warnings
              runHook postBuild
            '';
            installPhase = "touch $out";
            dontFixup = true;
          });

          # rustfmt directly (cargo fmt would want the dependency graph);
          # edition from Cargo.toml.
          fmt = pkgs.runCommand "castra-fmt" { nativeBuildInputs = [ pkgs.rustfmt pkgs.findutils ]; } ''
            cd ${castra.src}
            find src tests benches -name '*.rs' -print0 \
              | xargs -0 rustfmt --check --edition ${(nixpkgs.lib.importTOML ./Cargo.toml).package.edition}
            touch $out
          '';

          # Offline checks of the Nix files themselves (what CI runs with
          # Debian's nix-bin, here with this flake's nixpkgs lib).
          nix-files = pkgs.runCommand "castra-nix-files"
            { nativeBuildInputs = [ pkgs.nix pkgs.python3 ]; src = self; } ''
            export HOME=$TMPDIR NIX_STATE_DIR=$TMPDIR/nix NIX_LOG_DIR=$TMPDIR/log
            cd $src
            CASTRA_NIXPKGS_LIB=${nixpkgs}/lib CASTRA_CHECK_NIX_NO_CASTRA=1 bash scripts/check-nix.sh
            touch $out
          '';
        } // nixpkgs.lib.optionalAttrs (system == "x86_64-linux") (import ./nixos-tests {
          inherit pkgs castra toToml;
          mkGuestImage = mkGuestImage system pkgs;
        }));

      devShells = forAllSystems (system: pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${system}.castra ];
          packages = [ pkgs.clippy pkgs.rustfmt pkgs.rust-analyzer pkgs.qemu_kvm pkgs.jq ];
          INSTA_UPDATE = "no";
        };
      });
    };
}
