//! Clear messages for the file system errors a copy meets, on either end: what went
//! wrong, in words, with the path it happened to.

use std::io;
use std::path::Path;

/// A clear message for a file system error on `path`.
pub fn describe(path: &Path, e: &io::Error) -> String {
    let what = match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        io::ErrorKind::StorageFull => "no space left on device".to_owned(),
        _ => e.to_string(),
    };
    format!("{}: {what}", path.display())
}
