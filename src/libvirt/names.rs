//! How castra names what it makes on a libvirt host, so that it only ever
//! touches its own project's: a domain is `castra-<project>-<id>-<vm>`, where
//! `<id>` is a short hash of the project's state root (two projects with one
//! name in two directories never share a domain), and its volumes start with
//! the domain's name. Images are shared by every project on a host and named
//! by their content hash (`img-<hash>-<part>`), so each is uploaded once.
//!
//! Pure: strings in, strings out.

use sha2::{Digest, Sha256};

/// The storage pool castra keeps its volumes in, on every host.
pub const POOL: &str = "castra";
/// Where that pool keeps its files when castra defines it.
pub const POOL_DIR: &str = "/var/lib/libvirt/castra";

/// Everything castra names on a host for one project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectNames {
    prefix: String,
}

impl ProjectNames {
    /// For the project `name` whose state root is `state_root`.
    pub fn new(name: &str, state_root: &str) -> Self {
        let id = hex::encode(&Sha256::digest(state_root.as_bytes())[..3]);
        ProjectNames {
            prefix: format!("castra-{name}-{id}-"),
        }
    }

    /// `castra-<project>-<id>-`: every domain of the project starts so.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn domain(&self, vm: &str) -> String {
        format!("{}{vm}", self.prefix)
    }

    /// The VM of one of this project's domains (`None`: not ours).
    pub fn vm_of<'a>(&self, domain: &'a str) -> Option<&'a str> {
        domain
            .strip_prefix(self.prefix.as_str())
            .filter(|vm| !vm.is_empty())
    }

    /// The volume holding a launch's token.
    pub fn token_volume(&self, vm: &str) -> String {
        format!("{}-token", self.domain(vm))
    }
}

/// The volume of one part of an image (`kernel`, `initrd`) with content `hash`.
pub fn image_volume(hash: &str, part: &str) -> String {
    let short: String = hash.chars().take(24).collect();
    format!("img-{short}-{part}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_the_projects_own() {
        let a = ProjectNames::new("demo", "/srv/a/.castra");
        let b = ProjectNames::new("demo", "/srv/b/.castra");
        assert_ne!(a.prefix(), b.prefix(), "same name, other directory");
        let d = a.domain("web-1");
        assert!(
            d.starts_with("castra-demo-") && d.ends_with("-web-1"),
            "{d}"
        );
        assert_eq!(a.vm_of(&d), Some("web-1"));
        assert_eq!(b.vm_of(&d), None);
        assert_eq!(a.vm_of("castra-demo"), None);
        assert_eq!(a.vm_of("web"), None);
        assert_eq!(a.vm_of(a.prefix()), None);
        assert_eq!(
            a.token_volume("web"),
            format!("{d0}-token", d0 = a.domain("web"))
        );
        assert_eq!(image_volume("abcdef", "kernel"), "img-abcdef-kernel");
    }
}
