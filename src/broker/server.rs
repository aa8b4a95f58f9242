//! The broker process (`castra broker`): smol + async-net. Listens on
//! 127.0.0.1:<port> for guests and on `<state_root>/broker/broker.sock`
//! (0600) for host tools (served by `host_socket.rs`); runs one task per
//! connection (`conn.rs`: the session machine's effects, the writer task);
//! stops on SIGTERM/SIGINT after sending `bye shutdown` to every session.
//! What the protocol means is in `session`; what is recorded and written is
//! in `recorder`; publishes are made durable by `buslog` and fanned out by
//! `hub`. This module owns the shared context, the listeners and the
//! broker's start and stop.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_net::unix::UnixListener;
use async_net::{TcpListener, TcpStream};
use futures_lite::{AsyncWriteExt, FutureExt};
use smol::Timer;

use super::buslog::{self};
use super::conn;
use super::context::{BrokerOptions, ConnGuard, Ctx, SHUTDOWN_GRACE};
use super::events::Event;
use super::host_socket;
use super::hub::{self, Hub, HubMsg};
use super::recorder::Recorder;
use super::stamp::{log, unix_ms};
use super::state::{BrokerSnapshot, read_snapshot};
use super::wire::hello::{GREETING, Reply};
use super::wire::reason::Reason;
use crate::layout::{MAX_SOCKET_PATH, StateLayout};

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
    // libvirt hosts ([hosts.NAME]): keep their snapshots fresh for status.
    super::hosts_poller::spawn(&layout);

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
        Box::new(move |batch: Vec<buslog::Committed>| {
            let _ = deliver_tx.try_send(HubMsg::DeliverAll(batch));
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
    let tasks = Arc::new(smol::Executor::new());
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
        tasks: tasks.clone(),
        streams: Default::default(),
        pending: Default::default(),
    });
    ctx.spawn(hub::run(hub, hub_rx, ctx.recorder.clone()))
        .detach();
    smol::block_on(tasks.run(async {
        accept_guests(ctx.clone(), tcp)
            .or(host_socket::accept_host(ctx.clone(), unix))
            .await;
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while ctx.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            Timer::after(Duration::from_millis(10)).await;
        }
    }));
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

async fn accept_guests(ctx: Arc<Ctx>, listener: TcpListener) {
    loop {
        let accepted = ctx.unless_stopped(listener.accept()).await;
        match accepted {
            None => return,
            Some(Ok((stream, peer))) => {
                // At the cap, the oldest connection still in its hello
                // makes room; only when there is none is this one refused.
                if ctx.connections.load(Ordering::SeqCst) >= ctx.opts.max_connections
                    && !ctx.pending.evict_oldest()
                {
                    ctx.spawn(refuse(stream, Reason::TooManyConnections))
                        .detach();
                    continue;
                }
                let guard = ConnGuard::new(&ctx.connections);
                let task_ctx = ctx.clone();
                ctx.spawn(async move {
                    let _guard = guard;
                    conn::serve_guest(task_ctx, stream, peer).await;
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
