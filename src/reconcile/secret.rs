//! Per-VM secrets: a fresh random token for each launch, written to an
//! owner-only file that QEMU hands to the guest by fw_cfg. The broker reads
//! the same file (`broker::token`). The token never appears in argv, the
//! environment or a log.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Bytes of randomness in a token (hex-encoded in the file).
pub const TOKEN_BYTES: usize = 32;

/// Write a new token to `path` (mode 0600, atomic rename).
pub fn write_new_token(path: &Path) -> Result<(), String> {
    let mut raw = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut raw).map_err(|e| format!("cannot generate a token: {e}"))?;
    let token = hex::encode(raw);
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(token.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
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
