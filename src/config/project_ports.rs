//! Per-project port blocks, so projects on one host do not collide by
//! default: the host ports 17000..=24999 are cut into 800 blocks of 10, and a
//! project's block is chosen from the SHA-256 of its directory's path. The
//! block's first port is the broker's (the default when castra.toml sets no
//! `[broker] port`); `castra init` writes the broker port and the example
//! forwards from the block, moving on to the next block while a port of it
//! is taken.
//!
//! Pure: [`block_for`] hashes a path. Probing which ports are free is
//! `castra init`'s job.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The first port of the first block.
pub const FIRST_PORT: u16 = 17000;
/// The last port of the last block.
pub const LAST_PORT: u16 = 24999;
/// Ports per project: the broker, then room for forwards.
pub const BLOCK_SIZE: u16 = 10;
/// How many blocks fit in `FIRST_PORT..=LAST_PORT`.
pub const BLOCKS: u16 = (LAST_PORT - FIRST_PORT + 1) / BLOCK_SIZE;

/// One project's ports: `base` .. `base + BLOCK_SIZE - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortBlock {
    index: u16,
}

impl PortBlock {
    pub fn base(self) -> u16 {
        FIRST_PORT + self.index * BLOCK_SIZE
    }
    /// The broker's port: the block's first.
    pub fn broker(self) -> u16 {
        self.base()
    }
    /// The `n`th port after the broker's (`n` < `BLOCK_SIZE - 1`).
    pub fn port(self, n: u16) -> u16 {
        self.base() + 1 + n.min(BLOCK_SIZE - 2)
    }
    /// Every port of the block.
    pub fn ports(self) -> impl Iterator<Item = u16> {
        let base = self.base();
        base..base + BLOCK_SIZE
    }
    /// The block after this one (wrapping to the first).
    pub fn next(self) -> PortBlock {
        PortBlock {
            index: (self.index + 1) % BLOCKS,
        }
    }
}

/// The block of the project in `dir` (its absolute path, as given).
pub fn block_for(dir: &Path) -> PortBlock {
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    PortBlock {
        index: (u64::from_be_bytes(first) % u64::from(BLOCKS)) as u16,
    }
}

/// The broker port of the project in `dir` when castra.toml sets none.
pub fn default_broker_port(dir: &Path) -> u16 {
    block_for(dir).broker()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn blocks_stay_in_range_and_are_stable() {
        assert_eq!(BLOCKS, 800);
        let a = block_for(Path::new("/home/ann/shop"));
        assert_eq!(a, block_for(Path::new("/home/ann/shop")));
        for i in 0..2000 {
            let b = block_for(Path::new(&format!("/tmp/p{i}")));
            assert!(b.base() >= FIRST_PORT);
            assert!(b.ports().all(|p| (FIRST_PORT..=LAST_PORT).contains(&p)));
            assert_eq!(b.port(0), b.broker() + 1);
        }
        let last = PortBlock { index: BLOCKS - 1 };
        assert_eq!(last.ports().last(), Some(LAST_PORT));
        assert_eq!(last.next(), PortBlock { index: 0 });
    }

    #[test]
    fn different_directories_mostly_get_different_blocks() {
        let blocks: BTreeSet<u16> = (0..100)
            .map(|i| block_for(Path::new(&format!("/srv/project-{i}"))).base())
            .collect();
        // 100 paths into 800 blocks: a few may share one, most do not.
        assert!(blocks.len() > 90, "{}", blocks.len());
    }
}
