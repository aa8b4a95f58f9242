//! What castra asks of one libvirt host, each a bounded `virsh` call: list
//! the project's domains with their state and castra's record, start a
//! domain from its XML, ACPI shutdown, destroy, and the storage volumes that
//! carry images and tokens onto the host (pool `castra`).
//!
//! Only domains whose name carries the project's prefix (`names.rs`) and
//! whose metadata holds a castra record are ever acted on.

use std::path::Path;
use std::time::Duration;

use super::names::{POOL, POOL_DIR, ProjectNames};
use super::virsh::{self, VirshError};
use super::xml::{METADATA_NS, record_from_metadata};

/// How long one ordinary call may take (connect included).
pub const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// How long `virsh create` may take (libvirt starts QEMU and waits for its monitor;
/// measured at 20-25 s on a loaded 2-core machine).
pub const CREATE_DEADLINE: Duration = Duration::from_secs(90);
/// How long an upload may take (an image over a slow link).
pub const UPLOAD_DEADLINE: Duration = Duration::from_secs(300);

/// One libvirt connection, by castra's host name.
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    pub name: &'a str,
    pub uri: &'a str,
}

/// A domain of the project as the host reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub vm: String,
    pub domain: String,
    /// libvirt's word: `running`, `paused`, `shut off`, `in shutdown`, ...
    pub state: String,
    /// castra's launch record (JSON) from the domain's metadata; `None`: a
    /// domain with our name that castra did not make (never touched).
    pub record_json: Option<String>,
}

impl Host<'_> {
    fn run(&self, args: &[&str]) -> Result<String, VirshError> {
        virsh::run(self.uri, args, CALL_DEADLINE)
    }

    /// The project's domains on this host, with state and record.
    pub fn domains(
        &self,
        names: &ProjectNames,
        deadline: Duration,
    ) -> Result<Vec<Domain>, VirshError> {
        let listing = virsh::run(self.uri, &["list", "--all"], deadline)?;
        let mut out = Vec::new();
        for (domain, state) in parse_list(&listing) {
            let Some(vm) = names.vm_of(&domain) else {
                continue;
            };
            // A domain that vanished between the two calls (transient, just
            // stopped) is simply not there.
            let record_json =
                match virsh::run(self.uri, &["metadata", &domain, METADATA_NS], deadline) {
                    Ok(text) => record_from_metadata(&text),
                    Err(e) if e.is_connection() => return Err(e),
                    Err(_) => None,
                };
            out.push(Domain {
                vm: vm.to_owned(),
                domain: domain.clone(),
                state,
                record_json,
            });
        }
        Ok(out)
    }

    /// libvirt's state word for a domain, `None` when there is no such domain.
    pub fn state(&self, domain: &str) -> Result<Option<String>, VirshError> {
        match self.run(&["domstate", domain]) {
            Ok(s) => Ok(Some(s.trim().to_owned())),
            Err(e) if e.is_connection() => Err(e),
            Err(VirshError::Failed(m))
                if m.contains("ailed to get domain") || m.contains("Domain not found") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Start a transient domain from its XML file (read by virsh).
    pub fn create(&self, xml: &Path) -> Result<(), VirshError> {
        let file = xml.to_string_lossy();
        virsh::run(self.uri, &["create", &file], CREATE_DEADLINE).map(|_| ())
    }

    /// Press the ACPI power button.
    pub fn shutdown(&self, domain: &str) -> Result<(), VirshError> {
        self.run(&["shutdown", domain, "--mode", "acpi"])
            .map(|_| ())
    }

    /// Pull the plug.
    pub fn destroy(&self, domain: &str) -> Result<(), VirshError> {
        self.run(&["destroy", domain]).map(|_| ())
    }

    /// Make sure pool `castra` exists and runs (a directory pool in `POOL_DIR`).
    pub fn ensure_pool(&self) -> Result<(), VirshError> {
        if let Ok(info) = self.run(&["pool-info", POOL]) {
            if info.contains("running") {
                return Ok(());
            }
            // Defined but stopped (its directory may be gone): build is idempotent.
            self.run(&["pool-build", POOL])?;
            return self.run(&["pool-start", POOL]).map(|_| ());
        }
        self.run(&["pool-define-as", POOL, "dir", "--target", POOL_DIR])?;
        self.run(&["pool-build", POOL])?;
        self.run(&["pool-start", POOL])?;
        let _ = self.run(&["pool-autostart", POOL]);
        Ok(())
    }

    /// The host path of a volume, `None` when there is none.
    pub fn volume_path(&self, volume: &str) -> Result<Option<String>, VirshError> {
        match self.run(&["vol-path", "--pool", POOL, volume]) {
            Ok(p) => Ok(Some(p.trim().to_owned())),
            Err(e) if e.is_connection() => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// Upload `file` as `volume` (mode `mode` on the host), replacing one
    /// that exists when `replace`; otherwise an existing volume is kept (it
    /// is named by its content). Returns its host path.
    pub fn upload(
        &self,
        volume: &str,
        file: &Path,
        mode: u32,
        replace: bool,
        scratch: &Path,
    ) -> Result<String, VirshError> {
        if let Some(path) = self.volume_path(volume)? {
            if !replace {
                return Ok(path);
            }
            self.delete_volume(volume)?;
        }
        let size = std::fs::metadata(file)
            .map_err(|e| VirshError::Failed(format!("cannot read {}: {e}", file.display())))?
            .len();
        let xml = format!(
            "<volume><name>{}</name><capacity unit='bytes'>{size}</capacity><target><format type='raw'/><permissions><mode>{mode:04o}</mode><owner>0</owner><group>0</group></permissions></target></volume>\n",
            super::xml::esc(volume)
        );
        let xml_file = scratch.join(format!("{volume}.vol.xml"));
        std::fs::write(&xml_file, xml)
            .map_err(|e| VirshError::Failed(format!("cannot write {}: {e}", xml_file.display())))?;
        let made = self.run(&["vol-create", "--pool", POOL, &xml_file.to_string_lossy()]);
        let _ = std::fs::remove_file(&xml_file);
        made?;
        if let Err(e) = virsh::upload(self.uri, POOL, volume, file, UPLOAD_DEADLINE) {
            let _ = self.delete_volume(volume);
            return Err(e);
        }
        self.volume_path(volume)?
            .ok_or_else(|| VirshError::Failed(format!("volume {volume} vanished after upload")))
    }

    /// Remove a volume (a missing one is fine).
    pub fn delete_volume(&self, volume: &str) -> Result<(), VirshError> {
        match self.run(&["vol-delete", "--pool", POOL, volume]) {
            Ok(_) => Ok(()),
            Err(e) if e.is_connection() => Err(e),
            Err(_) => Ok(()),
        }
    }
}

/// `virsh -q list --all`: ` 3    name   running` / ` -    name   shut off`.
pub fn parse_list(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let _id = words.next()?;
            let name = words.next()?;
            let state: Vec<&str> = words.collect();
            Some((name.to_owned(), state.join(" ")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_list;

    #[test]
    fn list_lines_give_name_and_state() {
        let text = " 3    castra-demo-abc123-web   running\n -    other          shut off\n\n";
        assert_eq!(
            parse_list(text),
            vec![
                ("castra-demo-abc123-web".into(), "running".into()),
                ("other".into(), "shut off".into())
            ]
        );
    }
}
