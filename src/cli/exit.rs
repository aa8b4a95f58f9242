//! castra's exit codes, as every command returns them and `--help` lists them (with the
//! environment variables the CLI reads).

pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_CHANGES_PENDING: u8 = 2;

pub const EXIT_CODES: &str = "\
Exit codes:
  0  success (for `plan`: no changes)
  1  error, `apply` did not converge, or a command line castra cannot parse
  2  `plan` only: changes pending (like `terraform plan -detailed-exitcode`)
  `exec`, `shell`: the command's code; 125 when castra itself failed or could not
     parse the command line (see `castra exec --help`); `cp`: 0, 1, or 125 likewise

Environment:
  CASTRA_CONFIG     path of castra.toml (same as --config)
  CASTRA_ACCEL      auto|kvm|tcg: overrides every VM's `accel`
  CASTRA_CACHE_DIR  where the default guest image is cached (default ~/.cache/castra)
  CASTRA_QEMU       QEMU binary (default qemu-system-x86_64)";

/// The exit code of a command line clap refused. Not 2, which `plan` uses for
/// "changes pending": 1, or 125 for the commands whose exit code is the guest
/// command's (`exec`, `shell`, `cp`), so that a typo is never mistaken for the
/// command's own failure. `args` excludes the program name.
pub fn usage_error_code(args: &[std::ffi::OsString]) -> u8 {
    match subcommand_of(args) {
        Some("exec" | "shell" | "cp") => 125,
        _ => EXIT_ERROR,
    }
}

/// The first word of `args` that is not a global option or its value.
fn subcommand_of(args: &[std::ffi::OsString]) -> Option<&str> {
    let mut words = args.iter().map(|a| a.to_str().unwrap_or(""));
    while let Some(word) = words.next() {
        match word {
            "-c" | "--config" => {
                words.next();
            }
            w if w.starts_with('-') => {}
            w => return Some(w),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> u8 {
        let args: Vec<_> = line.split_whitespace().map(Into::into).collect();
        usage_error_code(&args)
    }

    #[test]
    fn stream_commands_refuse_with_125_and_the_rest_with_1() {
        assert_eq!(code("exec --bogus web -- true"), 125);
        assert_eq!(code("-c x/castra.toml exec"), 125);
        assert_eq!(code("--config=castra.toml shell"), 125);
        assert_eq!(code("cp -r"), 125);
        assert_eq!(code("plan --bogus"), EXIT_ERROR);
        assert_eq!(code("-c exec plan --bogus"), EXIT_ERROR);
        assert_eq!(code("--bogus"), EXIT_ERROR);
        assert_eq!(code(""), EXIT_ERROR);
    }
}
