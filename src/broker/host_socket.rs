//! The broker's host socket (`<state_root>/broker/broker.sock`, 0600) for
//! host tools: one request line, then either one reply line (`status`,
//! `publish`) or, for `session`, a framed bus session exactly like a
//! guest's (served by `conn.rs`; `castra bus subscribe`). Guests never reach
//! it; their port is served by `server.rs`, which owns the shared context
//! this module borrows.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_net::unix::{UnixListener, UnixStream};
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use smol::Timer;

use super::buslog::Append;
use super::conn;
use super::context::{ConnGuard, Ctx, HOST_PUBLISH_TIMEOUT};
use super::session::Record;
use super::stamp::log;
use super::wire::frame::{AckKind, BrokerFrame};
use super::wire::hello::Reply;
use super::wire::line::{LinePush, LineReader};
use super::wire::reason::Reason;
pub use super::wire::request::{HOST_REQUEST_OVERHEAD, SESSION_REQUEST};
use super::wire::request::{HostPublish, HostRequest, parse_publish, parse_request};

pub(super) async fn accept_host(ctx: Arc<Ctx>, listener: UnixListener) {
    loop {
        let accepted = ctx.unless_stopped(listener.accept()).await;
        match accepted {
            None => return,
            Some(Ok((stream, _))) => {
                let guard = ConnGuard::new(&ctx.connections);
                let task_ctx = ctx.clone();
                ctx.spawn(async move {
                    let _guard = guard;
                    serve_host(task_ctx, stream).await;
                })
                .detach();
            }
            Some(Err(e)) => {
                log(&format!("accept on the host socket failed: {e}"));
                Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Host socket: one request line, one reply line (or a session).
///
/// - `session`: `ok session=<id>`, then bus frames both ways as on the
///   guest port (the host is the publisher, and may subscribe to any topic).
/// - `status`: the state snapshot as JSON.
/// - `publish {"topic":T,"payload":ANY,"id"?:ANY}`: a durable host publish;
///   the reply is the publish ack frame's JSON (`seq` when `status` is ok),
///   sent only after the append is synced.
/// - `stream {"vm":V,"user":U}`: `ok stream=<id>`, then the stream's frames
///   spliced to V's agent (`stream/`), or `error: <refusal>`.
/// - anything else: `error: unknown_request`.
async fn serve_host(ctx: Arc<Ctx>, mut stream: UnixStream) {
    let max = ctx.opts.frame_limit as usize + HOST_REQUEST_OVERHEAD;
    let mut reader = LineReader::new(max);
    let mut buf = vec![0u8; 16 * 1024];
    // One deadline for the whole line: a client trickling a byte at a time
    // does not hold the connection open past it.
    let deadline = Instant::now() + HOST_REQUEST_TIMEOUT;
    let (line, rest) = loop {
        let n = async { stream.read(&mut buf).await.ok() }
            .or(async {
                Timer::at(deadline).await;
                None
            })
            .await;
        match n {
            None | Some(0) => return,
            Some(n) => match reader.push(&buf[..n]) {
                LinePush::NeedMore => continue,
                LinePush::TooLong => {
                    let ack = BrokerFrame::ack_error(AckKind::Publish, Reason::FrameTooLarge, None);
                    let reply = serde_json::to_string(&ack).unwrap_or_default();
                    let _ = stream.write_all(format!("{reply}\n").as_bytes()).await;
                    return;
                }
                LinePush::Line { line, rest } => break (line, rest),
            },
        }
    };
    let reply = match parse_request(&line) {
        HostRequest::Session => {
            conn::serve_host_session(ctx, stream, HOST_PEER, rest).await;
            return;
        }
        HostRequest::Stream(body) => {
            super::stream::serve_host(ctx, stream, &body, rest).await;
            return;
        }
        HostRequest::Status => match ctx.recorder.status().await {
            Some(json) => json,
            None => Reply::Error(Reason::InternalError).to_line(),
        },
        HostRequest::Publish(body) => {
            let ack = host_publish(&ctx, &body).await;
            serde_json::to_string(&ack).unwrap_or_default()
        }
        HostRequest::Unknown => Reply::Error(Reason::UnknownRequest).to_line(),
    };
    let _ = stream.write_all(format!("{reply}\n").as_bytes()).await;
}

async fn host_publish(ctx: &Ctx, body: &str) -> BrokerFrame {
    let HostPublish { topic, payload, id } = match parse_publish(body, ctx.opts.frame_limit) {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    let (tx, rx) = smol::channel::bounded(1);
    let append = Append {
        vm: None,
        topic,
        payload,
        id: id.clone(),
        done: Box::new(move |r| {
            let _ = tx.try_send(r);
        }),
    };
    if ctx.bus_log.send(append).await.is_err() {
        return BrokerFrame::ack_error(AckKind::Publish, Reason::StorageError, id);
    }
    let result = async { rx.recv().await.unwrap_or(Err(Reason::StorageError)) }
        .or(async {
            Timer::after(HOST_PUBLISH_TIMEOUT).await;
            Err(Reason::StorageError)
        })
        .await;
    match result {
        Ok(seq) => {
            ctx.recorder
                .record(Record::Published { vm: None, seq }, HOST_PEER);
            BrokerFrame::ack_published(seq, id)
        }
        Err(reason) => BrokerFrame::ack_error(AckKind::Publish, reason, id),
    }
}

/// How long a host-socket client has to send its whole request line.
pub const HOST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The peer recorded for host-socket requests (they have no address).
const HOST_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
