//! One bus connection, guest (TCP) or host (Unix socket): the task that
//! feeds the pure [`Session`] machine and carries out its effects. The
//! socket and its reads are `socket.rs`'s; the writer task that drains the
//! session's outbound queue into the socket is `outbound.rs`'s.
//! Accepting connections, the shared context and the broker's lifecycle are
//! `server.rs`'s; what the protocol means is `session.rs`'s.
//!
//! An open session has three queues: the hub's bounded delivery queue (the
//! hub only `try_send`s into it), the connection task that takes deliveries
//! from it only while the session's unacked window is open, and the bounded
//! outbound queue of the writer task. A stalled peer therefore stalls only
//! its own writer; a consumer that stops acking leaves its deliveries in the
//! hub queue until the hub's retries give up (`slow_consumer`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_net::TcpStream;
use async_net::unix::UnixStream;

use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use smol::Timer;

use serde_json::Value;

use super::buslog::Append;
use super::context::{Ctx, DENIAL_DELAY, DENIAL_DELAY_REASONS, FINAL_GRACE, WRITE_TIMEOUT};
use super::hub::{Delivery, Frame, HubMsg};
use super::session::{Effect, Input, Session, State};
use super::stamp::unix_ms;
use super::wire::frame::{self, ClientFrame, Decoder};
use super::wire::hello::{GREETING, MAX_HELLO_LINE, Reply};
use super::wire::line::{LinePush, LineReader};
use super::wire::reason::Reason;

mod outbound;
mod socket;
mod wait;

use outbound::{Cork, write_frames};
use socket::{Reader, Stream};

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
    Deliver(Delivery),
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
    /// The hub's bounded delivery queue (taken from while the window is open).
    /// The receivers are pinned: polled as streams, each keeps its listener.
    deliveries: Pin<Box<smol::channel::Receiver<Delivery>>>,
    /// Bounded outbound queue, drained by the writer task.
    queue: smol::channel::Sender<Frame>,
    /// The last frames, handed past a full queue when the session closes.
    last: smol::channel::Sender<Vec<u8>>,
    commits_tx: smol::channel::Sender<Completion>,
    commits: Pin<Box<smol::channel::Receiver<Completion>>>,
    evicted: Pin<Box<smol::channel::Receiver<Reason>>>,
    writer: smol::Task<()>,
    /// The writer task holds frames it has not finished writing.
    writing: Arc<AtomicBool>,
}

struct Conn<S: Stream> {
    ctx: Arc<Ctx>,
    stream: S,
    reader: Reader<S::Raw>,
    peer: SocketAddr,
    session: Session,
    bus: Option<BusLink>,
    /// The session's deadline timer, kept across waits: it is set again
    /// only when the deadline moves earlier than where it is set or after
    /// it fired (a tick before the deadline is harmless), not on every
    /// frame, since each setting is a round trip through the reactor.
    tick: Timer,
    tick_at: Option<Instant>,
    /// The hello's capabilities (an `exec-v1` agent can be asked for streams).
    caps: Vec<String>,
    /// The broker's shutdown signal (closed when it stops).
    stop: Pin<Box<smol::channel::Receiver<()>>>,
    /// Frames of this turn, not written yet.
    cork: Cork,
    /// Publishes handed to the bus log whose completion has not come back:
    /// at `MAX_PUBLISHES_IN_FLIGHT` the session stops reading its socket.
    publishing: usize,
}

/// How the hello phase ended.
enum Hello {
    /// A bus session is open; the bytes after the hello line.
    Bus(Vec<u8>),
    /// A stream connection (`stream=<id>`): its hello line and what followed.
    Stream(Vec<u8>, Vec<u8>),
    Done,
    /// Closed to make room at the connection cap (`pending.rs`).
    Evicted,
}

impl<S: Stream> Conn<S> {
    /// A new connection with a fresh session, not on the bus yet.
    fn new(ctx: Arc<Ctx>, stream: S, peer: SocketAddr) -> Conn<S> {
        let session = Session::new(new_session_id(), ctx.opts.session, ctx.now_ms());
        Conn {
            stop: Box::pin(ctx.shutdown.clone()),
            ctx,
            reader: Reader::new(stream.source()),
            stream,
            peer,
            session,
            bus: None,
            tick: Timer::never(),
            tick_at: None,
            caps: Vec::new(),
            cork: Cork::default(),
            publishing: 0,
        }
    }
}

/// Serve a guest connection from the greeting to the close.
pub(super) async fn serve_guest(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(ctx, stream, peer);
    if conn
        .write(format!("{GREETING}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    // Until the hello is done, the connection may be told to make room.
    let (ticket, evicted) = conn.ctx.pending.enter();
    let hello = super::pending::unless_evicted(&evicted, conn.hello_phase()).await;
    drop(ticket);
    match hello.unwrap_or(Hello::Evicted) {
        Hello::Evicted => {
            let refusal = Reply::Error(Reason::TooManyConnections).to_line();
            let _ = conn.write(format!("{refusal}\n").as_bytes()).await;
        }
        Hello::Bus(rest) => {
            conn.open_bus();
            conn.frame_phase(&rest).await;
            conn.close_bus().await;
        }
        Hello::Stream(line, rest) => {
            let (ctx, stream) = (conn.ctx.clone(), conn.stream.clone());
            drop(conn);
            return super::stream::serve_agent(ctx, stream, peer, &line, rest).await;
        }
        Hello::Done => {}
    }
    conn.linger().await;
}

/// Serve a host session on the Unix socket once its request line was read
/// (`rest`: the bytes after it); recorded with `peer`.
pub(super) async fn serve_host_session(
    ctx: Arc<Ctx>,
    stream: UnixStream,
    peer: SocketAddr,
    rest: Vec<u8>,
) {
    let mut conn = Conn::new(ctx, stream, peer);
    let effects = conn.step(Input::HostSession);
    if let Flow::Continue = conn.perform(effects).await
        && let State::Open(_) = conn.session.state()
    {
        conn.open_bus();
        conn.frame_phase(&rest).await;
        conn.close_bus().await;
    }
    conn.linger().await;
}

impl<S: Stream> Conn<S> {
    fn input_for(wake: Wake) -> Result<Input<'static>, usize> {
        match wake {
            Wake::Read(Ok(0)) => Ok(Input::PeerGone(Reason::PeerClosed)),
            Wake::Read(Ok(n)) => Err(n),
            Wake::Read(Err(_)) => Ok(Input::PeerGone(Reason::IoError)),
            Wake::Tick => Ok(Input::Tick),
            Wake::Shutdown => Ok(Input::Shutdown),
            Wake::Committed(id, result) => Ok(Input::Committed { id, result }),
            Wake::Evicted(reason) => Ok(Input::Evict(reason)),
            Wake::Deliver(d) => Ok(Input::Deliver {
                seq: d.seq,
                frame: d.frame,
            }),
        }
    }

    /// Read the hello line; a bus session (the bytes after the line), a
    /// stream connection (left to `stream/`), or done.
    async fn hello_phase(&mut self) -> Hello {
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
                        if super::stream::wire::hello_stream(&line).is_some() {
                            return Hello::Stream(line, after);
                        }
                        if let Ok(h) = super::wire::hello::parse(&line) {
                            self.caps = h.capabilities;
                        }
                        rest = after;
                        self.step(Input::Line(&line))
                    }
                },
            };
            match self.perform(effects).await {
                Flow::Close => return Hello::Done,
                Flow::Continue if self.session.is_terminal() => return Hello::Done,
                Flow::Continue => match self.session.state() {
                    State::Open(_) => return Hello::Bus(rest),
                    State::AwaitingHello { .. }
                    | State::HandshakeOnly { .. }
                    | State::Denied { .. }
                    | State::Closed { .. } => {}
                },
            }
        }
    }

    /// Start the writer task and register the session with the hub.
    fn open_bus(&mut self) {
        let State::Open(open) = self.session.state() else {
            return;
        };
        let (vm, session) = (open.vm.clone(), open.session.clone());
        let key = self.ctx.next_key.fetch_add(1, Ordering::Relaxed);
        let (queue, queue_rx) = smol::channel::bounded(self.ctx.opts.hub.queue_frames.max(1));
        let (deliver, deliveries) = smol::channel::bounded(self.ctx.opts.hub.queue_frames.max(1));
        let (last, last_rx) = smol::channel::bounded(1);
        let (evict, evicted) = smol::channel::bounded(1);
        let (commits_tx, commits) = smol::channel::unbounded();
        let writing = Arc::new(AtomicBool::new(false));
        let writer = self.ctx.spawn(write_frames(
            self.stream.clone(),
            queue_rx,
            last_rx,
            writing.clone(),
        ));
        if vm != super::session::HOST {
            let exec = self
                .caps
                .iter()
                .any(|c| c == super::stream::wire::CAP_EXEC_V1);
            self.ctx.streams.add_agent(key, &vm, exec, queue.clone());
        }
        let _ = self.ctx.hub.try_send(HubMsg::Register {
            key,
            vm,
            session,
            peer: self.peer,
            queue: deliver,
            evict,
        });
        self.bus = Some(BusLink {
            key,
            deliveries: Box::pin(deliveries),
            queue,
            last,
            commits_tx,
            commits: Box::pin(commits),
            evicted: Box::pin(evicted),
            writer,
            writing,
        });
    }

    /// Forget the session in the hub and let its writer finish.
    async fn close_bus(&mut self) {
        let Some(bus) = self.bus.take() else {
            return;
        };
        let _ = self.ctx.hub.try_send(HubMsg::Unregister { key: bus.key });
        self.ctx.streams.remove_agent(bus.key);
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
            // The end of a turn: what it produced goes out in one write.
            if self.flush().await.is_err() {
                self.peer_gone();
                return;
            }
            let wake = self.wait(&mut buf).await;
            let (delivered, committed) = (
                matches!(wake, Wake::Deliver(_)),
                matches!(wake, Wake::Committed(..)),
            );
            if committed {
                self.publishing = self.publishing.saturating_sub(1);
            }
            let flow = match Self::input_for(wake) {
                Ok(input) => {
                    let effects = self.step(input);
                    match self.perform(effects).await {
                        Flow::Continue if delivered => self.deliver_ready().await,
                        Flow::Continue if committed => self.complete_ready().await,
                        flow => flow,
                    }
                }
                Err(n) => self.feed(&mut decoder, &buf[..n]).await,
            };
            if let Flow::Close = flow {
                return;
            }
        }
    }

    /// Take the other completions of the same commit (their acks go out
    /// together at the end of the turn).
    async fn complete_ready(&mut self) -> Flow {
        while let Some(Ok((id, result))) = self.bus.as_ref().map(|b| b.commits.try_recv()) {
            // Each completion frees its place, however it was taken.
            self.publishing = self.publishing.saturating_sub(1);
            let effects = self.step(Input::Committed { id, result });
            if let Flow::Close = self.perform(effects).await {
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    /// Take the deliveries already queued, while the window stays open.
    async fn deliver_ready(&mut self) -> Flow {
        while self.session.can_deliver() {
            let Some(Ok(d)) = self.bus.as_ref().map(|b| b.deliveries.try_recv()) else {
                break;
            };
            let effects = self.step(Input::Deliver {
                seq: d.seq,
                frame: d.frame,
            });
            if let Flow::Close = self.perform(effects).await {
                return Flow::Close;
            }
        }
        Flow::Continue
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
                    if let Reply::Error(reason) = &reply
                        && DENIAL_DELAY_REASONS.contains(reason)
                    {
                        Timer::after(DENIAL_DELAY).await;
                    }
                    self.write(format!("{}\n", reply.to_line()).as_bytes())
                        .await
                }
                Effect::Send(f) if closing && self.bus.is_some() => {
                    last_frames.extend_from_slice(&frame::encode(&f));
                    Ok(())
                }
                Effect::Send(f) => self.send(frame::encode(&f).into()).await,
                Effect::Deliver { frame, .. } => self.send(frame).await,
                Effect::Record(record) => {
                    self.ctx.recorder.record(record, self.peer);
                    Ok(())
                }
                Effect::Publish { topic, payload, id } => self.publish(topic, payload, id).await,
                Effect::Subscribe(topic) => {
                    self.tell_hub(|key| HubMsg::Subscribe { key, topic });
                    Ok(())
                }
                Effect::Unsubscribe(topic) => {
                    self.tell_hub(|key| HubMsg::Unsubscribe { key, topic });
                    Ok(())
                }
                Effect::Close(_) => {
                    let mut corked = self.cork.take();
                    if !corked.is_empty() {
                        corked.extend_from_slice(&last_frames);
                        last_frames = corked;
                    }
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
                return self.peer_gone();
            }
        }
        Flow::Continue
    }

    /// The peer is gone: close the session without writing more.
    fn peer_gone(&mut self) -> Flow {
        for e in self.step(Input::PeerGone(Reason::IoError)) {
            match e {
                Effect::Record(record) => self.ctx.recorder.record(record, self.peer),
                Effect::Reply(_)
                | Effect::Send(_)
                | Effect::Deliver { .. }
                | Effect::Publish { .. }
                | Effect::Subscribe(_)
                | Effect::Unsubscribe(_)
                | Effect::Close(_) => {}
            }
        }
        Flow::Close
    }

    /// A subscription change for the hub, keyed by this session's bus key
    /// (nothing to tell while the session has no hub registration).
    fn tell_hub(&self, msg: impl FnOnce(u64) -> HubMsg) {
        if let Some(bus) = &self.bus {
            let _ = self.ctx.hub.try_send(msg(bus.key));
        }
    }

    /// A frame for the peer, written with the others of this turn at its
    /// end ([`Conn::flush`]).
    async fn send(&mut self, bytes: Frame) -> io::Result<()> {
        if self.bus.is_none() {
            return self.write(&bytes).await;
        }
        if self.cork.push(&bytes) {
            return self.flush().await;
        }
        Ok(())
    }

    /// Write the frames of this turn ([`Cork`]).
    async fn flush(&mut self) -> io::Result<()> {
        match &self.bus {
            Some(bus) => {
                self.cork
                    .flush(&self.reader, &bus.queue, &bus.writing)
                    .await
            }
            None => Ok(()),
        }
    }

    /// Hand a publish to the bus log; its ack comes back as a completion.
    async fn publish(
        &mut self,
        topic: String,
        payload: Value,
        id: Option<Value>,
    ) -> io::Result<()> {
        let (Some(bus), State::Open(open)) = (&self.bus, self.session.state()) else {
            return Ok(());
        };
        let publisher = open.publisher().map(str::to_owned);
        let done_tx = bus.commits_tx.clone();
        let done_id = id.clone();
        let append = Append {
            vm: publisher,
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
        self.publishing += 1;
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
        let _ = self.stream.end(std::net::Shutdown::Write);
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
