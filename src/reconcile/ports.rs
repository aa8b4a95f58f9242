//! Port leases, checked at plan time: two VMs cannot claim one host port, and
//! a port another process already holds is reported before anything starts.
//!
//! A port held by one of our own VMs that the plan stops or restarts is not a
//! conflict (it is released first); one held by a VM left running is. A port
//! another program holds names that program when the host can tell
//! (`holder`); `preflight` locates each conflict in castra.toml.

use std::net::{SocketAddr, TcpListener, UdpSocket};

use crate::config::Proto;

use super::desired::DesiredVm;
use super::holder::{self, Holder};
use super::observe::{Observed, VmState};
use super::plan::{BrokerStep, Plan, Step};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConflict {
    /// Who wants the port: `vm "web"` or `broker`.
    pub claimant: String,
    /// The VM and the index of its forward (`None`: the broker's port).
    pub forward: Option<(String, usize)>,
    pub addr: SocketAddr,
    pub proto: Proto,
    pub holder: String,
}

impl std::fmt::Display for PortConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: host port {}/{} is already in use by {}",
            self.claimant,
            self.addr,
            self.proto.as_str(),
            self.holder
        )
    }
}

/// Check the broker's port when the plan starts it, and every forward of each
/// VM the plan starts. Binds and releases each port once (I/O: this is not
/// part of the pure plan).
pub fn check(
    plan: &Plan,
    desired: &[DesiredVm],
    observed: &Observed,
    broker_port: u16,
) -> Vec<PortConflict> {
    let mut out = Vec::new();
    if let Some(BrokerStep::Start { .. }) = plan.broker {
        let addr = SocketAddr::from(([127, 0, 0, 1], broker_port));
        if TcpListener::bind(addr).is_err() {
            out.push(PortConflict {
                claimant: "broker".into(),
                forward: None,
                addr,
                proto: Proto::Tcp,
                holder: holder::who_holds(Proto::Tcp, addr).to_string(),
            });
        }
    }
    for step in &plan.steps {
        let (Step::Start { vm, .. } | Step::Restart { vm, .. }) = step else {
            continue;
        };
        let Some(want) = desired.iter().find(|d| &d.spec.name == vm) else {
            continue;
        };
        for (index, fwd) in want.spec.forwards.iter().enumerate() {
            let addr = SocketAddr::new(fwd.host_addr, fwd.host_port);
            // Released by a step of this same plan?
            let released_by_plan = plan.steps.iter().any(|s| {
                matches!(s, Step::Restart { .. } | Step::Stop { .. })
                    && launched_forwards(observed, s.vm()).contains(&(fwd.proto, addr))
            });
            if released_by_plan {
                continue;
            }
            // Held by one of our VMs that stays up?
            let kept = observed.vms.values().find(|o| {
                matches!(o.state, VmState::Running { .. })
                    && launched_forwards(observed, &o.name).contains(&(fwd.proto, addr))
            });
            if let Some(o) = kept {
                out.push(PortConflict {
                    claimant: format!("vm {vm:?}"),
                    forward: Some((vm.clone(), index)),
                    addr,
                    proto: fwd.proto,
                    holder: format!("vm {:?} of this project", o.name),
                });
                continue;
            }
            let free = match fwd.proto {
                Proto::Tcp => TcpListener::bind(addr).is_ok(),
                Proto::Udp => UdpSocket::bind(addr).is_ok(),
            };
            if !free {
                let who: Holder = holder::who_holds(fwd.proto, addr);
                out.push(PortConflict {
                    claimant: format!("vm {vm:?}"),
                    forward: Some((vm.clone(), index)),
                    addr,
                    proto: fwd.proto,
                    holder: who.to_string(),
                });
            }
        }
    }
    out
}

fn launched_forwards(observed: &Observed, vm: &str) -> Vec<(Proto, SocketAddr)> {
    observed
        .get(vm)
        .and_then(|o| o.record.as_ref())
        .map(|r| {
            r.spec
                .forwards
                .iter()
                .map(|f| (f.proto, SocketAddr::new(f.host_addr, f.host_port)))
                .collect()
        })
        .unwrap_or_default()
}
