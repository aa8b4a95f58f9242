//! The libvirt backend's host side: VMs placed on `[hosts.NAME]` run as
//! libvirt domains, driven through `virsh` (`virsh.rs`, the one place it is
//! started, always with a deadline). `names.rs` names what castra makes on a
//! host, `xml.rs` renders a domain (pure), `host.rs` holds the calls castra
//! makes (list, create, shutdown, destroy, volumes).

pub mod host;
pub mod names;
pub mod snapshot;
pub mod virsh;
pub mod xml;

pub use host::{Domain, Host};
pub use names::ProjectNames;
pub use virsh::VirshError;
