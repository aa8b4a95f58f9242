//! `castra cp`'s copy format, both ends (the host CLI and the guest agent
//! run the same code): the sender walks a file or tree and emits entries
//! (`Entry`, the file's bytes on the data channel, `EntryEnd` with their
//! sha256) then `Done`; the receiver (`recv.rs`) writes each file to a
//! temporary name beside its destination, checks the sha256 and renames it
//! into place, keeping modes, mtimes and symlinks. Streamed in 64 KiB
//! chunks: constant memory whatever the size. No sockets here: frames go
//! through the `emit` callback given by the caller.

mod describe;
mod recv;

pub use describe::describe;

pub use recv::Receiver;

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::broker::stream::wire::{Channel, Control, Entry, EntryKind, MAX_PAYLOAD};

/// Where frames of a copy go: `(channel, payload)`.
pub type Emit<'a> = dyn FnMut(Channel, &[u8]) -> io::Result<()> + 'a;

/// The bytes of regular files under `src` (for a progress bar).
pub fn total_bytes(src: &Path) -> u64 {
    match fs::symlink_metadata(src) {
        Ok(m) if m.is_dir() => fs::read_dir(src)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| total_bytes(&e.path()))
            .sum(),
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    }
}

/// Send `src` (a file, symlink or, with `recursive`, a directory tree) on
/// `data` channel frames through `emit`; `progress` sees file bytes sent
/// so far. Returns the file bytes sent. Errors are messages for the user.
pub fn send(
    src: &Path,
    recursive: bool,
    data: Channel,
    emit: &mut Emit<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, String> {
    let meta = fs::symlink_metadata(src).map_err(|e| describe(src, &e))?;
    if meta.is_dir() && !recursive {
        return Err(format!("{}: is a directory (use -r)", src.display()));
    }
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".".to_owned());
    let mut sent = 0u64;
    send_entry(src, &name, data, emit, progress, &mut sent)?;
    emit(
        Channel::Control,
        &serde_json::to_vec(&Control::Done { bytes: sent }).unwrap_or_default(),
    )
    .map_err(|e| format!("sending: {e}"))?;
    Ok(sent)
}

fn control(emit: &mut Emit<'_>, msg: &Control) -> Result<(), String> {
    emit(
        Channel::Control,
        &serde_json::to_vec(msg).unwrap_or_default(),
    )
    .map_err(|e| format!("sending: {e}"))
}

fn send_entry(
    path: &Path,
    rel: &str,
    data: Channel,
    emit: &mut Emit<'_>,
    progress: &mut dyn FnMut(u64),
    sent: &mut u64,
) -> Result<(), String> {
    let meta = fs::symlink_metadata(path).map_err(|e| describe(path, &e))?;
    let mode = meta.permissions().mode() & 0o7777;
    let mtime = meta.mtime();
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(|e| describe(path, &e))?;
        return control(
            emit,
            &Control::Entry(Entry {
                kind: EntryKind::Symlink,
                path: rel.to_owned(),
                mode,
                mtime,
                size: None,
                target: Some(target.to_string_lossy().into_owned()),
            }),
        );
    }
    if ft.is_dir() {
        control(
            emit,
            &Control::Entry(Entry {
                kind: EntryKind::Dir,
                path: rel.to_owned(),
                mode,
                mtime,
                size: None,
                target: None,
            }),
        )?;
        let mut names: Vec<_> = fs::read_dir(path)
            .map_err(|e| describe(path, &e))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for name in names {
            let child = format!("{rel}/{}", name.to_string_lossy());
            send_entry(&path.join(&name), &child, data, emit, progress, sent)?;
        }
        return Ok(());
    }
    if !ft.is_file() {
        return Err(format!(
            "{}: not a regular file, directory or symlink",
            path.display()
        ));
    }
    let mut file = fs::File::open(path).map_err(|e| describe(path, &e))?;
    control(
        emit,
        &Control::Entry(Entry {
            kind: EntryKind::File,
            path: rel.to_owned(),
            mode,
            mtime,
            size: Some(meta.len()),
            target: None,
        }),
    )?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; MAX_PAYLOAD];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(describe(path, &e)),
        };
        hash.update(&buf[..n]);
        emit(data, &buf[..n]).map_err(|e| format!("sending: {e}"))?;
        *sent += n as u64;
        progress(*sent);
    }
    control(
        emit,
        &Control::EntryEnd {
            sha256: hex::encode(hash.finalize()),
        },
    )
}

#[cfg(test)]
mod tests;
