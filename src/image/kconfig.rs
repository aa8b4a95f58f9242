//! The fast kernel's configuration, as text: the fragment kept in the repo
//! (`guest/kernel/castra.config`, applied on top of `make tinyconfig`), the
//! check that every symbol it asks for survived `make allnoconfig` (Kconfig
//! silently drops a symbol whose dependencies are off), and the reading of
//! `make`'s progress lines for the progress display.
//!
//! Pure: strings in, values out. Running `make` is `kernel.rs`'s job.

/// The fragment, as kept in the repo.
pub const FRAGMENT: &str = include_str!("../../guest/kernel/castra.config");

/// One `CONFIG_X=value` line of a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub symbol: String,
    pub value: String,
    /// 1-based line in the fragment.
    pub line: usize,
}

/// A fragment line that is neither a comment, blank, nor `CONFIG_X=value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("guest/kernel/castra.config line {line}: expected CONFIG_NAME=value, found {text:?}")]
pub struct FragmentError {
    pub line: usize,
    pub text: String,
}

/// The settings of a fragment, in order.
pub fn parse_fragment(text: &str) -> Result<Vec<Setting>, FragmentError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || FragmentError {
            line: i + 1,
            text: line.to_string(),
        };
        let (symbol, value) = line.split_once('=').ok_or_else(bad)?;
        let name_ok = symbol.strip_prefix("CONFIG_").is_some_and(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        });
        if !name_ok || value.is_empty() {
            return Err(bad());
        }
        out.push(Setting {
            symbol: symbol.to_string(),
            value: value.to_string(),
            line: i + 1,
        });
    }
    Ok(out)
}

/// The value a `.config` gives `symbol`: `Some("y")`, `Some("64")`, or
/// `Some("n")` for `# CONFIG_X is not set`; `None` when it is absent.
pub fn value_in<'a>(config: &'a str, symbol: &str) -> Option<&'a str> {
    for line in config.lines() {
        if let Some(rest) = line.strip_prefix(symbol)
            && let Some(value) = rest.strip_prefix('=')
        {
            return Some(value);
        }
        if line
            .strip_prefix("# ")
            .and_then(|l| l.strip_prefix(symbol))
            .is_some_and(|rest| rest == " is not set")
        {
            return Some("n");
        }
    }
    None
}

/// The settings whose value `.config` does not have, with what it has
/// instead (`None`: the symbol is not there at all, usually a dependency
/// that is off).
pub fn lost<'a>(settings: &'a [Setting], config: &str) -> Vec<(&'a Setting, Option<String>)> {
    settings
        .iter()
        .filter_map(|s| {
            let have = value_in(config, &s.symbol);
            (have != Some(s.value.as_str())).then(|| (s, have.map(str::to_string)))
        })
        .collect()
}

/// One line of `make`'s short output (`  CC      fs/9p/vfs_file.o`) as
/// (`CC`, `fs/9p/vfs_file.o`); `None` for anything else.
pub fn build_step(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("  ")?;
    let (verb, target) = rest.split_once(' ')?;
    let target = target.trim();
    let verb_ok = !verb.is_empty()
        && verb
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    (verb_ok && !target.is_empty()).then_some((verb, target))
}

/// The progress line: `kernel: compiling 42% (512/1220 steps, 1m50s) CC fs/9p/vfs_file.o`.
/// `expected` is the previous build's step count, if known.
pub fn progress_line(done: usize, expected: Option<usize>, secs: u64, last: &str) -> String {
    let elapsed = format!("{}m{:02}s", secs / 60, secs % 60);
    match expected.filter(|&e| e > 0) {
        Some(e) => format!(
            "kernel: compiling {}% ({done}/{e} steps, {elapsed}) {last}",
            (done * 100 / e).min(99)
        ),
        None => format!("kernel: compiling ({done} steps, {elapsed}) {last}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repo_fragment_parses_and_asks_for_what_the_guest_needs() {
        let settings = parse_fragment(FRAGMENT).unwrap();
        let has = |s: &str| settings.iter().any(|x| x.symbol == s && x.value == "y");
        // The default image's agent and init rely on each of these.
        for s in [
            "CONFIG_PVH",
            "CONFIG_VIRTIO_MMIO",
            "CONFIG_VIRTIO_NET",
            "CONFIG_FW_CFG_SYSFS",
            "CONFIG_DEVTMPFS",
            "CONFIG_UNIX98_PTYS",
            "CONFIG_9P_FS",
            "CONFIG_NET_9P_VIRTIO",
            "CONFIG_BINFMT_SCRIPT",
            "CONFIG_EPOLL",
            "CONFIG_ACPI_BUTTON",
            "CONFIG_INPUT_EVDEV",
        ] {
            assert!(has(s), "{s}=y missing from guest/kernel/castra.config");
        }
        // Nothing is a module: the image has no module loader.
        assert!(settings.iter().all(|s| s.value != "m"));
    }

    #[test]
    fn bad_fragment_lines_are_named() {
        let err = parse_fragment("# ok\nCONFIG_A=y\nVIRTIO=y\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest/kernel/castra.config line 3: expected CONFIG_NAME=value, found \"VIRTIO=y\""
        );
        assert!(parse_fragment("CONFIG_A=\n").is_err());
        assert!(parse_fragment("CONFIG_a=y\n").is_err());
    }

    #[test]
    fn lost_settings_say_what_the_config_has_instead() {
        let settings = parse_fragment("CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=64\nCONFIG_D=y\n").unwrap();
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=64\nCONFIG_AB=y\n";
        let lost: Vec<_> = lost(&settings, config)
            .into_iter()
            .map(|(s, have)| (s.symbol.as_str(), have))
            .collect();
        assert_eq!(
            lost,
            vec![("CONFIG_B", Some("n".into())), ("CONFIG_D", None)]
        );
        // A longer name sharing the prefix is not the symbol.
        assert_eq!(value_in("CONFIG_AB=y\n", "CONFIG_A"), None);
    }

    #[test]
    fn make_step_lines() {
        assert_eq!(
            build_step("  CC      fs/9p/vfs_file.o"),
            Some(("CC", "fs/9p/vfs_file.o"))
        );
        assert_eq!(build_step("  LD      vmlinux.o"), Some(("LD", "vmlinux.o")));
        assert_eq!(build_step("make[1]: Entering directory"), None);
        assert_eq!(build_step("  warning: x"), None);
        assert_eq!(build_step("CC fs/x.o"), None);
    }

    #[test]
    fn progress_lines() {
        assert_eq!(
            progress_line(512, Some(1024), 110, "CC fs/x.o"),
            "kernel: compiling 50% (512/1024 steps, 1m50s) CC fs/x.o"
        );
        // Never claims 100% before make is done.
        assert!(progress_line(2000, Some(1000), 5, "LD vmlinux").contains(" 99% "));
        assert_eq!(
            progress_line(7, None, 3, "CC a.o"),
            "kernel: compiling (7 steps, 0m03s) CC a.o"
        );
    }
}
