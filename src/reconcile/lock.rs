//! The project lock: one `flock` on `<state_root>/lock` so two `apply`/`down`/
//! `clean` cannot race. Status never takes it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Held for as long as it lives; the kernel releases it if the process dies.
pub struct ProjectLock {
    _flock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open lock file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {errno}")]
    Lock { path: PathBuf, errno: nix::Error },
}

/// Take the lock, waiting if another castra holds it; `on_wait` is called once
/// with the holder's pid (if known) before blocking.
pub fn acquire(
    path: &Path,
    on_wait: &mut dyn FnMut(Option<i32>),
) -> Result<ProjectLock, LockError> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| LockError::Open {
                path: path.to_owned(),
                source,
            })
    };
    let flock = match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((file, nix::Error::EWOULDBLOCK)) => {
            on_wait(holder_pid(file));
            Flock::lock(open()?, FlockArg::LockExclusive).map_err(|(_, errno)| LockError::Lock {
                path: path.to_owned(),
                errno,
            })?
        }
        Err((_, errno)) => {
            return Err(LockError::Lock {
                path: path.to_owned(),
                errno,
            });
        }
    };
    let mut flock = flock;
    // Record who holds it, for the next waiter's message.
    let _ = flock.set_len(0);
    let _ = flock.rewind();
    let _ = write!(flock, "{}", std::process::id());
    Ok(ProjectLock { _flock: flock })
}

fn holder_pid(mut file: File) -> Option<i32> {
    let mut s = String::new();
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_second_holder_waits_until_the_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/lock");
        let first = acquire(&path, &mut |_| panic!("first must not wait")).unwrap();
        let (tx, rx) = mpsc::channel();
        let p = path.clone();
        let t = std::thread::spawn(move || {
            let mut waited = None;
            let _second = acquire(&p, &mut |pid| waited = Some(pid)).unwrap();
            tx.send(waited).unwrap();
        });
        // The second acquirer is blocked while the first holds the lock.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(first);
        let waited = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(waited, Some(Some(std::process::id() as i32)));
        t.join().unwrap();
    }
}
