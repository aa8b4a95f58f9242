//! The rules as docs/ARCHITECTURE.md writes them, read from its fenced blocks, so they
//! are written once: ```` ```tidy-layers ```` (top-level modules, highest layer first,
//! peers on one line) and ```` ```tidy-pure ```` (files that do no I/O).

use std::path::Path;

pub struct Rules {
    /// Layer index per top-level module; 0 is the top.
    pub layers: Vec<Vec<String>>,
    pub pure: Vec<String>,
}

impl Rules {
    pub fn load(root: &Path) -> Rules {
        let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md"))
            .expect("read docs/ARCHITECTURE.md");
        let layers = block(&doc, "tidy-layers")
            .iter()
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect();
        let pure = block(&doc, "tidy-pure")
            .iter()
            .map(|l| l.trim().to_owned())
            .collect();
        Rules { layers, pure }
    }

    pub fn layer_of(&self, module: &str) -> Option<usize> {
        self.layers
            .iter()
            .position(|l| l.iter().any(|m| m == module))
    }
}

fn block(doc: &str, tag: &str) -> Vec<String> {
    let mut lines = doc.lines().skip_while(|l| l.trim() != format!("```{tag}"));
    assert!(
        lines.next().is_some(),
        "docs/ARCHITECTURE.md has no ```{tag} block: the tidy rules live there"
    );
    lines
        .take_while(|l| l.trim() != "```")
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// What pure files may not use: I/O, processes, threads, clocks, randomness, and the
/// crates that do them.
pub const IMPURE: &[(&str, &str)] = &[
    ("std::fs", "the file system"),
    ("std::net::TcpStream", "sockets"),
    ("std::net::TcpListener", "sockets"),
    ("std::net::UdpSocket", "sockets"),
    ("std::os::unix::net", "sockets"),
    ("std::process", "processes"),
    ("std::thread", "threads"),
    ("std::time::Instant", "the clock"),
    ("std::time::SystemTime", "the clock"),
    ("std::env", "the environment"),
    ("std::io::stdin", "the terminal"),
    ("std::io::stdout", "the terminal"),
    ("std::io::stderr", "the terminal"),
    ("Instant::now", "the clock"),
    ("SystemTime::now", "the clock"),
    ("smol", "an async runtime"),
    ("async_io", "an async runtime"),
    ("async_net", "sockets"),
    ("async_process", "processes"),
    ("nix", "system calls"),
    ("notify", "the file system"),
    ("getrandom", "randomness"),
    ("libc", "system calls"),
];
