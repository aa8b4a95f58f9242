//! The broker process (`castra broker`): smol + async-net. Listens on
//! 127.0.0.1:<port> for guests and on `<state_root>/broker/broker.sock`
//! (0600) for host tools (served by `host_socket.rs`); runs one task per connection that feeds the pure
//! [`Session`] machine and carries out its effects; stops on SIGTERM/SIGINT
//! after sending `bye shutdown` to every session. What the protocol means is
//! in `session`; what is recorded and written is in `recorder`; publishes
//! are made durable by `buslog` and fanned out by `hub`.
//!
//! A bus session has two tasks: the connection task reads frames, runs the
//! session machine and enqueues what it sends into the session's bounded
//! outbound queue; a writer task drains that queue into the socket. So a
//! stalled peer stalls only its own writer, and the hub (which only ever
//! `try_send`s into queues) and every other session keep going.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_net::unix::UnixListener;
use async_net::{TcpListener, TcpStream};
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use smol::Timer;

use serde_json::Value;

use super::buslog::{self, Append};
use super::events::Event;
use super::frame::{self, ClientFrame, Decoder};
use super::hello::{GREETING, MAX_HELLO_LINE, Reply};
use super::host_socket;
use super::hub::{self, Frame, Hub, HubConfig, HubMsg};
use super::line::{LinePush, LineReader};
use super::reason::Reason;
use super::recorder::{Recorder, RecorderHandle, log, unix_ms};
use super::session::{Effect, Input, Session, SessionConfig};
use super::state::{BrokerSnapshot, read_snapshot};
use super::token::{TokenLookup, read_token_file};
use crate::layout::{MAX_SOCKET_PATH, StateLayout};

/// Default cap on simultaneous connections (guest port).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// A write to a peer that takes longer than this closes the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// On shutdown, how long sessions get to receive their `bye`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// When a session closes, how long its writer may take to finish the frame
/// in flight and send the last frames (`bye`) before the socket is closed.
pub const FINAL_GRACE: Duration = Duration::from_secs(1);
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

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "broker port {port} on {addr} is already in use; stop what holds it or set another `[broker] port` in castra.toml"
    )]
    PortInUse { addr: IpAddr, port: u16 },
    #[error("cannot listen on {addr}:{port}: {source} (check `[broker] port` in castra.toml)")]
    Bind {
        addr: IpAddr,
        port: u16,
        source: io::Error,
    },
    #[error(
        "host socket path {path} is longer than {MAX_SOCKET_PATH} bytes; set a shorter `[project] state_dir` in castra.toml"
    )]
    SocketPathTooLong { path: PathBuf },
    #[error("another broker already answers on {path}; stop it first (its pid is in broker.pid)")]
    AlreadyRunning { path: PathBuf },
    #[error("cannot create host socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("cannot prepare broker directory {path}: {source}")]
    StateDir { path: PathBuf, source: io::Error },
    #[error("cannot set up signal handling: {0}")]
    Signals(nix::Error),
    #[error("cannot start the broker's recorder: {0}")]
    Recorder(io::Error),
    #[error(
        "cannot open the bus log in {path}: {source} (check the state root's permissions and free space)"
    )]
    BusLog { path: PathBuf, source: io::Error },
}

/// Run the broker until SIGTERM or SIGINT; then `bye shutdown` to every
/// session and return `Ok`. Call it before the process starts any thread
/// (signals are blocked here and waited for on a dedicated thread).
pub fn run(opts: BrokerOptions) -> Result<(), BrokerError> {
    let signals = block_signals()?;
    let layout = StateLayout::new(&opts.state_root);
    prepare_dir(&layout)?;
    let tcp = bind_tcp(&opts)?;
    let socket_path = layout.broker_socket();
    // Bound under a temporary name and renamed into place once the bus log
    // is recovered: host tools (and `apply`) take the socket's existence as
    // "ready", and must not read the logs while recovery rewrites them.
    let starting_path = starting_socket(&socket_path);
    let unix = bind_unix(&socket_path, &starting_path)?;
    let pid = std::process::id();
    let pidfile = layout.broker_pidfile();
    if let Err(e) = crate::fsutil::write_atomic(&pidfile, format!("{pid}\n").as_bytes()) {
        log(&format!("cannot write {}: {e}", pidfile.display()));
    }

    let previous = match read_snapshot(&layout.broker_state()) {
        Ok(p) => p,
        Err(e) => {
            log(&format!("{e}; starting with an empty state"));
            None
        }
    };
    let snapshot = BrokerSnapshot::starting(
        previous,
        pid,
        opts.port,
        opts.session.heartbeat_timeout_ms,
        unix_ms(),
    );
    let connections = Arc::new(AtomicUsize::new(0));
    let recorder =
        Recorder::spawn(&layout, snapshot, connections.clone()).map_err(BrokerError::Recorder)?;
    recorder.event(Event::BrokerStarted {
        pid,
        port: opts.port,
    });

    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    std::thread::Builder::new()
        .name("castra-signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                log(&format!("received {sig}, stopping"));
            }
            drop(stop_tx);
        })
        .map_err(BrokerError::Recorder)?;

    let (hub_tx, hub_rx) = smol::channel::unbounded::<HubMsg>();
    let deliver_tx = hub_tx.clone();
    let (buslog, log_tx) = buslog::start(
        &layout,
        opts.bus_log_rotation,
        Box::new(move |c: buslog::Committed| {
            let _ = deliver_tx.try_send(HubMsg::Deliver {
                topic: c.topic,
                frame: c.frame,
            });
        }),
    )
    .map_err(|source| BrokerError::BusLog {
        path: layout.bus_log_dir(),
        source,
    })?;
    log(&format!(
        "bus log {} ready, next seq {}",
        layout.bus_log_dir().display(),
        buslog.next_seq
    ));
    std::fs::rename(&starting_path, &socket_path).map_err(|source| BrokerError::Socket {
        path: socket_path.clone(),
        source,
    })?;
    let hub = Hub::new(opts.hub);
    let ctx = Arc::new(Ctx {
        opts,
        layout,
        start: Instant::now(),
        recorder: recorder.handle(),
        connections,
        shutdown: stop_rx,
        hub: hub_tx,
        bus_log: log_tx,
        next_key: AtomicU64::new(1),
    });
    smol::spawn(hub::run(hub, hub_rx, ctx.recorder.clone())).detach();
    smol::block_on(async {
        accept_guests(ctx.clone(), tcp)
            .or(host_socket::accept_host(ctx.clone(), unix))
            .await;
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while ctx.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            Timer::after(Duration::from_millis(10)).await;
        }
    });
    recorder.stop(Reason::Shutdown);
    let _ = std::fs::remove_file(&socket_path);
    if std::fs::read_to_string(&pidfile).is_ok_and(|p| p.trim() == pid.to_string()) {
        let _ = std::fs::remove_file(&pidfile);
    }
    Ok(())
}

fn block_signals() -> Result<nix::sys::signal::SigSet, BrokerError> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(BrokerError::Signals)?;
    Ok(set)
}

fn prepare_dir(layout: &StateLayout) -> Result<(), BrokerError> {
    let dir = layout.broker_dir();
    let err = |source| BrokerError::StateDir {
        path: dir.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(err)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

fn bind_tcp(opts: &BrokerOptions) -> Result<TcpListener, BrokerError> {
    let addr = SocketAddr::new(opts.bind, opts.port);
    let map = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            BrokerError::PortInUse {
                addr: opts.bind,
                port: opts.port,
            }
        } else {
            BrokerError::Bind {
                addr: opts.bind,
                port: opts.port,
                source,
            }
        }
    };
    let std_listener = std::net::TcpListener::bind(addr).map_err(map)?;
    TcpListener::try_from(std_listener).map_err(map)
}

/// Where the host socket is bound until the broker is ready: beside it, and
/// a name no longer than the socket's (Unix socket paths are limited).
fn starting_socket(path: &std::path::Path) -> PathBuf {
    path.with_file_name(".starting")
}

/// Refuse when a broker answers on `path`; bind at `bind_at` (renamed to
/// `path` when ready).
fn bind_unix(
    path: &std::path::Path,
    bind_at: &std::path::Path,
) -> Result<UnixListener, BrokerError> {
    if bind_at.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(BrokerError::SocketPathTooLong {
            path: path.to_path_buf(),
        });
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BrokerError::AlreadyRunning {
                path: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(bind_at);
    let err = |source| BrokerError::Socket {
        path: bind_at.to_path_buf(),
        source,
    };
    let listener = std::os::unix::net::UnixListener::bind(bind_at).map_err(err)?;
    std::fs::set_permissions(bind_at, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    UnixListener::try_from(listener).map_err(err)
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
}

impl Ctx {
    /// Monotonic milliseconds since the broker started (the session clock).
    pub(super) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn instant_at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn lookup(&self, vm: &str) -> TokenLookup {
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

async fn accept_guests(ctx: Arc<Ctx>, listener: TcpListener) {
    loop {
        let accepted = ctx.unless_stopped(listener.accept()).await;
        match accepted {
            None => return,
            Some(Ok((stream, peer))) => {
                if ctx.connections.load(Ordering::SeqCst) >= ctx.opts.max_connections {
                    smol::spawn(refuse(stream, Reason::TooManyConnections)).detach();
                    continue;
                }
                let guard = ConnGuard::new(&ctx.connections);
                let ctx = ctx.clone();
                smol::spawn(async move {
                    let _guard = guard;
                    serve_guest(ctx, stream, peer).await;
                })
                .detach();
            }
            Some(Err(e)) => {
                // EMFILE and friends: do not spin.
                log(&format!("accept on the guest port failed: {e}"));
                Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn refuse(mut stream: TcpStream, reason: Reason) {
    let text = format!("{GREETING}\n{}\n", Reply::Error(reason).to_line());
    let _ = stream
        .write_all(text.as_bytes())
        .or(async {
            Timer::after(Duration::from_secs(1)).await;
            Ok(())
        })
        .await;
}

fn new_session_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = (unix_ms() ^ u64::from(std::process::id()) << 40).to_be_bytes();
    }
    hex::encode(bytes)
}

enum Wake {
    Read(io::Result<usize>),
    Tick,
    Shutdown,
    Committed(Option<Value>, Result<u64, Reason>),
    Evicted(Reason),
}

enum Flow {
    Continue,
    Close,
}

/// A publish's completion, from the bus log writer to its session.
type Completion = (Option<Value>, Result<u64, Reason>);

/// The bus side of an open session.
struct BusLink {
    key: u64,
    /// Bounded outbound queue, drained by the writer task.
    queue: smol::channel::Sender<Frame>,
    /// The last frames, handed past a full queue when the session closes.
    last: smol::channel::Sender<Vec<u8>>,
    commits_tx: smol::channel::Sender<Completion>,
    commits: smol::channel::Receiver<Completion>,
    evicted: smol::channel::Receiver<Reason>,
    writer: smol::Task<()>,
}

struct Conn {
    ctx: Arc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    session: Session,
    bus: Option<BusLink>,
}

async fn serve_guest(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let session = Session::new(new_session_id(), ctx.opts.session, ctx.now_ms());
    let mut conn = Conn {
        ctx,
        stream,
        peer,
        session,
        bus: None,
    };
    if conn
        .write(format!("{GREETING}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    if let Some(rest) = conn.hello_phase().await {
        conn.open_bus();
        conn.frame_phase(&rest).await;
        conn.close_bus().await;
    }
    conn.linger().await;
}

impl Conn {
    /// Wait for bytes, the session's next deadline, a publish completion,
    /// an eviction, or shutdown.
    async fn wait(&mut self, buf: &mut [u8]) -> Wake {
        let deadline = self.session.deadline_ms().map(|ms| self.ctx.instant_at(ms));
        let ctx = self.ctx.clone();
        let bus = self
            .bus
            .as_ref()
            .map(|b| (b.commits.clone(), b.evicted.clone()));
        let read = async { Wake::Read(self.stream.read(buf).await) };
        let tick = async {
            match deadline {
                Some(at) => {
                    Timer::at(at).await;
                }
                None => std::future::pending::<()>().await,
            }
            Wake::Tick
        };
        let stop = async {
            ctx.stopped().await;
            Wake::Shutdown
        };
        let bus = async {
            match bus {
                Some((commits, evicted)) => {
                    let commit = async {
                        match commits.recv().await {
                            Ok((id, result)) => Wake::Committed(id, result),
                            Err(_) => std::future::pending().await,
                        }
                    };
                    let evict = async {
                        match evicted.recv().await {
                            Ok(reason) => Wake::Evicted(reason),
                            Err(_) => std::future::pending().await,
                        }
                    };
                    evict.or(commit).await
                }
                None => std::future::pending().await,
            }
        };
        stop.or(bus).or(read).or(tick).await
    }

    fn input_for(wake: Wake) -> Result<Input<'static>, usize> {
        match wake {
            Wake::Read(Ok(0)) => Ok(Input::PeerGone(Reason::PeerClosed)),
            Wake::Read(Ok(n)) => Err(n),
            Wake::Read(Err(_)) => Ok(Input::PeerGone(Reason::IoError)),
            Wake::Tick => Ok(Input::Tick),
            Wake::Shutdown => Ok(Input::Shutdown),
            Wake::Committed(id, result) => Ok(Input::Committed { id, result }),
            Wake::Evicted(reason) => Ok(Input::Evict(reason)),
        }
    }

    /// Read the hello line; returns the bytes after it once a bus session is
    /// open, `None` when the connection is finished.
    async fn hello_phase(&mut self) -> Option<Vec<u8>> {
        let mut reader = LineReader::new(MAX_HELLO_LINE);
        let mut buf = [0u8; MAX_HELLO_LINE];
        loop {
            let wake = self.wait(&mut buf).await;
            let mut rest = Vec::new();
            let effects = match Self::input_for(wake) {
                Ok(input) => self.step(input),
                Err(n) => match reader.push(&buf[..n]) {
                    LinePush::NeedMore => continue,
                    LinePush::TooLong => self.step(Input::LineTooLong),
                    LinePush::Line { line, rest: after } => {
                        rest = after;
                        self.step(Input::Line(&line))
                    }
                },
            };
            match self.perform(effects).await {
                Flow::Close => return None,
                Flow::Continue if self.session.is_terminal() => return None,
                Flow::Continue => match self.session.state() {
                    super::session::State::Open(_) => return Some(rest),
                    super::session::State::AwaitingHello { .. }
                    | super::session::State::HandshakeOnly { .. }
                    | super::session::State::Denied { .. }
                    | super::session::State::Closed { .. } => {}
                },
            }
        }
    }

    /// Start the writer task and register the session with the hub.
    fn open_bus(&mut self) {
        let super::session::State::Open(open) = self.session.state() else {
            return;
        };
        let (vm, session) = (open.vm.clone(), open.session.clone());
        let key = self.ctx.next_key.fetch_add(1, Ordering::Relaxed);
        let (queue, queue_rx) = smol::channel::bounded(self.ctx.opts.hub.queue_frames.max(1));
        let (last, last_rx) = smol::channel::bounded(1);
        let (evict, evicted) = smol::channel::bounded(1);
        let (commits_tx, commits) = smol::channel::unbounded();
        let writer = smol::spawn(write_frames(self.stream.clone(), queue_rx, last_rx));
        let _ = self.ctx.hub.try_send(HubMsg::Register {
            key,
            vm,
            session,
            peer: self.peer,
            queue: queue.clone(),
            evict,
        });
        self.bus = Some(BusLink {
            key,
            queue,
            last,
            commits_tx,
            commits,
            evicted,
            writer,
        });
    }

    /// Forget the session in the hub and let its writer finish.
    async fn close_bus(&mut self) {
        let Some(bus) = self.bus.take() else {
            return;
        };
        let _ = self.ctx.hub.try_send(HubMsg::Unregister { key: bus.key });
        bus.queue.close();
        let writer = bus.writer;
        writer
            .or(async {
                Timer::after(WRITE_TIMEOUT + FINAL_GRACE).await;
            })
            .await;
    }

    async fn frame_phase(&mut self, first: &[u8]) {
        let mut decoder = Decoder::new(self.ctx.opts.frame_limit);
        if let Flow::Close = self.feed(&mut decoder, first).await {
            return;
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let wake = self.wait(&mut buf).await;
            let flow = match Self::input_for(wake) {
                Ok(input) => {
                    let effects = self.step(input);
                    self.perform(effects).await
                }
                Err(n) => self.feed(&mut decoder, &buf[..n]).await,
            };
            if let Flow::Close = flow {
                return;
            }
        }
    }

    /// Decode every complete frame in `bytes` and run it through the session.
    async fn feed(&mut self, decoder: &mut Decoder, mut bytes: &[u8]) -> Flow {
        loop {
            let input = match decoder.decode(&mut bytes) {
                Ok(None) => return Flow::Continue,
                Ok(Some(body)) => Input::Frame(ClientFrame::parse(&body)),
                Err(reason) => Input::Frame(Err(reason)),
            };
            let effects = self.step(input);
            if let Flow::Close = self.perform(effects).await {
                return Flow::Close;
            }
        }
    }

    fn step(&mut self, input: Input<'_>) -> Vec<Effect> {
        let now = self.ctx.now_ms();
        let ctx = self.ctx.clone();
        self.session
            .on_input(now, input, &|vm: &str| ctx.lookup(vm))
    }

    async fn perform(&mut self, effects: Vec<Effect>) -> Flow {
        // Frames sent together with a close are the session's last: they go
        // past a full queue (a slow consumer still gets its `bye`).
        let closing = effects.iter().any(|e| matches!(e, Effect::Close(_)));
        let mut last_frames = Vec::new();
        for effect in effects {
            let written = match effect {
                Effect::Reply(reply) => {
                    self.write(format!("{}\n", reply.to_line()).as_bytes())
                        .await
                }
                Effect::Send(f) if closing && self.bus.is_some() => {
                    last_frames.extend_from_slice(&frame::encode(&f));
                    Ok(())
                }
                Effect::Send(f) => self.send(frame::encode(&f).into()).await,
                Effect::Record(record) => {
                    self.ctx.recorder.record(record, self.peer);
                    Ok(())
                }
                Effect::Publish { topic, payload, id } => self.publish(topic, payload, id).await,
                Effect::Subscribe(topic) => {
                    if let Some(bus) = &self.bus {
                        let _ = self.ctx.hub.try_send(HubMsg::Subscribe {
                            key: bus.key,
                            topic,
                        });
                    }
                    Ok(())
                }
                Effect::Unsubscribe(topic) => {
                    if let Some(bus) = &self.bus {
                        let _ = self.ctx.hub.try_send(HubMsg::Unsubscribe {
                            key: bus.key,
                            topic,
                        });
                    }
                    Ok(())
                }
                Effect::Close(_) => {
                    if let Some(bus) = &self.bus
                        && !last_frames.is_empty()
                    {
                        let bytes: Frame = std::mem::take(&mut last_frames).into();
                        if bus.queue.try_send(bytes.clone()).is_err() {
                            let _ = bus.last.try_send(bytes.to_vec());
                        }
                    }
                    return Flow::Close;
                }
            };
            if written.is_err() {
                // The peer is gone: close the session without writing more.
                for e in self.step(Input::PeerGone(Reason::IoError)) {
                    match e {
                        Effect::Record(record) => self.ctx.recorder.record(record, self.peer),
                        Effect::Reply(_)
                        | Effect::Send(_)
                        | Effect::Publish { .. }
                        | Effect::Subscribe(_)
                        | Effect::Unsubscribe(_)
                        | Effect::Close(_) => {}
                    }
                }
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    /// Enqueue a frame for the writer (waits while this session's queue is full).
    async fn send(&mut self, bytes: Frame) -> io::Result<()> {
        match &self.bus {
            Some(bus) => bus
                .queue
                .send(bytes)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "writer stopped")),
            None => self.write(&bytes).await,
        }
    }

    /// Hand a publish to the bus log; its ack comes back as a completion.
    async fn publish(
        &mut self,
        topic: String,
        payload: Value,
        id: Option<Value>,
    ) -> io::Result<()> {
        let (Some(bus), super::session::State::Open(open)) = (&self.bus, self.session.state())
        else {
            return Ok(());
        };
        let done_tx = bus.commits_tx.clone();
        let done_id = id.clone();
        let append = Append {
            vm: Some(open.vm.clone()),
            topic,
            payload,
            id,
            done: Box::new(move |result| {
                let _ = done_tx.try_send((done_id, result));
            }),
        };
        if self.ctx.bus_log.send(append).await.is_err() {
            let _ = bus.commits_tx.try_send((None, Err(Reason::StorageError)));
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = &mut self.stream;
        async { stream.write_all(bytes).await }
            .or(async {
                Timer::after(WRITE_TIMEOUT).await;
                Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"))
            })
            .await
    }

    /// Close politely: stop writing, then drain what the peer still sends
    /// (bounded in bytes and time) so the last reply is not lost to a reset.
    async fn linger(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let mut buf = [0u8; 4096];
        let mut drained = 0usize;
        let deadline = Instant::now() + Duration::from_millis(200);
        while drained < 64 * 1024 {
            let n = async { self.stream.read(&mut buf).await.unwrap_or(0) }
                .or(async {
                    Timer::at(deadline).await;
                    0
                })
                .await;
            if n == 0 {
                break;
            }
            drained += n;
        }
    }
}

/// What the writer task does next.
enum Next {
    Frame(Frame),
    Last(Vec<u8>),
    Done,
}

/// A session's writer: drain the outbound queue into the socket. When the
/// session's last frames arrive past a full queue, finish the frame in
/// flight and write them within [`FINAL_GRACE`], dropping what is queued.
/// A write stalled for [`WRITE_TIMEOUT`] ends the connection.
async fn write_frames(
    mut stream: TcpStream,
    queue: smol::channel::Receiver<Frame>,
    last: smol::channel::Receiver<Vec<u8>>,
) {
    let last_frames = || async {
        match last.recv().await {
            Ok(bytes) => Next::Last(bytes),
            Err(_) => std::future::pending().await,
        }
    };
    let ok = loop {
        let next = last_frames()
            .or(async {
                match queue.recv().await {
                    Ok(f) => Next::Frame(f),
                    Err(_) => Next::Done,
                }
            })
            .await;
        let (frame, interrupted) = match next {
            Next::Done => break true,
            Next::Last(bytes) => (Frame::from(bytes), None),
            Next::Frame(f) => {
                let mut off = 0;
                let mut interrupted = None;
                while off < f.len() {
                    let step = async { Ok(stream.write(&f[off..]).await) }
                        .or(async {
                            match last_frames().await {
                                Next::Last(b) => Err(b),
                                Next::Frame(_) | Next::Done => std::future::pending().await,
                            }
                        })
                        .or(async {
                            Timer::after(WRITE_TIMEOUT).await;
                            Ok(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "write timed out",
                            )))
                        })
                        .await;
                    match step {
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            let _ = stream.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        Ok(Ok(n)) => off += n,
                        Err(bytes) => {
                            interrupted = Some(bytes);
                            break;
                        }
                    }
                }
                match interrupted {
                    None => continue,
                    Some(bytes) => (f, Some((off, bytes))),
                }
            }
        };
        // The last frames: finish the interrupted frame first, then them.
        let mut tail = Vec::new();
        match interrupted {
            Some((off, bytes)) => {
                tail.extend_from_slice(&frame[off..]);
                tail.extend_from_slice(&bytes);
            }
            None => tail.extend_from_slice(&frame),
        }
        let done = async { stream.write_all(&tail).await.is_ok() }
            .or(async {
                Timer::after(FINAL_GRACE).await;
                false
            })
            .await;
        break done;
    };
    let how = if ok {
        std::net::Shutdown::Write
    } else {
        std::net::Shutdown::Both
    };
    let _ = stream.shutdown(how);
}
