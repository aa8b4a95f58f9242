# A NixOS guest for castra, booted by direct kernel boot: the whole system
# lives in the initrd (the Nix store as a squashfs, as NixOS netboot images
# do), so the VM needs no disk, and every boot starts from the same state.
#
# `guestModule` is the NixOS configuration (a module); `image` turns an
# evaluated system into the directory `packages.guest-image` is:
#
#   kernel              the bzImage
#   initrd              stage-1 initrd + the squashfs'd Nix store
#   cmdline             init=<system>/init and the kernel parameters
#   castra-image.toml   a [[vms]] snippet pointing at the three above
#
# castra appends `castra.vm=<name> castra.broker_port=<port>` (and, under
# TCG, the guest clock arguments) to `cmdline`; the agent service
# (guest/nixos-module.nix) reads them back.
{
  guestModule = { config, lib, pkgs, modulesPath, ... }: {
    imports = [
      (modulesPath + "/installer/netboot/netboot.nix")
      (modulesPath + "/profiles/minimal.nix")
      (modulesPath + "/profiles/qemu-guest.nix")
    ];

    services.castra-agent.enable = true;

    networking.hostName = lib.mkDefault "castra-guest";
    # QEMU user-mode networking (what castra gives every VM): a fixed address
    # is up at once, where DHCP would cost seconds under TCG.
    networking.usePredictableInterfaceNames = false;
    networking.useDHCP = false;
    networking.interfaces.eth0.ipv4.addresses = [ { address = "10.0.2.15"; prefixLength = 24; } ];
    networking.defaultGateway = { address = "10.0.2.2"; interface = "eth0"; };
    networking.nameservers = [ "10.0.2.3" ];
    networking.firewall.enable = false;

    # castra's VMs: q35 (virtio-pci) or microvm (virtio-mmio), serial console
    # on ttyS0 (castra writes it to <state>/vms/<name>/serial.log).
    boot.initrd.availableKernelModules = [ "virtio_pci" "virtio_mmio" "virtio_net" "virtio_blk" ];
    boot.kernelParams = [ "console=ttyS0" "panic=-1" ];
    # Emulated serial output costs time under TCG; keep the console short.
    boot.consoleLogLevel = 3;
    boot.initrd.verbose = false;

    # `castra down` presses the ACPI power button (QMP system_powerdown);
    # systemd-logind's default for the power key is poweroff, which is what
    # castra waits for before falling back to SIGTERM.

    documentation.enable = false;
    system.stateVersion = lib.mkDefault "25.11";
  };

  # The directory castra.toml points at. `toToml` is nix/castra-toml.nix.
  image = { pkgs, system, toToml }:
    let
      cfg = system.config;
      kernel = "${cfg.system.build.kernel}/${cfg.system.boot.loader.kernelFile}";
      initrd = "${cfg.system.build.netbootRamdisk}/initrd";
      cmdline = "init=${cfg.system.build.toplevel}/init ${toString cfg.boot.kernelParams}";
      out = builtins.placeholder "out";
      snippet = toToml {
        vms = [{
          name = "nixos";
          machine = "q35";
          memory = "1536M";
          image = { kernel = "${out}/kernel"; initrd = "${out}/initrd"; inherit cmdline; };
        }];
      };
    in
    pkgs.runCommand "castra-guest-image" {
      inherit kernel initrd cmdline snippet;
      passAsFile = [ "snippet" ];
      passthru = { inherit system cmdline; toplevel = cfg.system.build.toplevel; };
      meta.description = "NixOS guest for castra (direct kernel boot: kernel, initrd, cmdline)";
    } ''
      mkdir -p $out
      ln -s "$kernel" $out/kernel
      ln -s "$initrd" $out/initrd
      printf '%s' "$cmdline" > $out/cmdline
      cp "$snippetPath" $out/castra-image.toml
    '';
}
