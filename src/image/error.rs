//! The one error type of the image module. Messages are lowercase, name the
//! file or command to look at, and say what to run when the image is missing.

use std::path::PathBuf;

use super::binary::PayloadError;
use super::modules::ModuleError;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "the default guest image is not built yet (no {}); build it with `castra image build`",
        pointer.display()
    )]
    NotBuilt { pointer: PathBuf },

    #[error(
        "the default guest image in {} is unusable ({reason}); rebuild it with `castra image build --force`",
        dir.display()
    )]
    Broken { dir: PathBuf, reason: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{tool}` is not installed (needed to {purpose}); {hint}")]
    ToolMissing {
        tool: String,
        purpose: String,
        hint: String,
    },

    #[error("`{command}` failed ({status}): {detail}")]
    Command {
        command: String,
        status: String,
        detail: String,
    },

    #[error("{}: {reason}", path.display())]
    Input { path: PathBuf, reason: String },

    #[error(
        "apt has no package {package:?} in its lists; run `apt-get update`, or pass {flag} PATH"
    )]
    NoPackage { package: String, flag: String },

    #[error("{}: sha256 {actual} does not match apt's {expected}; delete it and retry", path.display())]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("kernel {}: {source}", path.display())]
    Kernel {
        path: PathBuf,
        #[source]
        source: PayloadError,
    },

    #[error("kernel package {}: {source}", deb.display())]
    Modules {
        deb: PathBuf,
        #[source]
        source: ModuleError,
    },

    #[error(
        "cannot build the fast guest kernel: missing {}; run scripts/setup-host.sh \
         (or `apt-get install -y {}`), or build with `castra image build --kernel debian`",
        missing.iter().map(|(what, _)| what.as_str()).collect::<Vec<_>>().join(", "),
        missing.iter().map(|(_, package)| package.as_str()).collect::<Vec<_>>().join(" ")
    )]
    KernelDeps {
        /// (what is missing, the Debian package that has it)
        missing: Vec<(String, String)>,
    },

    #[error(
        "guest/kernel/castra.config asks for {what}, but `make allnoconfig` in {} dropped it \
         (a dependency is off: add it to the fragment)",
        tree.display()
    )]
    KernelConfig { tree: PathBuf, what: String },

    #[error(transparent)]
    Fragment(#[from] super::kconfig::FragmentError),

    #[error("extra file {guest:?}: {reason}")]
    ExtraFile { guest: String, reason: String },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { path, source }
    }
}
