//! The desired state: each VM of castra.toml with the image it would boot and
//! the fingerprint of both. Resolving the default image's id reads one small
//! manifest; nothing here starts anything.

use crate::config::{ImageSpec, Project, VmSpec};
use crate::image;

use super::record::fingerprint;

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredVm {
    pub spec: VmSpec,
    pub image_id: String,
    pub fingerprint: String,
    /// The libvirt host it is placed on (`None`: local direct QEMU).
    pub host: Option<String>,
}

/// Desired VMs in config order. A default image that is not built yet gets an
/// empty id: the plan still shows what would start, and starting reports the
/// missing image with the command that builds it.
pub fn resolve(project: &Project) -> Vec<DesiredVm> {
    let mut default_id: Option<String> = None;
    let mut out = Vec::with_capacity(project.vms.len());
    for spec in &project.vms {
        let image_id = match &spec.image {
            ImageSpec::Default => match &default_id {
                Some(id) => id.clone(),
                None => {
                    let id = image::locate().map(|i| i.id).unwrap_or_default();
                    default_id = Some(id.clone());
                    id
                }
            },
            ImageSpec::Kernel { .. } | ImageSpec::Disk { .. } => String::new(),
        };
        out.push(DesiredVm {
            fingerprint: fingerprint(spec, &image_id),
            spec: spec.clone(),
            image_id,
            host: project.placement.get(&spec.name).cloned(),
        });
    }
    out
}
