//! castra's exit codes, as every command returns them and `--help` lists them (with the
//! environment variables the CLI reads).

pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_CHANGES_PENDING: u8 = 2;

pub const EXIT_CODES: &str = "\
Exit codes:
  0  success (for `plan`: no changes)
  1  error, or `apply` did not converge
  2  `plan` only: changes pending (like `terraform plan -detailed-exitcode`)
  `exec`, `shell`: the command's code; 125 when castra itself failed (see `castra exec --help`)

Environment:
  CASTRA_CONFIG     path of castra.toml (same as --config)
  CASTRA_ACCEL      auto|kvm|tcg: overrides every VM's `accel`
  CASTRA_CACHE_DIR  where the default guest image is cached (default ~/.cache/castra)
  CASTRA_QEMU       QEMU binary (default qemu-system-x86_64)";
