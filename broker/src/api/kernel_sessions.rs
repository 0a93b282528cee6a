//! Websocket sessions of the Jupyter kernel API: what a client that drops
//! its connection gets back when it reconnects with the same `session_id`.
//!
//! Every kernel message meant for a client goes to its session's queue
//! (the [`Mirror`](crate::sandbox::record::Mirror)s of its executions and
//! forwarded requests point there), not to one connection. A pump task per
//! session hands each message to the connection attached now; with none
//! attached it keeps them, up to [`BACKLOG_BYTES`] (the oldest go first, and
//! the count of dropped ones is logged), and the next connection with that
//! `session_id` gets them first, in order, as jupyter_server does.
//!
//! A new connection with a session id already connected replaces the older
//! connection (which is closed), again as jupyter_server does. A session
//! nobody reconnects to within [`SESSION_TTL`] is forgotten; a kernel keeps
//! at most [`MAX_SESSIONS`] sessions (the longest-disconnected goes first).
//! `connections` in the kernel model counts attached sessions.

use crate::sandbox::record::Mirrored;
use crate::sandbox::SandboxId;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Bytes of messages kept for a disconnected session.
pub const BACKLOG_BYTES: usize = 16 * 1024 * 1024;
/// How long a disconnected session is kept.
pub const SESSION_TTL: Duration = Duration::from_secs(600);
/// Sessions per kernel (so at most 256 MiB of backlogs per kernel).
pub const MAX_SESSIONS: usize = 16;
/// Messages in flight between the pump and one connection.
const CONNECTION_QUEUE: usize = 256;

/// A connection attached to a session.
pub struct Attached {
    /// Messages kept while no connection was attached: send these first;
    /// what is left here at [`Hub::detach`] is kept for the next one.
    pub backlog: Vec<Mirrored>,
    /// Then these.
    pub rx: mpsc::Receiver<Mirrored>,
    /// Cancelled when a newer connection takes the session over.
    pub replaced: CancellationToken,
    /// Where the kernel's messages for this session go (for mirrors).
    pub queue: mpsc::Sender<Mirrored>,
    session: Arc<Session>,
    serial: u64,
}

struct Connection {
    serial: u64,
    tx: mpsc::Sender<Mirrored>,
    replaced: CancellationToken,
}

#[derive(Default)]
struct Inner {
    current: Option<Connection>,
    backlog: VecDeque<(usize, Mirrored)>,
    backlog_bytes: usize,
    dropped: u64,
    /// When the last connection left (for expiry); `None` while attached.
    left_at: Option<Instant>,
    /// An expiry timer is running for this session.
    timer_armed: bool,
    next_serial: u64,
}

struct Session {
    queue: mpsc::Sender<Mirrored>,
    inner: Mutex<Inner>,
    /// Stops the pump; the session's queue closes and mirrors let go.
    closed: CancellationToken,
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a message for the next connection, within the byte budget.
    fn keep(inner: &mut Inner, m: Mirrored) {
        let size = estimate(&m);
        inner.backlog_bytes += size;
        inner.backlog.push_back((size, m));
        while inner.backlog_bytes > BACKLOG_BYTES {
            let Some((n, _)) = inner.backlog.pop_front() else {
                break;
            };
            inner.backlog_bytes -= n;
            inner.dropped += 1;
        }
    }
}

/// Roughly how many bytes a kept message holds: every part a hostile kernel
/// (or the client's header, the tag) could make large.
fn estimate(m: &Mirrored) -> usize {
    let (tag, _, msg) = m;
    256 + json_len(tag)
        + json_len(&msg.header)
        + json_len(&msg.metadata)
        + msg.content.to_json_bytes().len()
        + msg.buffers.iter().map(|b| b.len()).sum::<usize>()
}

fn json_len<T: serde::Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(0, |v| v.len())
}

/// Moves messages from the session's queue to its connection, or keeps them.
async fn pump(session: Arc<Session>, mut rx: mpsc::Receiver<Mirrored>) {
    loop {
        let m = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            () = session.closed.cancelled() => return,
        };
        deliver(&session, m).await;
    }
}

/// Hands one message to the attached connection; keeps it when there is
/// none, or when the connection went away or was replaced meanwhile.
async fn deliver(session: &Session, m: Mirrored) {
    loop {
        let (tx, replaced) = {
            let mut inner = session.lock();
            match &inner.current {
                Some(c) => (c.tx.clone(), c.replaced.clone()),
                None => return Session::keep(&mut inner, m),
            }
        };
        // A full connection queue slows the kernel's mirror, as a slow
        // client should (a connection that stops reading ends itself, see
        // `channels`); a replaced one is not waited for.
        tokio::select! {
            permit = tx.reserve() => match permit {
                Ok(p) => return p.send(m),
                // Closed in `detach`, which cleared `current` first: the
                // next turn keeps the message or hands it on.
                Err(_) => continue,
            },
            () = replaced.cancelled() => continue,
        }
    }
}

/// All sessions, by kernel and `session_id`.
#[derive(Default)]
pub struct Hub(Mutex<HashMap<(SandboxId, String), Arc<Session>>>);

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HashMap<(SandboxId, String), Arc<Session>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a new connection to `session_id` of `kernel`, replacing an
    /// older connection of that session; `None` when the kernel has
    /// [`MAX_SESSIONS`] sessions, all connected.
    pub fn attach(&self, kernel: SandboxId, session_id: &str) -> Option<Attached> {
        // The session is taken and attached under the hub's lock, so expiry
        // or eviction cannot remove it in between.
        let mut all = self.lock();
        let key = (kernel, session_id.to_owned());
        let session = match all.get(&key) {
            Some(s) => s.clone(),
            None => {
                if !evict(&mut all, kernel) {
                    return None;
                }
                let (queue, rx) = mpsc::channel(CONNECTION_QUEUE);
                let s = Arc::new(Session {
                    queue,
                    inner: Mutex::default(),
                    closed: CancellationToken::new(),
                });
                tokio::spawn(pump(s.clone(), rx));
                all.insert(key, s.clone());
                s
            }
        };
        let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
        let replaced = CancellationToken::new();
        let mut inner = session.lock();
        inner.next_serial += 1;
        let serial = inner.next_serial;
        if let Some(old) = inner.current.replace(Connection {
            serial,
            tx,
            replaced: replaced.clone(),
        }) {
            old.replaced.cancel();
        }
        inner.left_at = None;
        if inner.dropped > 0 {
            tracing::warn!(sandbox_id = %kernel, session_id, dropped = inner.dropped,
                "a reconnecting session lost its oldest messages to the backlog budget");
            inner.dropped = 0;
        }
        inner.backlog_bytes = 0;
        let backlog = inner.backlog.drain(..).map(|(_, m)| m).collect();
        drop(inner);
        drop(all);
        Some(Attached {
            backlog,
            rx,
            replaced,
            queue: session.queue.clone(),
            session,
            serial,
        })
    }

    /// Detaches a connection that ended: what it had not sent yet is kept
    /// for the next one, and the session expires after [`SESSION_TTL`].
    pub fn detach(self: &Arc<Self>, kernel: SandboxId, session_id: &str, mut a: Attached) {
        let mut inner = a.session.lock();
        let current = inner.current.as_ref().is_some_and(|c| c.serial == a.serial);
        if current {
            inner.current = None;
            inner.left_at = Some(Instant::now());
        }
        // Under the session's lock, so the pump sees either this connection
        // attached or its queue closed, never a message slipping between.
        a.rx.close();
        let mut unsent: Vec<Mirrored> = std::mem::take(&mut a.backlog);
        while let Ok(m) = a.rx.try_recv() {
            unsent.push(m);
        }
        if current {
            // They were due before anything kept since.
            for m in unsent.into_iter().rev() {
                let size = estimate(&m);
                inner.backlog_bytes += size;
                inner.backlog.push_front((size, m));
            }
        } else if !unsent.is_empty() {
            // A newer connection took over: it started from the backlog,
            // and what was queued for this one is lost, as in jupyter_server.
            tracing::debug!(sandbox_id = %kernel, session_id, lost = unsent.len(),
                "messages queued for a replaced connection are dropped");
        }
        // One expiry timer per session, however often it reconnects.
        let arm = current && !inner.timer_armed;
        inner.timer_armed |= arm;
        drop(inner);
        if arm {
            let (hub, key) = (self.clone(), (kernel, session_id.to_owned()));
            tokio::spawn(hub.expire(key));
        }
    }

    /// Forgets a session once it has had no connection for [`SESSION_TTL`].
    async fn expire(self: Arc<Self>, key: (SandboxId, String)) {
        let mut wait = SESSION_TTL;
        loop {
            tokio::time::sleep(wait).await;
            let mut all = self.lock();
            let Some(s) = all.get(&key).cloned() else {
                return;
            };
            let mut inner = s.lock();
            match inner.left_at {
                Some(t) if t.elapsed() >= SESSION_TTL => {
                    drop(inner);
                    all.remove(&key);
                    s.closed.cancel();
                    return;
                }
                Some(t) => wait = SESSION_TTL.saturating_sub(t.elapsed()),
                None => {
                    // Connected again: its next detach arms a new timer.
                    inner.timer_armed = false;
                    return;
                }
            }
        }
    }

    /// Open connections to `kernel`.
    pub fn connections(&self, kernel: SandboxId) -> usize {
        self.lock()
            .iter()
            .filter(|((k, _), s)| *k == kernel && s.lock().current.is_some())
            .count()
    }

    /// Forgets every session of a deleted kernel, closing its connections.
    pub fn forget_kernel(&self, kernel: SandboxId) {
        self.lock().retain(|(k, _), s| {
            if *k == kernel {
                s.closed.cancel();
                if let Some(c) = &s.lock().current {
                    c.replaced.cancel();
                }
            }
            *k != kernel
        });
    }
}

/// Makes room for one more session of `kernel`: drops the one disconnected
/// longest ago while the kernel has [`MAX_SESSIONS`]; false when all of
/// them are connected.
fn evict(all: &mut HashMap<(SandboxId, String), Arc<Session>>, kernel: SandboxId) -> bool {
    loop {
        let mine: Vec<_> = all.iter().filter(|((k, _), _)| *k == kernel).collect();
        if mine.len() < MAX_SESSIONS {
            return true;
        }
        let oldest = mine
            .iter()
            .filter_map(|(key, s)| s.lock().left_at.map(|t| (t, (*key).clone())))
            .min_by_key(|(t, _)| *t)
            .map(|(_, key)| key);
        let Some(key) = oldest else {
            return false;
        };
        if let Some(s) = all.remove(&key) {
            s.closed.cancel();
        }
    }
}
