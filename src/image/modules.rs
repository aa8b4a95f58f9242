//! Kernel module selection: the modules the default guest needs, and their
//! load order computed from a `modules.dep` file (as written by `depmod`).
//!
//! Pure: it parses text and returns an order. Finding, copying or loading
//! modules is the builder's and the guest init's job.

use std::collections::{BTreeMap, HashSet};

/// Modules the default guest loads, by name, in the order they are wanted.
/// Dependencies are pulled in (and put first) from `modules.dep`.
/// virtio-mmio is what `-M microvm` uses; the virtio-pci trio serves q35.
/// `9pnet_virtio` and `9p` make `shares` (virtio-9p) work on the default image.
pub const WANTED: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
    "qemu_fw_cfg",
    "button",
    "evdev",
    "9pnet",
    "9pnet_virtio",
    "9p",
];

/// What went wrong computing a load order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    #[error("kernel module {0:?} is not listed in modules.dep")]
    Missing(String),
    #[error("modules.dep line {line}: expected `path: deps...`, found {text:?}")]
    Malformed { line: usize, text: String },
    #[error("kernel module {0:?} depends on itself through a cycle in modules.dep")]
    Cycle(String),
}

/// One parsed `modules.dep`: module name -> (relative path, dependency paths).
#[derive(Debug, Clone, Default)]
pub struct ModuleDeps {
    by_name: BTreeMap<String, (String, Vec<String>)>,
}

/// The canonical name of a module file: basename without `.ko[.xz|.zst|.gz]`,
/// with `-` read as `_` (as the kernel does).
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

impl ModuleDeps {
    pub fn parse(text: &str) -> Result<ModuleDeps, ModuleError> {
        let mut by_name = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                return Err(ModuleError::Malformed {
                    line: index + 1,
                    text: line.to_string(),
                });
            };
            let path = path.trim().to_string();
            let deps = deps.split_whitespace().map(str::to_string).collect();
            by_name.insert(module_name(&path), (path, deps));
        }
        Ok(ModuleDeps { by_name })
    }

    /// The relative paths of `wanted` and all their dependencies, each once,
    /// every module after the modules it depends on.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<String>, ModuleError> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        for name in wanted {
            self.visit(
                &name.replace('-', "_"),
                &mut Vec::new(),
                &mut done,
                &mut order,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        stack: &mut Vec<String>,
        done: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        if done.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            return Err(ModuleError::Cycle(name.to_string()));
        }
        let (path, deps) = self
            .by_name
            .get(name)
            .ok_or_else(|| ModuleError::Missing(name.to_string()))?;
        stack.push(name.to_string());
        // depmod lists the deepest dependencies last (modprobe loads them from
        // the end), so walk the list backwards to keep that order.
        for dep in deps.iter().rev() {
            self.visit(&module_name(dep), stack, done, order)?;
        }
        stack.pop();
        done.insert(name.to_string());
        order.push(path.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines copied from the modules.dep that `depmod -b` wrote for Debian's
    /// linux-image-6.1.0-56-amd64.
    const DEBIAN_6_1: &str = "\
kernel/drivers/acpi/button.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/input/evdev.ko:
kernel/drivers/firmware/qemu_fw_cfg.ko:
kernel/net/core/failover.ko:
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/netfs/netfs.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/9p/9p.ko: kernel/fs/netfs/netfs.ko kernel/fs/fscache/fscache.ko kernel/net/9p/9pnet.ko
";

    fn names(order: &[String]) -> String {
        order
            .iter()
            .map(|p| module_name(p))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn debian_order_for_the_default_guest() {
        let deps = ModuleDeps::parse(DEBIAN_6_1).unwrap();
        let order = deps.load_order(WANTED).unwrap();
        insta::assert_snapshot!(names(&order), @"virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net virtio_blk qemu_fw_cfg button evdev 9pnet 9pnet_virtio netfs fscache 9p");
    }

    #[test]
    fn dependencies_come_first_even_when_only_the_leaf_is_wanted() {
        let deps = ModuleDeps::parse(DEBIAN_6_1).unwrap();
        let order = deps.load_order(&["virtio_net", "virtio-rng"]).unwrap();
        insta::assert_snapshot!(names(&order), @"virtio_ring virtio failover net_failover virtio_net virtio_rng");
        assert_eq!(order[5], "kernel/drivers/char/hw_random/virtio-rng.ko");
    }

    #[test]
    fn every_module_appears_after_its_dependencies() {
        let deps = ModuleDeps::parse(DEBIAN_6_1).unwrap();
        let order = deps
            .load_order(&["virtio_pci", "virtio_net", "virtio_mmio"])
            .unwrap();
        for (i, path) in order.iter().enumerate() {
            let (_, ds) = &deps.by_name[&module_name(path)];
            for d in ds {
                let at = order.iter().position(|p| p == d).unwrap();
                assert!(at < i, "{d} must load before {path}");
            }
        }
    }

    #[test]
    fn missing_module_is_named() {
        let deps = ModuleDeps::parse(DEBIAN_6_1).unwrap();
        let err = deps.load_order(&["vsock"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel module \"vsock\" is not listed in modules.dep"
        );
    }

    #[test]
    fn malformed_line_and_cycle_are_errors() {
        let err = ModuleDeps::parse("a.ko: \nnonsense\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "modules.dep line 2: expected `path: deps...`, found \"nonsense\""
        );
        let deps = ModuleDeps::parse("x/a.ko: x/b.ko\nx/b.ko: x/a.ko\n").unwrap();
        assert_eq!(
            deps.load_order(&["a"]).unwrap_err(),
            ModuleError::Cycle("a".into())
        );
    }

    #[test]
    fn compressed_module_names() {
        assert_eq!(module_name("kernel/net/core/failover.ko.xz"), "failover");
        assert_eq!(module_name("kernel/x/virtio-rng.ko.zst"), "virtio_rng");
    }
}
