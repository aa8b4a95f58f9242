//! Per-VM secrets on the broker side: the constant-time comparison, and
//! reading `<state_root>/vms/<vm>/token` (its content, whitespace trimmed, is
//! the secret; the file existing is what makes a VM known). Generating and
//! handing tokens to QEMU is the launcher's job, not this module's.

use std::io;
use std::path::Path;

/// What the broker knows about a VM name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLookup {
    /// The VM is known; its secret.
    Known(String),
    /// No token file: not a VM of this project (or not launched yet).
    Unknown,
    /// A token file exists but could not be read (the text says why).
    Unreadable(String),
}

/// Compare a given token with the expected one in time that depends only on
/// their lengths, never on where they first differ.
pub fn tokens_match(expected: &[u8], given: &[u8]) -> bool {
    let mut diff: usize = expected.len() ^ given.len();
    for (i, &e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!e);
        diff |= usize::from(e ^ g);
    }
    std::hint::black_box(diff) == 0
}

/// Read a token file (whitespace trimmed); `None` when absent, unreadable or empty. The
/// one reader of the format for the guest agent (its fw_cfg file) and the host (a VM's
/// `token` file in the state root).
pub fn read_token(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

/// Read a token file. `NotFound` (of the file or its directory) is `Unknown`.
pub fn read_token_file(path: &Path) -> TokenLookup {
    match std::fs::read_to_string(path) {
        Ok(text) => TokenLookup::Known(text.trim().to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => TokenLookup::Unknown,
        Err(e) => TokenLookup::Unreadable(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("s3cret", "s3cret", true),
            ("s3cret", "s3creT", false),
            ("s3cret", "S3cret", false),
            ("s3cret", "s3cre", false),
            ("s3cret", "s3crett", false),
            ("s3cret", "", false),
            ("", "", true),
            ("\u{0}", "", false),
            ("ab", "a\u{0}", false),
        ];
        for (expected, given, want) in cases {
            assert_eq!(
                tokens_match(expected.as_bytes(), given.as_bytes()),
                *want,
                "{expected:?} vs {given:?}"
            );
        }
    }

    #[test]
    fn token_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        assert_eq!(read_token_file(&path), TokenLookup::Unknown);
        assert_eq!(
            read_token_file(&dir.path().join("missing-dir/token")),
            TokenLookup::Unknown
        );
        std::fs::write(&path, "  abc123\n").unwrap();
        assert_eq!(read_token_file(&path), TokenLookup::Known("abc123".into()));
        // A directory where the file should be is unreadable, not unknown.
        let bad = dir.path().join("dir-token");
        std::fs::create_dir(&bad).unwrap();
        assert!(matches!(read_token_file(&bad), TokenLookup::Unreadable(_)));
    }

    #[test]
    fn trimmed_tokens_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw");
        assert_eq!(read_token(&path), None);
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(read_token(&path), None);
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(read_token(&path).as_deref(), Some("abc"));
    }
}
