//! What every task of the broker shares: its options and limits ([`BrokerOptions`], the
//! timeouts), the context each connection task holds ([`Ctx`]: the state layout, the
//! recorder, the hub and bus-log channels, the executor, the shutdown signal) and the
//! connection count. The server builds it; connections and host requests only use it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;

use super::buslog::{self, Append};
use super::hub::{HubConfig, HubMsg};
use super::recorder::RecorderHandle;
use super::session::SessionConfig;
use super::stamp::log;
use super::token::{TokenLookup, read_token_file};
use super::wire::frame;
use super::wire::reason::Reason;
use crate::layout::StateLayout;

/// Default cap on simultaneous connections (guest port).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// A write to a peer that takes longer than this closes the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// On shutdown, how long sessions get to receive their `bye`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// When a session closes, how long its writer may take to finish the frame
/// in flight and send the last frames (`bye`) before the socket is closed.
pub const FINAL_GRACE: Duration = Duration::from_secs(1);
/// Publishes one session may have waiting for the bus log; beyond them the
/// broker reads nothing more from it until completions come back.
pub const MAX_PUBLISHES_IN_FLIGHT: usize = 64;
/// A hello refused for its token or VM name is answered after this delay
/// (the connection held meanwhile): a client guessing tokens in a loop gets
/// a few tries a second per connection instead of as many as the broker can
/// answer, so real guests' hellos are not queued behind its flood.
pub const DENIAL_DELAY: Duration = Duration::from_millis(500);
/// The refusals [`DENIAL_DELAY`] applies to.
pub const DENIAL_DELAY_REASONS: [Reason; 3] =
    [Reason::BadToken, Reason::MissingToken, Reason::UnknownVm];
/// How long a host `publish` request waits for its durable append.
pub const HOST_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the broker needs to run.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    pub state_root: PathBuf,
    pub port: u16,
    /// Address of the guest listener (127.0.0.1: guests arrive through QEMU NAT).
    pub bind: IpAddr,
    pub session: SessionConfig,
    pub frame_limit: u32,
    pub max_connections: usize,
    pub hub: HubConfig,
    /// When the bus log files rotate.
    pub bus_log_rotation: buslog::Rotation,
}

impl BrokerOptions {
    pub fn new(state_root: PathBuf, port: u16) -> Self {
        BrokerOptions {
            state_root,
            port,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            session: SessionConfig::default(),
            frame_limit: frame::DEFAULT_FRAME_LIMIT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            hub: HubConfig::default(),
            bus_log_rotation: buslog::Rotation::default(),
        }
    }
}

pub(super) struct Ctx {
    pub(super) opts: BrokerOptions,
    pub(super) layout: StateLayout,
    pub(super) start: Instant,
    pub(super) recorder: RecorderHandle,
    pub(super) connections: Arc<AtomicUsize>,
    /// Never sent on: closed (by dropping its sender) when the broker stops.
    pub(super) shutdown: smol::channel::Receiver<()>,
    pub(super) hub: smol::channel::Sender<HubMsg>,
    /// Publishes to make durable. The writer thread is never joined: what it
    /// has not synced when the process exits was never acknowledged.
    pub(super) bus_log: smol::channel::Sender<Append>,
    pub(super) next_key: AtomicU64,
    /// Every task of the broker runs on this executor, on the thread that
    /// also waits on the sockets (`run`): a socket's readiness then runs its
    /// task without waking another thread.
    pub(super) tasks: Arc<smol::Executor<'static>>,
    /// Agents that serve streams, and streams waiting for their agent.
    pub(super) streams: super::stream::registry::Registry,
    /// Guest connections still in their hello (evicted oldest first at the cap).
    pub(super) pending: Arc<super::pending::Pending>,
}

impl Ctx {
    /// Run `fut` as a task of the broker.
    pub(super) fn spawn<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> smol::Task<T> {
        self.tasks.spawn(fut)
    }

    /// Monotonic milliseconds since the broker started (the session clock).
    pub(super) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(super) fn instant_at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    pub(super) fn lookup(&self, vm: &str) -> TokenLookup {
        let found = read_token_file(&self.layout.vm(vm).token());
        if let TokenLookup::Unreadable(why) = &found {
            log(&format!("vm {vm}: cannot read its token file: {why}"));
        }
        found
    }

    pub(super) async fn stopped(&self) {
        let _ = self.shutdown.recv().await;
    }

    /// `fut`'s output, or `None` once the broker is stopping.
    pub(super) async fn unless_stopped<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        async { Some(fut.await) }
            .or(async {
                self.stopped().await;
                None
            })
            .await
    }
}

/// Counts a connection while it lives.
pub(super) struct ConnGuard(Arc<AtomicUsize>);

impl ConnGuard {
    pub(super) fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        ConnGuard(counter.clone())
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
