//! Execution records: what every execution in a sandbox did, kept for the
//! sandbox's lifetime.
//!
//! A record owns:
//! - its state: `queued`, `running`, `finished`;
//! - its event log: every event a streaming client sees, numbered from 1, in
//!   a byte-bounded ring so a flood cannot exhaust the broker. A client that
//!   re-attaches names the last number it saw; if the ring has moved past it,
//!   it gets a `gap` event saying which numbers are gone, then the rest. The
//!   final `end` event is made from the stored result, so it is never lost;
//! - the output collector while running (the result so far) and the result,
//!   serialised once, after;
//! - what reaches the running execution from outside: input answers and the
//!   cancellation of a queued execution.
//!
//! [`Registry`] holds a sandbox's records in arrival order. Beyond a byte
//! budget the bulky parts (event log, result, code) of the oldest finished
//! records are dropped; their id, status and timings stay.

use super::execute::{ExecStatus, ExecutionResult};
use super::{ExecutionId, SandboxId};
use bytes::Bytes;
use cellblock_protocol::message::{iso8601, Channel, Content, InputRequest, Message};
use cellblock_protocol::outputs::{OutputCollector, OutputLimits, Outputs};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tokio::sync::{mpsc, watch};

/// How long a mirrored client may leave messages unread.
const MIRROR_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Raw kernel messages of one execution, for a Jupyter websocket client:
/// each comes with `tag` (the client's own request header).
#[derive(Debug, Clone)]
pub struct Mirror {
    pub tx: mpsc::Sender<Mirrored>,
    pub tag: serde_json::Value,
}

/// A mirrored message: the tag, the channel and the message.
pub type Mirrored = (serde_json::Value, Channel, Message);

/// Where an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Finished,
}

/// One event of the log, serialised once.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    /// The event type (`stdout`, `display_data`, …).
    pub kind: &'static str,
    /// The whole event as a JSON object, `seq` and `type` included.
    pub json: Bytes,
}

/// Bytes an event costs beyond its JSON.
const EVENT_OVERHEAD: usize = 64;

#[derive(Serialize)]
struct EventOut<'a, T: Serialize> {
    seq: u64,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
struct Text<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct Rich<'a> {
    data: &'a serde_json::Map<String, serde_json::Value>,
    metadata: &'a serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_count: Option<i64>,
}

#[derive(Serialize)]
struct Wait {
    wait: bool,
}

/// A summary of a finished execution that survives eviction.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub status: ExecStatus,
    pub execution_count: Option<i64>,
    pub duration_ms: u64,
}

struct Inner {
    state: State,
    code: Option<Arc<str>>,
    events: VecDeque<Event>,
    log_bytes: usize,
    /// The number the next event gets; the ring holds `[next_seq - len, next_seq)`.
    next_seq: u64,
    /// The number of the `end` event, once finished.
    end_seq: Option<u64>,
    collector: Option<OutputCollector>,
    result: Option<Arc<RawValue>>,
    summary: Option<Summary>,
    started_at: Option<SystemTime>,
    finished_at: Option<SystemTime>,
    input_pending: Option<InputRequest>,
    evicted: bool,
}

/// One execution, from submission to long after its end.
pub struct ExecutionRecord {
    pub id: ExecutionId,
    pub sandbox_id: SandboxId,
    pub created_at: SystemTime,
    limits: OutputLimits,
    log_cap: usize,
    inner: Mutex<Inner>,
    /// Bumped whenever an event is added or the state changes.
    changed: watch::Sender<u64>,
    cancel: watch::Sender<bool>,
    input_tx: mpsc::Sender<String>,
    input_rx: Mutex<Option<mpsc::Receiver<String>>>,
    /// The kernel has begun the cell (`execute_input` seen).
    began: AtomicBool,
    /// An interrupt was asked for and not yet delivered.
    interrupt: AtomicBool,
    /// An interrupt was asked for at some point.
    interrupted: AtomicBool,
    mirror: Mutex<Option<Mirror>>,
}

/// Why an input answer was refused.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("the execution is not waiting for input")]
    NotWaiting,
}

/// What a cancel or interrupt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued and will not run.
    Cancelled,
    /// It is running: interrupt it instead.
    Running,
    /// It already ended.
    Finished,
}

/// Events after a sequence number, read in one go.
pub struct Batch {
    /// Numbers that are no longer in the ring: `(first, last)`.
    pub gap: Option<(u64, u64)>,
    pub events: Vec<Event>,
    /// The `end` event is among `events`: nothing follows.
    pub done: bool,
}

impl ExecutionRecord {
    /// A new queued execution.
    pub fn new(
        sandbox_id: SandboxId,
        code: &str,
        limits: OutputLimits,
        log_cap: usize,
    ) -> Arc<Self> {
        let (input_tx, input_rx) = mpsc::channel(4);
        Arc::new(Self {
            id: ExecutionId(uuid::Uuid::new_v4()),
            sandbox_id,
            created_at: SystemTime::now(),
            limits,
            log_cap,
            inner: Mutex::new(Inner {
                state: State::Queued,
                code: Some(code.into()),
                events: VecDeque::new(),
                log_bytes: 0,
                next_seq: 1,
                end_seq: None,
                collector: None,
                result: None,
                summary: None,
                started_at: None,
                finished_at: None,
                input_pending: None,
                evicted: false,
            }),
            changed: watch::Sender::new(0),
            cancel: watch::Sender::new(false),
            input_tx,
            input_rx: Mutex::new(Some(input_rx)),
            began: AtomicBool::new(false),
            interrupt: AtomicBool::new(false),
            interrupted: AtomicBool::new(false),
            mirror: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Sends every raw kernel message of this execution to `mirror` too.
    pub fn set_mirror(&self, mirror: Option<Mirror>) {
        *self.mirror.lock().unwrap_or_else(|e| e.into_inner()) = mirror;
    }

    /// Passes a raw message to the mirror, if any; waits for room, so a
    /// slow client slows the kernel rather than losing output. A client that
    /// reads nothing for [`MIRROR_STALL`] is dropped from this execution, so
    /// it cannot hold the execution (and its timeout) hostage.
    pub async fn mirror(&self, channel: Channel, msg: &Message) {
        let mirror = self
            .mirror
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(m) = mirror {
            let sent = m.tx.send((m.tag, channel, msg.clone()));
            if !matches!(tokio::time::timeout(MIRROR_STALL, sent).await, Ok(Ok(()))) {
                self.set_mirror(None);
            }
        }
    }

    /// True once the bulky parts were dropped for the retention budget.
    pub fn is_evicted(&self) -> bool {
        self.lock().evicted
    }

    /// When it began running, if it did.
    pub fn started_at(&self) -> Option<SystemTime> {
        self.lock().started_at
    }

    /// The state now.
    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Subscribes to changes (new events, state changes).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Adds an event under the lock and evicts the oldest beyond the cap.
    fn push_locked<T: Serialize>(&self, inner: &mut Inner, kind: &'static str, body: T) {
        let seq = inner.next_seq;
        let json = match serde_json::to_vec(&EventOut { seq, kind, body }) {
            Ok(v) => Bytes::from(v),
            Err(e) => {
                tracing::warn!(error = %e, "an event could not be serialised");
                return;
            }
        };
        inner.next_seq += 1;
        inner.log_bytes += json.len() + EVENT_OVERHEAD;
        inner.events.push_back(Event { seq, kind, json });
        while inner.log_bytes > self.log_cap && inner.events.len() > 1 {
            if let Some(old) = inner.events.pop_front() {
                inner.log_bytes -= old.json.len() + EVENT_OVERHEAD;
            }
        }
    }

    /// Adds an event.
    pub fn push<T: Serialize>(&self, kind: &'static str, body: T) {
        let mut inner = self.lock();
        self.push_locked(&mut inner, kind, body);
        drop(inner);
        self.bump();
    }

    /// Moves a queued execution to running and emits `start`. False if it
    /// was cancelled first.
    pub fn start(&self) -> bool {
        let mut inner = self.lock();
        if *self.cancel.borrow() || inner.state != State::Queued {
            return false;
        }
        let now = SystemTime::now();
        inner.state = State::Running;
        inner.started_at = Some(now);
        inner.collector = Some(OutputCollector::new(self.limits));
        #[derive(Serialize)]
        struct Start {
            execution_id: ExecutionId,
            sandbox_id: SandboxId,
            started_at: String,
        }
        let body = Start {
            execution_id: self.id,
            sandbox_id: self.sandbox_id,
            started_at: iso8601(now),
        };
        self.push_locked(&mut inner, "start", body);
        drop(inner);
        self.bump();
        true
    }

    /// Folds one iopub message into the outputs and the event log.
    pub fn apply_iopub(&self, msg: &Message) {
        let mut inner = self.lock();
        if let Some(c) = inner.collector.as_mut() {
            c.apply(msg);
        }
        let inner = &mut *inner;
        match &msg.content {
            Content::Stream(s) => {
                let kind = if s.name == "stderr" {
                    "stderr"
                } else {
                    "stdout"
                };
                self.push_locked(inner, kind, Text { text: &s.text });
            }
            Content::DisplayData(d) | Content::UpdateDisplayData(d) => {
                let kind = if matches!(msg.content, Content::DisplayData(_)) {
                    "display_data"
                } else {
                    "update_display_data"
                };
                let body = Rich {
                    data: &d.data,
                    metadata: &d.metadata,
                    display_id: d.display_id(),
                    execution_count: None,
                };
                self.push_locked(inner, kind, body);
            }
            Content::ExecuteResult(r) => {
                let body = Rich {
                    data: &r.data,
                    metadata: &r.metadata,
                    display_id: r.display_id(),
                    execution_count: r.execution_count,
                };
                self.push_locked(inner, "execute_result", body);
            }
            Content::Error(e) => self.push_locked(inner, "error", e),
            Content::ClearOutput(c) => {
                self.push_locked(inner, "clear_output", Wait { wait: c.wait })
            }
            _ => return,
        }
        self.bump();
    }

    /// Asks for an interrupt. True if SIGINT should be sent now; otherwise
    /// the kernel has not begun the cell yet (it ignores SIGINT until then)
    /// and [`ExecutionRecord::began`] delivers it.
    pub fn request_interrupt(&self) -> bool {
        self.interrupted.store(true, Ordering::SeqCst);
        self.interrupt.store(true, Ordering::SeqCst);
        self.began.load(Ordering::SeqCst) && self.interrupt.swap(false, Ordering::SeqCst)
    }

    /// True if an interrupt was asked for.
    pub fn was_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// The kernel has begun the cell. True if an interrupt asked for earlier
    /// should be sent now.
    pub fn began(&self) -> bool {
        self.began.store(true, Ordering::SeqCst);
        self.interrupt.swap(false, Ordering::SeqCst)
    }

    /// True if the kernel has published an error for this execution.
    pub fn has_error(&self) -> bool {
        self.lock()
            .collector
            .as_ref()
            .is_some_and(|c| c.error().is_some())
    }

    /// The kernel asked for input: remember it and emit `input_request`.
    pub fn input_requested(&self, req: &InputRequest) {
        let mut inner = self.lock();
        inner.input_pending = Some(req.clone());
        self.push_locked(&mut inner, "input_request", req);
        drop(inner);
        self.bump();
    }

    /// The pending input request was abandoned (timed out or ended).
    pub fn input_abandoned(&self) {
        self.lock().input_pending = None;
    }

    /// Passes an answer to the running execution's pending `input()`.
    pub fn answer(&self, value: String) -> Result<(), AnswerError> {
        let mut inner = self.lock();
        if inner.input_pending.take().is_none() {
            return Err(AnswerError::NotWaiting);
        }
        self.input_tx
            .try_send(value)
            .map_err(|_| AnswerError::NotWaiting)
    }

    /// The receiving end of input answers (taken once, by the runner).
    pub fn take_input(&self) -> Option<mpsc::Receiver<String>> {
        self.input_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The outputs collected so far; the collector is gone once finished.
    pub fn take_outputs(&self) -> Outputs {
        self.lock()
            .collector
            .take()
            .map(OutputCollector::finish)
            .unwrap_or_default()
    }

    /// Cancels a queued execution; says what it found otherwise.
    pub fn cancel(&self) -> CancelOutcome {
        let inner = self.lock();
        match inner.state {
            State::Queued => {
                self.cancel.send_replace(true);
                CancelOutcome::Cancelled
            }
            State::Running => CancelOutcome::Running,
            State::Finished => CancelOutcome::Finished,
        }
    }

    /// Resolves once the execution is cancelled while queued.
    pub fn cancelled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.cancel.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Stores the result and emits `end`. Returns the serialised result.
    pub fn finish(&self, result: &ExecutionResult, at: SystemTime) -> Arc<RawValue> {
        let raw: Arc<RawValue> = serde_json::value::to_raw_value(result)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "serialising a result");
                RawValue::from_string("null".into()).expect("null is JSON")
            })
            .into();
        let mut inner = self.lock();
        inner.state = State::Finished;
        inner.finished_at = Some(at);
        inner.collector = None;
        inner.input_pending = None;
        self.set_mirror(None);
        inner.summary = Some(Summary {
            status: result.status,
            execution_count: result.execution_count,
            duration_ms: result.duration_ms,
        });
        inner.result = Some(raw.clone());
        inner.end_seq = Some(inner.next_seq);
        inner.next_seq += 1;
        drop(inner);
        self.bump();
        raw
    }

    /// Events numbered above `after`, at most about `max_bytes` of them.
    pub fn read(&self, after: u64, max_bytes: usize) -> Batch {
        let inner = self.lock();
        let first = inner.events.front().map_or(inner.next_seq, |e| e.seq);
        let last_missing = first.min(inner.end_seq.unwrap_or(u64::MAX)) - 1;
        let gap = (after < last_missing).then_some((after + 1, last_missing));
        let mut events = Vec::new();
        let mut bytes = 0;
        let from = after.max(last_missing);
        for e in inner
            .events
            .iter()
            .skip((from + 1).saturating_sub(first) as usize)
        {
            if bytes > 0 && bytes + e.json.len() > max_bytes {
                return Batch {
                    gap,
                    events,
                    done: false,
                };
            }
            bytes += e.json.len();
            events.push(e.clone());
        }
        let mut done = false;
        if let Some(end_seq) = inner.end_seq {
            if after < end_seq {
                events.push(Event {
                    seq: end_seq,
                    kind: "end",
                    json: end_event(end_seq, inner.result.as_deref()),
                });
            }
            done = true;
        }
        Batch { gap, events, done }
    }

    /// The serialised result, once finished (and not evicted).
    pub fn result(&self) -> Option<Arc<RawValue>> {
        self.lock().result.clone()
    }

    /// Bytes held by the bulky parts.
    fn retained_bytes(&self) -> usize {
        let inner = self.lock();
        inner.log_bytes
            + inner.result.as_ref().map_or(0, |r| r.get().len())
            + inner.code.as_ref().map_or(0, |c| c.len())
    }

    /// Drops the bulky parts of a finished execution.
    fn evict(&self) {
        let mut inner = self.lock();
        if inner.state != State::Finished {
            return;
        }
        inner.events.clear();
        inner.log_bytes = 0;
        inner.result = None;
        inner.code = None;
        inner.evicted = true;
    }

    /// The public view; `detail` adds the code and the result (so far).
    pub fn view(&self, detail: bool) -> View {
        let inner = self.lock();
        let (result, output) = if detail {
            (
                inner.result.clone(),
                inner.collector.as_ref().map(OutputCollector::snapshot),
            )
        } else {
            (None, None)
        };
        View {
            execution_id: self.id,
            sandbox_id: self.sandbox_id,
            state: inner.state,
            status: inner.summary.map(|s| s.status),
            execution_count: inner.summary.and_then(|s| s.execution_count),
            duration_ms: inner.summary.map(|s| s.duration_ms),
            created_at: iso8601(self.created_at),
            started_at: inner.started_at.map(iso8601),
            finished_at: inner.finished_at.map(iso8601),
            last_seq: inner.next_seq - 1,
            input_request: inner.input_pending.clone(),
            code: match &inner.code {
                Some(c) if detail => Some(c.to_string()),
                Some(c) => Some(crate::trace::preview(c)),
                None => None,
            },
            evicted: inner.evicted,
            output,
            result,
        }
    }
}

fn end_event(seq: u64, result: Option<&RawValue>) -> Bytes {
    let result = result.map_or("null", RawValue::get);
    Bytes::from(format!(
        "{{\"seq\":{seq},\"type\":\"end\",\"result\":{result}}}"
    ))
}

/// What `GET …/executions[/{eid}]` shows.
#[derive(Serialize)]
pub struct View {
    pub execution_id: ExecutionId,
    pub sandbox_id: SandboxId,
    pub state: State,
    pub status: Option<ExecStatus>,
    pub execution_count: Option<i64>,
    pub duration_ms: Option<u64>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The number of the newest event.
    pub last_seq: u64,
    /// The pending `input()` prompt, while the execution waits for an answer.
    pub input_request: Option<InputRequest>,
    /// The code (a preview in lists).
    pub code: Option<String>,
    /// The bulky parts were dropped to stay within the retention budget.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub evicted: bool,
    /// The outputs so far, while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Outputs>,
    /// The final result, once finished.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "raw")]
    pub result: Option<Arc<RawValue>>,
}

fn raw<S: serde::Serializer>(v: &Option<Arc<RawValue>>, s: S) -> Result<S::Ok, S::Error> {
    v.as_deref().serialize(s)
}

/// A sandbox's executions in arrival order.
#[derive(Default)]
pub struct Registry {
    order: VecDeque<Arc<ExecutionRecord>>,
    by_id: HashMap<ExecutionId, Arc<ExecutionRecord>>,
    /// Finished records not evicted yet, in the order they finished, with
    /// the bytes each held then; `retained` is their sum.
    evictable: VecDeque<(Arc<ExecutionRecord>, usize)>,
    retained: usize,
}

/// Most records kept per sandbox; the oldest finished go first.
const MAX_RECORDS: usize = 100_000;

impl Registry {
    /// Adds a new record.
    pub fn insert(&mut self, record: Arc<ExecutionRecord>) {
        self.by_id.insert(record.id, record.clone());
        self.order.push_back(record);
        while self.order.len() > MAX_RECORDS {
            match self.order.front() {
                Some(r) if r.state() == State::Finished => {
                    let r = self.order.pop_front().expect("front exists");
                    self.by_id.remove(&r.id);
                }
                _ => break,
            }
        }
    }

    /// One record.
    pub fn get(&self, id: ExecutionId) -> Option<Arc<ExecutionRecord>> {
        self.by_id.get(&id).cloned()
    }

    /// Every record, oldest first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ExecutionRecord>> {
        self.order.iter()
    }

    /// The running execution, if any.
    pub fn running(&self) -> Option<Arc<ExecutionRecord>> {
        self.order
            .iter()
            .rev()
            .find(|r| r.state() == State::Running)
            .cloned()
    }

    /// Counts a record that just finished, then drops the bulky parts of
    /// the oldest finished records until the rest fit in `budget` bytes.
    /// The newest finished record is always kept whole. Constant time per
    /// call, amortised (a sandbox may keep 100,000 records).
    pub fn finished(&mut self, record: &Arc<ExecutionRecord>, budget: usize) {
        let bytes = record.retained_bytes();
        self.retained += bytes;
        self.evictable.push_back((record.clone(), bytes));
        // Also bounded in count: records `insert` dropped past MAX_RECORDS
        // must not be kept alive here.
        while (self.retained > budget || self.evictable.len() > MAX_RECORDS)
            && self.evictable.len() > 1
        {
            let Some((r, bytes)) = self.evictable.pop_front() else {
                break;
            };
            r.evict();
            self.retained -= bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(log_cap: usize) -> Arc<ExecutionRecord> {
        ExecutionRecord::new(
            SandboxId(uuid::Uuid::new_v4()),
            "print(1)",
            OutputLimits::default(),
            log_cap,
        )
    }

    fn seqs(b: &Batch) -> Vec<u64> {
        b.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn reads_resume_after_a_number() {
        let r = record(1 << 20);
        assert!(r.start());
        for i in 0..5 {
            r.push(
                "stdout",
                Text {
                    text: &i.to_string(),
                },
            );
        }
        let b = r.read(0, 1 << 20);
        assert_eq!(seqs(&b), vec![1, 2, 3, 4, 5, 6]);
        assert!(b.gap.is_none() && !b.done);
        let b = r.read(3, 1 << 20);
        assert_eq!(seqs(&b), vec![4, 5, 6]);
        let b = r.read(0, 1);
        assert_eq!(seqs(&b), vec![1], "a small budget still makes progress");
    }

    #[test]
    fn the_ring_reports_a_gap_and_end_is_never_lost() {
        let r = record(1000);
        assert!(r.start());
        for _ in 0..100 {
            r.push("stdout", Text { text: "0123456789" });
        }
        let b = r.read(0, 1 << 20);
        let (from, to) = b.gap.expect("a gap");
        assert_eq!(from, 1);
        assert_eq!(b.events[0].seq, to + 1);
        assert_eq!(b.events.last().unwrap().seq, 101);
        let result = ExecutionResult::ended(r.id, ExecStatus::Ok, None);
        r.finish(&result, SystemTime::now());
        let b = r.read(101, 1 << 20);
        assert_eq!(seqs(&b), vec![102]);
        assert_eq!(b.events[0].kind, "end");
        assert!(b.done);
        let v: serde_json::Value = serde_json::from_slice(&b.events[0].json).unwrap();
        assert_eq!(v["result"]["status"], "ok");
        assert!(r.read(102, 1 << 20).events.is_empty());
    }

    #[test]
    fn answers_need_a_pending_request() {
        let r = record(1 << 20);
        assert!(r.answer("x".into()).is_err());
        r.input_requested(&InputRequest {
            prompt: "? ".into(),
            password: false,
        });
        assert!(r.answer("x".into()).is_ok());
        assert!(r.answer("y".into()).is_err(), "one answer per request");
    }

    #[test]
    fn cancel_only_while_queued() {
        let r = record(1 << 20);
        assert_eq!(r.cancel(), CancelOutcome::Cancelled);
        assert!(!r.start());
        let r = record(1 << 20);
        assert!(r.start());
        assert_eq!(r.cancel(), CancelOutcome::Running);
    }

    #[test]
    fn the_oldest_finished_records_are_evicted_past_the_budget() {
        let mut reg = Registry::default();
        let mut all = Vec::new();
        for _ in 0..50 {
            let r = record(1 << 20);
            reg.insert(r.clone());
            assert!(r.start());
            r.push(
                "stdout",
                Text {
                    text: &"x".repeat(1000),
                },
            );
            r.finish(
                &ExecutionResult::ended(r.id, ExecStatus::Ok, None),
                SystemTime::now(),
            );
            reg.finished(&r, 10_000);
            all.push(r);
        }
        let kept: Vec<bool> = all.iter().map(|r| !r.is_evicted()).collect();
        // The newest ones fit; the oldest were evicted, in order.
        let first_kept = kept.iter().position(|k| *k).unwrap();
        assert!(
            first_kept > 0 && kept[first_kept..].iter().all(|k| *k),
            "{kept:?}"
        );
        assert!(reg.retained <= 10_000);
        assert_eq!(
            reg.retained,
            all[first_kept..]
                .iter()
                .map(|r| r.retained_bytes())
                .sum::<usize>()
        );
        // The newest is kept whole even when it alone is over the budget.
        let mut reg = Registry::default();
        reg.insert(all[0].clone());
        let r = record(1 << 20);
        reg.insert(r.clone());
        assert!(r.start());
        r.push("stdout", Text { text: "y" });
        r.finish(
            &ExecutionResult::ended(r.id, ExecStatus::Ok, None),
            SystemTime::now(),
        );
        reg.finished(&r, 0);
        assert!(!r.is_evicted());
    }
}
