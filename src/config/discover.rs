//! Finding `castra.toml`: walk up from a directory to the first one holding
//! the file, as git finds `.git`. Only `metadata` calls; never reads the file.

use std::path::{Path, PathBuf};

pub const CONFIG_FILE_NAME: &str = "castra.toml";

/// The nearest `castra.toml` in `start` or one of its ancestors. A directory
/// named `castra.toml` does not count. `start` may be relative; the result
/// is then relative too (`start` joined with the file name).
pub fn discover(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(CONFIG_FILE_NAME))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn walks_up_to_the_nearest_config() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let deep = root.join("a/b/c");
        fs::create_dir_all(&deep).unwrap();

        // Nothing inside the temp dir yet (a stray config above it, outside
        // this test's control, may still be found).
        let outside = |found: Option<PathBuf>| found.is_none_or(|p| !p.starts_with(root));
        assert!(outside(discover(&deep)), "no config in the temp dir yet");

        fs::write(root.join(CONFIG_FILE_NAME), "").unwrap();
        assert_eq!(discover(&deep), Some(root.join(CONFIG_FILE_NAME)));
        assert_eq!(discover(root), Some(root.join(CONFIG_FILE_NAME)));

        // The nearest one wins.
        fs::write(root.join("a/b").join(CONFIG_FILE_NAME), "").unwrap();
        assert_eq!(
            discover(&deep),
            Some(root.join("a/b").join(CONFIG_FILE_NAME))
        );
        assert_eq!(discover(&root.join("a")), Some(root.join(CONFIG_FILE_NAME)));

        // A directory with the config's name is skipped.
        fs::create_dir(deep.join(CONFIG_FILE_NAME)).unwrap();
        assert_eq!(
            discover(&deep),
            Some(root.join("a/b").join(CONFIG_FILE_NAME))
        );
    }

    #[test]
    fn a_missing_start_directory_still_finds_its_ancestors_config() {
        let tmp = tempfile::tempdir().unwrap();
        let gone = tmp.path().join("does/not/exist");
        assert!(discover(&gone).is_none_or(|p| !p.starts_with(tmp.path())));
        fs::write(tmp.path().join(CONFIG_FILE_NAME), "").unwrap();
        assert_eq!(discover(&gone), Some(tmp.path().join(CONFIG_FILE_NAME)));
    }
}
