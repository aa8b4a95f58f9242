//! Finding the static `castra-agent` binary that goes into the default image
//! as `/bin/castra-agent`. The guest has no C library, so the agent must be a
//! static executable; a dynamic one is refused with the command that builds
//! the right one.
//!
//! Search order: `--agent PATH`, `$CASTRA_AGENT`, `castra-agent` beside the
//! running castra, then the cargo target directory of a source checkout
//! (`target/x86_64-unknown-linux-gnu/{release,debug}/castra-agent`).

use std::path::{Path, PathBuf};

use super::binary::is_static_elf64;

/// The command that builds the static agent from a source checkout.
pub const BUILD_COMMAND: &str = "RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu --bin castra-agent";

/// Where the agent lives in the guest.
pub const GUEST_PATH: &str = "/bin/castra-agent";

/// Candidate paths, in search order, for a castra binary at `exe`.
pub fn candidates(
    explicit: Option<&Path>,
    env: Option<PathBuf>,
    exe: Option<&Path>,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = env {
        return vec![p];
    }
    if let Some(dir) = exe.and_then(Path::parent) {
        out.push(dir.join("castra-agent"));
        // target/<profile>/castra -> target/x86_64-unknown-linux-gnu/<profile>/castra-agent
        if let Some(target) = dir.parent() {
            for profile in ["release", "debug"] {
                out.push(
                    target
                        .join("x86_64-unknown-linux-gnu")
                        .join(profile)
                        .join("castra-agent"),
                );
            }
        }
    }
    out
}

/// The first candidate that is a static ELF executable, or an error that
/// lists what was tried and how to build one.
pub fn find(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().ok();
    let list = candidates(
        explicit,
        std::env::var_os("CASTRA_AGENT").map(PathBuf::from),
        exe.as_deref(),
    );
    let mut tried = Vec::new();
    for p in &list {
        match std::fs::read(p) {
            Ok(bytes) => match is_static_elf64(&bytes) {
                Some(true) => return Ok(p.clone()),
                Some(false) => tried.push(format!("{} (dynamically linked)", p.display())),
                None => tried.push(format!("{} (not an ELF executable)", p.display())),
            },
            Err(_) => tried.push(format!("{} (missing)", p.display())),
        }
    }
    Err(format!(
        "no static castra-agent for the guest image; tried:\n  {}\nbuild one with:\n  {BUILD_COMMAND}\nor pass --agent PATH (or set CASTRA_AGENT)",
        tried.join("\n  ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_order() {
        let exe = Path::new("/src/castra/target/debug/castra");
        let c = candidates(None, None, Some(exe));
        assert_eq!(
            c,
            [
                "/src/castra/target/debug/castra-agent",
                "/src/castra/target/x86_64-unknown-linux-gnu/release/castra-agent",
                "/src/castra/target/x86_64-unknown-linux-gnu/debug/castra-agent",
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            candidates(Some(Path::new("/a")), Some("/b".into()), Some(exe)),
            [PathBuf::from("/a")]
        );
        assert_eq!(
            candidates(None, Some("/b".into()), Some(exe)),
            [PathBuf::from("/b")]
        );
    }

    #[test]
    fn a_dynamic_binary_is_refused_with_the_build_command() {
        // /bin/sh on Debian is dynamically linked.
        let err = find(Some(Path::new("/bin/sh"))).unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
        assert!(err.contains(BUILD_COMMAND), "{err}");
    }
}
