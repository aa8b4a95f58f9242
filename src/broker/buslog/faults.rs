//! The bus log writer's I/O seam: every append to a log file and every sync
//! the writer relies on goes through here. Outside tests these are the plain
//! calls; in the crate's tests a plan armed on the writer's thread makes the
//! next writes or syncs fail (EIO, ENOSPC, after writing part of the buffer)
//! so the writer's guarantees are shown under I/O errors
//! (`writer_faults_tests.rs`). Also the free-space reserve the writer keeps
//! for the broker's own small files.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Free space the bus log leaves on its file system: a commit that would
/// leave less is refused (`storage_error`, nothing written), so state.json,
/// events.jsonl and the checkpoint can still be written and guests keep
/// showing `reachable` while the disk is full. Publishing resumes by itself
/// once space is freed.
pub const SPACE_RESERVE: u64 = 1024 * 1024;

/// Append `buf` to `file`.
pub(super) fn write_all(file: &mut File, buf: &[u8]) -> io::Result<()> {
    #[cfg(test)]
    if let Some(fault) = plan::take(plan::Op::Write) {
        let part = fault.written.min(buf.len());
        file.write_all(&buf[..part])?;
        return Err(io::Error::from_raw_os_error(fault.errno));
    }
    file.write_all(buf)
}

/// Write `buf` at offset `at` of `file` (all.log's records over the zeros
/// written ahead of them, `prealloc.rs`).
pub(super) fn write_all_at(file: &File, buf: &[u8], at: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    #[cfg(test)]
    if let Some(fault) = plan::take(plan::Op::Write) {
        let part = fault.written.min(buf.len());
        file.write_all_at(&buf[..part], at)?;
        return Err(io::Error::from_raw_os_error(fault.errno));
    }
    file.write_all_at(buf, at)
}

/// `fdatasync` one file.
pub(super) fn sync_data(file: &File) -> io::Result<()> {
    #[cfg(test)]
    if let Some(fault) = plan::take(plan::Op::Sync) {
        return Err(io::Error::from_raw_os_error(fault.errno));
    }
    file.sync_data()
}

/// Called before a checkpoint's syncs (`fdatasync`s or one `syncfs`).
pub(super) fn before_checkpoint_sync() -> io::Result<()> {
    #[cfg(test)]
    if let Some(fault) = plan::take(plan::Op::Sync) {
        return Err(io::Error::from_raw_os_error(fault.errno));
    }
    Ok(())
}

/// Whether `need` more bytes fit in `dir`'s file system with
/// [`SPACE_RESERVE`] left over; the error names the directory and the space.
/// When the free space cannot be read the write goes ahead (and its own
/// error, if any, is what counts).
pub(super) fn check_space(dir: &Path, need: u64) -> Result<(), String> {
    let Ok(free) = free_bytes(dir) else {
        return Ok(());
    };
    if free < need.saturating_add(SPACE_RESERVE) {
        return Err(format!(
            "the file system of {} is full ({free} bytes free, {need} needed plus a reserve of \
             {SPACE_RESERVE}); free space there and publishing resumes",
            dir.display()
        ));
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use on `dir`'s file system.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    #[cfg(test)]
    if let Some(free) = plan::free_override() {
        return Ok(free);
    }
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// The test-only plan: which operations fail next, on this thread.
#[cfg(test)]
pub(super) mod plan {
    use std::cell::RefCell;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Op {
        Write,
        Sync,
    }

    /// One injected failure.
    #[derive(Debug, Clone, Copy)]
    pub struct Fault {
        pub op: Op,
        pub errno: i32,
        /// Bytes actually written before a write fails.
        pub written: usize,
        /// Operations of this kind that succeed first.
        pub after: usize,
    }

    thread_local! {
        static PLAN: RefCell<(Vec<Fault>, Option<u64>)> = const { RefCell::new((Vec::new(), None)) };
    }

    /// Add a failure to this thread's plan.
    pub fn arm(fault: Fault) {
        PLAN.with(|p| p.borrow_mut().0.push(fault));
    }

    /// Pretend the file system has `free` bytes left (`None`: the real figure).
    pub fn set_free(free: Option<u64>) {
        PLAN.with(|p| p.borrow_mut().1 = free);
    }

    pub fn free_override() -> Option<u64> {
        PLAN.with(|p| p.borrow().1)
    }

    /// Failures still armed.
    pub fn pending() -> usize {
        PLAN.with(|p| p.borrow().0.len())
    }

    pub(in crate::broker::buslog) fn take(op: Op) -> Option<Fault> {
        PLAN.with(|p| {
            let faults = &mut p.borrow_mut().0;
            let i = faults.iter().position(|f| f.op == op)?;
            if faults[i].after > 0 {
                faults[i].after -= 1;
                return None;
            }
            Some(faults.remove(i))
        })
    }
}
