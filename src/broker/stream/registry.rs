//! Who can serve a stream, and which streams wait for their agent: the
//! broker's table of agent bus sessions that announced `exec-v1` (with the
//! queue of each session's writer, to hand it a `stream_open` frame), and of
//! pending stream ids (each with the VM it was issued to and the channel that
//! hands the agent's connection to the waiting host request). Plain data
//! under one mutex that is only held for a lookup; no I/O.

use std::collections::HashMap;
use std::sync::Mutex;

use async_net::TcpStream;

use super::super::hub::Frame;
use super::wire::Refusal;

/// An agent's stream connection, with the bytes read past its hello line.
pub(crate) type Arrival = (TcpStream, Vec<u8>);

struct Agent {
    key: u64,
    vm: String,
    exec: bool,
    queue: smol::channel::Sender<Frame>,
}

struct Pending {
    vm: String,
    arrive: smol::channel::Sender<Arrival>,
}

#[derive(Default)]
struct Inner {
    agents: Vec<Agent>,
    pending: HashMap<String, Pending>,
}

/// The broker's stream table (in the shared context).
#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// A guest bus session opened (`exec`: it announced `exec-v1`).
    pub(crate) fn add_agent(
        &self,
        key: u64,
        vm: &str,
        exec: bool,
        queue: smol::channel::Sender<Frame>,
    ) {
        self.with(|i| {
            i.agents.push(Agent {
                key,
                vm: vm.to_owned(),
                exec,
                queue,
            })
        });
    }

    pub(crate) fn remove_agent(&self, key: u64) {
        self.with(|i| i.agents.retain(|a| a.key != key));
    }

    /// The writer queue of the newest `exec-v1` session of `vm`.
    pub(crate) fn agent_queue(&self, vm: &str) -> Result<smol::channel::Sender<Frame>, Refusal> {
        self.with(|i| {
            let sessions: Vec<&Agent> = i.agents.iter().filter(|a| a.vm == vm).collect();
            if sessions.is_empty() {
                return Err(Refusal::NotConnected);
            }
            sessions
                .iter()
                .rev()
                .find(|a| a.exec)
                .map(|a| a.queue.clone())
                .ok_or(Refusal::Unsupported)
        })
    }

    /// Wait for stream `id` of `vm`.
    pub(crate) fn expect(&self, id: &str, vm: &str) -> smol::channel::Receiver<Arrival> {
        let (arrive, rx) = smol::channel::bounded(1);
        self.with(|i| {
            i.pending.insert(
                id.to_owned(),
                Pending {
                    vm: vm.to_owned(),
                    arrive,
                },
            )
        });
        rx
    }

    /// Stop waiting for `id` (timed out, or the host went away).
    pub(crate) fn forget(&self, id: &str) {
        self.with(|i| i.pending.remove(id));
    }

    /// Claim pending stream `id` for a connection that proved it is `vm`:
    /// the sender to hand the connection to. A stream is claimed once, and
    /// only by the VM it was issued to.
    pub(crate) fn claim(
        &self,
        id: &str,
        vm: &str,
    ) -> Result<smol::channel::Sender<Arrival>, Refusal> {
        self.with(|i| match i.pending.get(id) {
            Some(p) if p.vm == vm => Ok(i.pending.remove(id).map(|p| p.arrive)),
            _ => Err(Refusal::UnknownStream),
        })?
        .ok_or(Refusal::UnknownStream)
    }
}
