//! castra's per-user cache directory (default guest images, the KVM probe's
//! verdict): the one place that decides where it is. `$CASTRA_CACHE_DIR`,
//! else `$XDG_CACHE_HOME/castra`, else `$HOME/.cache/castra`, else (no
//! `HOME`, as under some service managers and in bare CI roots) the home the
//! user database gives this uid, else `<temp dir>/castra-cache-<uid>`. Empty
//! variables count as unset. It creates nothing.

use std::ffi::OsString;
use std::path::PathBuf;

/// The cache directory for this process's environment and user.
pub fn root() -> PathBuf {
    root_with(&|k| std::env::var_os(k), &user_home)
}

/// [`root`] with the environment and the user database passed in.
pub fn root_with(
    var: &dyn Fn(&str) -> Option<OsString>,
    user_home: &dyn Fn() -> Option<PathBuf>,
) -> PathBuf {
    let env = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = env("CASTRA_CACHE_DIR") {
        return dir;
    }
    if let Some(dir) = env("XDG_CACHE_HOME") {
        return dir.join("castra");
    }
    match env("HOME").or_else(user_home) {
        Some(home) => home.join(".cache").join("castra"),
        None => std::env::temp_dir().join(format!("castra-cache-{}", nix::unistd::getuid())),
    }
}

/// This uid's home directory from the user database (`/etc/passwd`).
fn user_home() -> Option<PathBuf> {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid()).ok()??;
    Some(user.dir).filter(|d| !d.as_os_str().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_of(vars: &[(&str, &str)], home: Option<&str>) -> PathBuf {
        let var = |k: &str| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| OsString::from(v))
        };
        root_with(&var, &|| home.map(PathBuf::from))
    }

    #[test]
    fn castra_then_xdg_then_home_then_the_user_database_then_temp() {
        let all = [
            ("CASTRA_CACHE_DIR", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(root_of(&all, Some("/pw")), PathBuf::from("/c"));
        assert_eq!(root_of(&all[1..], Some("/pw")), PathBuf::from("/x/castra"));
        assert_eq!(
            root_of(&all[2..], Some("/pw")),
            PathBuf::from("/h/.cache/castra")
        );
        // Empty is unset.
        assert_eq!(
            root_of(&[("CASTRA_CACHE_DIR", ""), ("HOME", "/h")], None),
            PathBuf::from("/h/.cache/castra")
        );
        // HOME unset: the user's home from the user database.
        assert_eq!(
            root_of(&[], Some("/pw")),
            PathBuf::from("/pw/.cache/castra")
        );
        // Nothing at all: a per-uid directory under the temp dir, never `/`.
        let last = root_of(&[], None);
        assert!(last.starts_with(std::env::temp_dir()), "{}", last.display());
        assert!(
            last.ends_with(format!("castra-cache-{}", nix::unistd::getuid())),
            "{}",
            last.display()
        );
    }

    #[test]
    fn this_user_has_a_home_in_the_user_database() {
        assert!(user_home().is_some_and(|h| h.is_absolute()));
    }
}
