//! Per-VM secrets: a fresh random token for each launch, written to an
//! owner-only file that QEMU hands to the guest by fw_cfg. The broker reads
//! the same file (`broker::token`). The token never appears in argv, the
//! environment or a log.

use std::path::{Path, PathBuf};

use crate::fsutil::write_atomic_private;

/// Bytes of randomness in a token (hex-encoded in the file).
pub const TOKEN_BYTES: usize = 32;

/// A token that could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot generate a token: {0}")]
    Random(getrandom::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Write a new token to `path` (mode 0600, atomic: `fsutil::write_atomic_private`).
pub fn write_new_token(path: &Path) -> Result<(), TokenError> {
    let mut raw = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut raw).map_err(TokenError::Random)?;
    let token = hex::encode(raw);
    write_atomic_private(path, token.as_bytes()).map_err(|source| TokenError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_are_private_fresh_and_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_new_token(&path).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first.len(), TOKEN_BYTES * 2);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        write_new_token(&path).unwrap();
        assert_ne!(std::fs::read_to_string(&path).unwrap(), first);
    }
}
