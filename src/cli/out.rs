//! Command output on stdout. Every write is fallible and its error goes back
//! to the caller, so a reader that went away (`castra plan | head -1`) reaches
//! `main` as an `io::ErrorKind::BrokenPipe`, which ends the command quietly
//! with status 0 (ripgrep's way). SIGPIPE stays ignored (Rust's default):
//! no panic hook, no matching of messages. Progress and errors go to stderr
//! elsewhere; this module only writes stdout.

use std::fmt;
use std::io::{self, Write};

/// `println!` that returns the write's error instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// One line on stdout (what [`outln!`] expands to).
pub fn line(args: fmt::Arguments) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")
}

/// Text on stdout as it is (no newline added).
pub fn text(s: &str) -> io::Result<()> {
    io::stdout().lock().write_all(s.as_bytes())
}

/// Whether `err` is, or was caused by, a write into a closed pipe.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_found_under_context_and_nothing_else_is_one() {
        let pipe = || io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(is_broken_pipe(&anyhow::Error::from(pipe())));
        let wrapped = anyhow::Error::from(pipe()).context("printing the plan");
        assert!(is_broken_pipe(&wrapped));
        // The text alone is not the kind: no message sniffing.
        let text = anyhow::anyhow!("Broken pipe (os error 32)");
        assert!(!is_broken_pipe(&text));
        let other = anyhow::Error::from(io::Error::from(io::ErrorKind::NotFound));
        assert!(!is_broken_pipe(&other));
    }
}
