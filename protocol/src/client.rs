//! The async kernel client.
//!
//! One [`KernelClient`] owns the five sockets of one kernel:
//! - shell and control: DEALERs; replies are routed by the `msg_id` of the
//!   request this client sent;
//! - stdin: a DEALER with the same ZeroMQ identity as shell, so the kernel's
//!   ROUTER sends `input_request`s to it;
//! - iopub: a SUB subscribed to everything, drained by its own task so the
//!   kernel never blocks on a slow consumer;
//! - heartbeat: a REQ used on demand by [`KernelClient::ping`].
//!
//! Every received frame is decoded with the caps in [`Limits`] and verified;
//! a bad one produces a log line and is dropped. Messages are delivered to a
//! [`Subscription`] only when their parent `msg_id` is one this client issued.
//! All messages, routed or not, are also offered to [`KernelClient::subscribe_all`].

use crate::connection::ConnectionInfo;
use crate::message::{
    Channel, Content, ExecuteReply, ExecuteRequest, InputReply, KernelInfoReply, Message, Shutdown,
};
use crate::wire::{Limits, Signer, WireError};
use bytes::Bytes;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use zeromq::{
    util::PeerIdentity, DealerSendHalf, DealerSocket, ReqSocket, Socket, SocketOptions, SocketRecv,
    SocketSend, SubSocket, ZmqMessage,
};

/// Errors from the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("socket file {0} did not appear in time")]
    SocketMissing(String),
    #[error("connecting {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: zeromq::ZmqError,
    },
    #[error("sending on {channel:?}: {source}")]
    Send {
        channel: Channel,
        #[source]
        source: zeromq::ZmqError,
    },
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("the client is closed")]
    Closed,
    #[error("bad connection key: {0}")]
    Key(#[from] WireError),
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

/// A message delivered to a subscription, with the channel it came on.
pub type Routed = (Channel, Message);

/// A routed message with its share of the subscription's byte budget.
type Queued = (Routed, OwnedSemaphorePermit);

/// Where messages for one request go.
#[derive(Clone)]
struct Route {
    tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
}

/// Options for [`KernelClient::connect`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Caps on every received message.
    pub limits: Limits,
    /// How long to wait for socket files and handshakes.
    pub connect_timeout: Duration,
    /// Queue length per subscription before the channel task waits.
    pub route_capacity: usize,
    /// Bytes queued per subscription before the channel task waits, so a
    /// flood of large messages cannot pile up in memory when the consumer
    /// is slower than the kernel (the kernel then waits instead).
    pub route_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(30),
            route_capacity: 4096,
            route_bytes: 8 << 20,
        }
    }
}

struct Inner {
    signer: Signer,
    session: String,
    username: String,
    limits: Limits,
    route_capacity: usize,
    route_bytes: usize,
    shell: tokio::sync::Mutex<DealerSendHalf>,
    control: tokio::sync::Mutex<DealerSendHalf>,
    stdin: tokio::sync::Mutex<DealerSendHalf>,
    hb: tokio::sync::Mutex<Option<ReqSocket>>,
    hb_endpoint: String,
    routes: Mutex<HashMap<String, Route>>,
    all: broadcast::Sender<Arc<Routed>>,
    closed: AtomicBool,
    /// Set once an `iopub_welcome` or any iopub message has arrived.
    iopub_seen: watch::Sender<bool>,
}

impl Inner {
    fn lock_routes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        // A poisoned map is still a valid map: recover it.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.lock_routes().clear();
    }

    async fn dispatch(&self, channel: Channel, msg: Message, size: usize) {
        if channel == Channel::Iopub {
            self.iopub_seen.send_replace(true);
        }
        let route = msg
            .parent_msg_id()
            .and_then(|id| self.lock_routes().get(id).cloned());
        if self.all.receiver_count() > 0 {
            let _ = self.all.send(Arc::new((channel, msg.clone())));
        }
        if let Some(route) = route {
            // Wait until the subscription has room for this many bytes.
            let n = size.clamp(1, self.route_bytes) as u32;
            let Ok(permit) = route.budget.acquire_many_owned(n).await else {
                return;
            };
            // A dropped subscription simply stops receiving.
            let _ = route.tx.send(((channel, msg), permit)).await;
        }
    }
}

/// Aborts the channel tasks when the client is dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// An async client for one kernel. Dropping it closes the sockets.
pub struct KernelClient {
    inner: Arc<Inner>,
    _tasks: Tasks,
}

impl Drop for KernelClient {
    fn drop(&mut self) {
        self.inner.close();
    }
}

impl std::fmt::Debug for KernelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelClient")
            .field("session", &self.inner.session)
            .finish_non_exhaustive()
    }
}

async fn wait_for_socket_file(path: &str, deadline: Instant) -> Result<(), ClientError> {
    loop {
        if Path::new(path).exists() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ClientError::SocketMissing(path.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

async fn connect_socket<S: Socket>(
    socket: &mut S,
    info: &ConnectionInfo,
    port: u16,
    deadline: Instant,
) -> Result<(), ClientError> {
    if let Some(path) = info.ipc_path(port) {
        wait_for_socket_file(&path, deadline).await?;
    }
    let endpoint = info.endpoint(port);
    socket
        .connect(&endpoint)
        .await
        .map_err(|source| ClientError::Connect { endpoint, source })
}

impl KernelClient {
    /// Connects to every socket of a kernel. For ipc, waits for the socket
    /// files first (zeromq's own connect retries with a slow backoff).
    pub async fn connect(info: &ConnectionInfo, opts: ClientOptions) -> Result<Self, ClientError> {
        let signer = Signer::new(info.key.as_bytes())?;
        let session = uuid::Uuid::new_v4().to_string();
        let deadline = Instant::now() + opts.connect_timeout;
        let identity = PeerIdentity::try_from(session.as_bytes().to_vec())
            .map_err(|_| ClientError::Unexpected("session id is not a valid identity".into()))?;
        let dealer_opts = |id: Option<PeerIdentity>| {
            let mut o = SocketOptions::default();
            o.connect_timeout(opts.connect_timeout);
            if let Some(id) = id {
                o.peer_identity(id);
            }
            o
        };

        let mut iopub = SubSocket::with_options(dealer_opts(None));
        connect_socket(&mut iopub, info, info.iopub_port, deadline).await?;
        iopub
            .subscribe("")
            .await
            .map_err(|source| ClientError::Connect {
                endpoint: info.endpoint(info.iopub_port),
                source,
            })?;
        let mut shell = DealerSocket::with_options(dealer_opts(Some(identity.clone())));
        connect_socket(&mut shell, info, info.shell_port, deadline).await?;
        let mut stdin = DealerSocket::with_options(dealer_opts(Some(identity)));
        connect_socket(&mut stdin, info, info.stdin_port, deadline).await?;
        let mut control = DealerSocket::with_options(dealer_opts(None));
        connect_socket(&mut control, info, info.control_port, deadline).await?;
        if let Some(path) = info.ipc_path(info.hb_port) {
            wait_for_socket_file(&path, deadline).await?;
        }

        let (shell_tx, shell_rx) = shell.split();
        let (stdin_tx, stdin_rx) = stdin.split();
        let (control_tx, control_rx) = control.split();
        let (all, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            signer,
            session,
            username: "cellblock".to_owned(),
            limits: opts.limits,
            route_capacity: opts.route_capacity.max(1),
            route_bytes: opts.route_bytes.clamp(1, u32::MAX as usize),
            shell: tokio::sync::Mutex::new(shell_tx),
            control: tokio::sync::Mutex::new(control_tx),
            stdin: tokio::sync::Mutex::new(stdin_tx),
            hb: tokio::sync::Mutex::new(None),
            hb_endpoint: info.endpoint(info.hb_port),
            routes: Mutex::new(HashMap::new()),
            all,
            closed: AtomicBool::new(false),
            iopub_seen: watch::channel(false).0,
        });
        let tasks = vec![
            tokio::spawn(recv_loop(inner.clone(), Channel::Iopub, iopub)),
            tokio::spawn(recv_loop(inner.clone(), Channel::Shell, shell_rx)),
            tokio::spawn(recv_loop(inner.clone(), Channel::Stdin, stdin_rx)),
            tokio::spawn(recv_loop(inner.clone(), Channel::Control, control_rx)),
        ];
        Ok(Self {
            inner,
            _tasks: Tasks(tasks),
        })
    }

    /// This client's session id.
    pub fn session(&self) -> &str {
        &self.inner.session
    }

    /// Every message received on any channel, routed or not.
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<Routed>> {
        self.inner.all.subscribe()
    }

    /// Builds a message from this client's session.
    pub fn new_message(&self, content: Content) -> Message {
        Message::new(content, &self.inner.session, &self.inner.username)
    }

    /// Sends a message as is on a channel. The caller owns routing.
    pub async fn send(&self, channel: Channel, msg: &Message) -> Result<(), ClientError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(ClientError::Closed);
        }
        let frames = msg.to_frames(&self.inner.signer, &[]);
        let zmsg = ZmqMessage::try_from(frames)
            .map_err(|_| ClientError::Unexpected("empty message".into()))?;
        let socket = match channel {
            Channel::Shell => &self.inner.shell,
            Channel::Control => &self.inner.control,
            Channel::Stdin => &self.inner.stdin,
            Channel::Iopub => return Err(ClientError::Unexpected("cannot send on iopub".into())),
        };
        socket
            .lock()
            .await
            .send(zmsg)
            .await
            .map_err(|source| ClientError::Send { channel, source })
    }

    /// Sends a request and subscribes to everything whose parent is it.
    pub async fn request(
        &self,
        channel: Channel,
        content: Content,
    ) -> Result<Subscription, ClientError> {
        self.request_with_buffers(channel, content, Vec::new())
            .await
    }

    /// [`Client::request`] with binary buffers (comms, widgets).
    pub async fn request_with_buffers(
        &self,
        channel: Channel,
        content: Content,
        buffers: Vec<bytes::Bytes>,
    ) -> Result<Subscription, ClientError> {
        let mut msg = self.new_message(content);
        msg.buffers = buffers;
        let (tx, rx) = mpsc::channel(self.inner.route_capacity);
        let msg_id = msg.header.msg_id.clone();
        let budget = Arc::new(Semaphore::new(self.inner.route_bytes));
        self.inner
            .lock_routes()
            .insert(msg_id.clone(), Route { tx, budget });
        let sub = Subscription {
            msg_id,
            header: msg.header.clone(),
            rx,
            inner: self.inner.clone(),
        };
        self.send(channel, &msg).await?;
        Ok(sub)
    }

    /// Starts an execution. Its events come from [`Execution::next`].
    pub async fn execute(&self, req: ExecuteRequest) -> Result<Execution, ClientError> {
        let sub = self
            .request(Channel::Shell, Content::ExecuteRequest(req))
            .await?;
        Ok(Execution {
            sub,
            reply: None,
            idle: false,
        })
    }

    /// Answers an `input_request` received by `execution`.
    pub async fn send_input(
        &self,
        execution: &Execution,
        value: String,
    ) -> Result<(), ClientError> {
        let mut msg = self.new_message(Content::InputReply(InputReply { value }));
        msg.parent_header = serde_json::to_value(&execution.sub.header)
            .map_err(|e| ClientError::Unexpected(e.to_string()))?;
        self.send(Channel::Stdin, &msg).await
    }

    /// Sends `kernel_info_request` and waits for the reply.
    pub async fn kernel_info(&self, timeout: Duration) -> Result<KernelInfoReply, ClientError> {
        let mut sub = self
            .request(Channel::Shell, Content::KernelInfoRequest)
            .await?;
        match sub
            .reply(Channel::Shell, timeout, "kernel_info_reply")
            .await?
        {
            Content::KernelInfoReply(r) => Ok(*r),
            other => Err(ClientError::Unexpected(other.msg_type().to_owned())),
        }
    }

    /// Waits until the kernel answers on shell and iopub is flowing, so no
    /// output is lost to the slow-joiner problem. Accepts ipykernel 7's
    /// `iopub_welcome`, or a `kernel_info` reply plus any iopub message (ipykernel 6).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<KernelInfoReply, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut seen = self.inner.iopub_seen.subscribe();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout("kernel readiness"));
            }
            let per_try = left.min(Duration::from_millis(1000));
            match self.kernel_info(per_try).await {
                Ok(info) => {
                    let wait = left.min(Duration::from_millis(250));
                    let ok = tokio::time::timeout(wait, seen.wait_for(|s| *s)).await;
                    if matches!(ok, Ok(Ok(_))) {
                        return Ok(info);
                    }
                }
                Err(ClientError::Timeout(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `shutdown_request` on control and waits briefly for the reply.
    pub async fn shutdown(&self, restart: bool, timeout: Duration) -> Result<(), ClientError> {
        let content = Content::ShutdownRequest(Shutdown {
            restart,
            extra: Default::default(),
        });
        let mut sub = self.request(Channel::Control, content).await?;
        sub.reply(Channel::Control, timeout, "shutdown_reply")
            .await
            .map(|_| ())
    }

    /// Sends `interrupt_request` on control. Only kernels whose kernelspec
    /// says `interrupt_mode: message` act on it; others need SIGINT.
    pub async fn interrupt(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut sub = self
            .request(Channel::Control, Content::InterruptRequest)
            .await?;
        sub.reply(Channel::Control, timeout, "interrupt_reply")
            .await
            .map(|_| ())
    }

    /// One heartbeat round trip.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, ClientError> {
        let mut guard = self.inner.hb.lock().await;
        let start = Instant::now();
        let result = tokio::time::timeout(timeout, async {
            if guard.is_none() {
                let mut req = ReqSocket::new();
                req.connect(&self.inner.hb_endpoint)
                    .await
                    .map_err(|source| ClientError::Connect {
                        endpoint: self.inner.hb_endpoint.clone(),
                        source,
                    })?;
                *guard = Some(req);
            }
            let req = guard.as_mut().ok_or(ClientError::Closed)?;
            req.send(ZmqMessage::from(b"ping".to_vec()))
                .await
                .map_err(|source| ClientError::Send {
                    channel: Channel::Shell,
                    source,
                })?;
            req.recv()
                .await
                .map_err(|e| ClientError::Unexpected(format!("heartbeat: {e}")))
        })
        .await;
        match result {
            Ok(Ok(_)) => Ok(start.elapsed()),
            Ok(Err(e)) => {
                *guard = None;
                Err(e)
            }
            Err(_) => {
                // A REQ with an unanswered request cannot send again: rebuild it.
                *guard = None;
                Err(ClientError::Timeout("heartbeat"))
            }
        }
    }
}

async fn recv_loop<S: SocketRecv>(inner: Arc<Inner>, channel: Channel, mut socket: S) {
    loop {
        let zmsg = match socket.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(?channel, error = %e, "kernel socket closed");
                break;
            }
        };
        let frames: Vec<Bytes> = zmsg.into_vec();
        let size = frames.iter().map(Bytes::len).sum();
        match Message::from_frames(frames, &inner.signer, &inner.limits) {
            Ok((_idents, msg)) => inner.dispatch(channel, msg, size).await,
            Err(e) => tracing::warn!(?channel, error = %e, "dropped a bad frame from the kernel"),
        }
    }
    inner.close();
}

/// Messages whose parent is one request this client sent.
/// Dropping it stops delivery.
pub struct Subscription {
    msg_id: String,
    header: crate::message::Header,
    rx: mpsc::Receiver<Queued>,
    inner: Arc<Inner>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.inner.lock_routes().remove(&self.msg_id);
    }
}

impl Subscription {
    /// The `msg_id` of the request.
    pub fn msg_id(&self) -> &str {
        &self.msg_id
    }

    /// The next message, or `None` when the client closed.
    pub async fn recv(&mut self) -> Option<Routed> {
        // The permit is dropped here: the bytes are the consumer's now.
        self.rx.recv().await.map(|(routed, _permit)| routed)
    }

    /// Waits for the reply of type `want` on `channel`, skipping other messages.
    pub async fn reply(
        &mut self,
        channel: Channel,
        timeout: Duration,
        want: &'static str,
    ) -> Result<Content, ClientError> {
        let fut = async {
            while let Some((ch, msg)) = self.recv().await {
                if ch == channel && msg.msg_type() == want {
                    return Ok(msg.content);
                }
            }
            Err(ClientError::Closed)
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout(want))?
    }
}

/// What an execution produced next.
#[derive(Debug, Clone)]
pub enum ExecutionEvent {
    /// A message on iopub whose parent is this execution (streams, displays,
    /// results, errors, status, `execute_input`, …).
    Iopub(Message),
    /// The `execute_reply` on shell (the whole message; its content is
    /// also kept, see [`Execution::reply`]).
    Reply(Message),
    /// An `input_request` on stdin.
    InputRequest(Message),
    /// Anything else routed to this execution.
    Other(Channel, Message),
}

/// A running execution. It is complete when both the `execute_reply` and the
/// iopub `status: idle` for it have arrived, in either order.
pub struct Execution {
    sub: Subscription,
    reply: Option<ExecuteReply>,
    idle: bool,
}

impl Execution {
    /// The `msg_id` of the `execute_request`.
    pub fn msg_id(&self) -> &str {
        self.sub.msg_id()
    }

    /// True once both the reply and the idle status have arrived.
    pub fn is_complete(&self) -> bool {
        self.reply.is_some() && self.idle
    }

    /// True once the iopub `status: idle` for this request has arrived.
    pub fn went_idle(&self) -> bool {
        self.idle
    }

    /// The `execute_reply`, once it has arrived.
    pub fn reply(&self) -> Option<&ExecuteReply> {
        self.reply.as_ref()
    }

    /// The next event, or `None` when complete or when the client closed
    /// (tell them apart with [`Execution::is_complete`]).
    pub async fn next(&mut self) -> Option<ExecutionEvent> {
        if self.is_complete() {
            return None;
        }
        let (channel, msg) = self.sub.recv().await?;
        Some(match (channel, &msg.content) {
            (Channel::Shell, Content::ExecuteReply(r)) => {
                self.reply = Some(r.clone());
                ExecutionEvent::Reply(msg)
            }
            (Channel::Iopub, Content::Status(s)) => {
                if s.execution_state == "idle" {
                    self.idle = true;
                }
                ExecutionEvent::Iopub(msg)
            }
            (Channel::Iopub, _) => ExecutionEvent::Iopub(msg),
            (Channel::Stdin, Content::InputRequest(_)) => ExecutionEvent::InputRequest(msg),
            (ch, _) => ExecutionEvent::Other(ch, msg),
        })
    }
}
