//! Streams (exec, shell, cp): byte streams between a host tool and a guest's
//! agent, never bus messages. A host tool asks on the owner-only host socket
//! (`stream {"vm":...}`); the broker hands the VM's agent a `stream_open`
//! frame on its authenticated bus session; the agent opens a second TCP
//! connection (`hello vm:<vm> capabilities=stream-v1 token=<secret>
//! stream=<id>`); the broker checks it and splices the two sockets, with a
//! bounded buffer each way, so flow control is TCP's, end to end. Nothing of
//! a stream enters the bus log or a bus queue. Wire format: `wire.rs`;
//! who waits for what: `registry.rs`; the splice: `splice.rs`.
//! Only the host starts streams: guests have no request for one.

pub mod blocking;
pub(in crate::broker) mod registry;
mod splice;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_net::TcpStream;
use async_net::unix::UnixStream;
use futures_lite::{AsyncWriteExt, FutureExt};
use smol::Timer;

use super::context::Ctx;
use super::events::Event;
use super::stamp::log;
use super::token::{TokenLookup, tokens_match};
use super::wire::frame;
use super::wire::hello;
use wire::{Refusal, StreamOpen, StreamRequest};

/// How long the agent has to connect a stream it was asked for.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn new_stream_id() -> String {
    let mut bytes = [0u8; wire::STREAM_ID_LEN / 2];
    if getrandom::fill(&mut bytes).is_err() {
        // Without randomness a stream id could be guessed: refuse to make one.
        return String::new();
    }
    hex::encode(bytes)
}

async fn refuse_host(stream: &mut UnixStream, refusal: Refusal) {
    let _ = stream
        .write_all(format!("error: {}\n", refusal.as_str()).as_bytes())
        .await;
}

/// The host socket's `stream <json>` request (`rest`: bytes after the line).
pub(in crate::broker) async fn serve_host(
    ctx: Arc<Ctx>,
    mut host: UnixStream,
    body: &str,
    rest: Vec<u8>,
) {
    let req: StreamRequest = match serde_json::from_str::<StreamRequest>(body) {
        Ok(r) if hello::valid_vm_name(&r.vm) => r,
        _ => return refuse_host(&mut host, Refusal::BadRequest).await,
    };
    if !matches!(ctx.lookup(&req.vm), TokenLookup::Known(_)) {
        return refuse_host(&mut host, Refusal::UnknownVm).await;
    }
    let queue = match ctx.streams.agent_queue(&req.vm) {
        Ok(q) => q,
        Err(r) => return refuse_host(&mut host, r).await,
    };
    let id = new_stream_id();
    if id.is_empty() {
        return refuse_host(&mut host, Refusal::NotConnected).await;
    }
    let arrivals = ctx.streams.expect(&id, &req.vm);
    let open = frame::encode(&StreamOpen::new(&id));
    let asked = async { queue.send(open.into()).await.is_ok() }
        .or(async {
            Timer::after(CONNECT_TIMEOUT).await;
            false
        })
        .await;
    let arrived = if asked {
        async { arrivals.recv().await.ok() }
            .or(async {
                Timer::after(CONNECT_TIMEOUT).await;
                None
            })
            .await
    } else {
        None
    };
    let Some((agent, agent_rest)) = arrived else {
        ctx.streams.forget(&id);
        log(&format!(
            "stream {id} vm={}: the agent did not connect within {} s",
            req.vm,
            CONNECT_TIMEOUT.as_secs()
        ));
        return refuse_host(&mut host, Refusal::Timeout).await;
    };
    if host
        .write_all(format!("{}\n", wire::ok_line(&id)).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    ctx.recorder.event(Event::StreamOpened {
        vm: req.vm.clone(),
        stream: id.clone(),
        user: req.user.clone(),
    });
    let started = Instant::now();
    let done = splice::run(host, rest, agent, agent_rest).await;
    let request = done.request();
    ctx.recorder.event(Event::StreamClosed {
        vm: req.vm,
        stream: id,
        user: req.user,
        kind: request.0,
        argv: request.1,
        path: request.2,
        exit_code: done.to_host.exit_code(),
        duration_ms: done.ended.duration_since(started).as_millis() as u64,
        bytes_in: done.to_guest.data_bytes,
        bytes_out: done.to_host.data_bytes,
    });
}

/// A guest connection whose hello carries `stream=<id>` (`rest`: bytes
/// after the hello line): check it and hand it to the waiting host request.
pub(in crate::broker) async fn serve_agent(
    ctx: Arc<Ctx>,
    mut agent: TcpStream,
    peer: SocketAddr,
    line: &[u8],
    rest: Vec<u8>,
) {
    match accept(&ctx, line) {
        Ok((arrive, id)) => {
            let ok = format!("{}\n", wire::ok_line(&id));
            if agent.write_all(ok.as_bytes()).await.is_ok() {
                let _ = arrive.try_send((agent, rest));
            }
        }
        Err((refusal, vm)) => {
            log(&format!(
                "stream hello refused vm={} reason={} peer={peer}",
                vm.as_deref().unwrap_or("-"),
                refusal.as_str()
            ));
            ctx.recorder.event(Event::StreamRefused {
                vm,
                reason: refusal.as_str().to_owned(),
                peer: peer.to_string(),
            });
            let _ = agent
                .write_all(format!("error: {}\n", refusal.as_str()).as_bytes())
                .await;
        }
    }
}

type Accepted = (smol::channel::Sender<registry::Arrival>, String);

/// The decision on a stream hello: a valid hello with `stream-v1`, the VM's
/// token, and a pending stream issued to that VM.
fn accept(ctx: &Ctx, line: &[u8]) -> Result<Accepted, (Refusal, Option<String>)> {
    let hello = hello::parse(line).map_err(|_| (Refusal::UnknownStream, None))?;
    let vm = Some(hello.vm.clone());
    let id = wire::hello_stream(line).unwrap_or_default();
    if !hello.capabilities.iter().any(|c| c == wire::CAP_STREAM_V1) {
        return Err((Refusal::UnknownStream, vm));
    }
    let given = hello.token.as_deref().unwrap_or("");
    match ctx.lookup(&hello.vm) {
        TokenLookup::Known(secret) if tokens_match(secret.as_bytes(), given.as_bytes()) => {}
        _ => return Err((Refusal::UnknownStream, vm)),
    }
    let arrive = ctx
        .streams
        .claim(&id, &hello.vm)
        .map_err(|r| (r, vm.clone()))?;
    Ok((arrive, id))
}
