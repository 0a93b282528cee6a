//! One execution in a sandbox, from submission to result.
//!
//! [`Sandbox::submit`] checks the queue bound, creates the execution's
//! [`ExecutionRecord`] and runs it in its own task, so it runs to its end
//! whether or not anyone waits (a client that disconnects does not stop it).
//! The task waits its turn on the sandbox's FIFO lock (or is cancelled while
//! queued), sends `execute_request`, and feeds every iopub message to the
//! record until both `execute_reply` and the matching `idle` have arrived.
//! `input_request`s are passed on and answered from the record; one left
//! unanswered for `input_timeout` is interrupted. Two things cut an execution
//! short:
//! - **timeout**: at `timeout_s` the kernel's process group gets SIGINT; if the
//!   kernel finishes within the grace period its state is kept, otherwise the
//!   kernel is replaced and state is lost;
//! - **crash**: the kernel process exits (e.g. `os._exit(1)`); the kernel is
//!   replaced and state is lost.
//!
//! The result always says which happened (`status`, `kernel_restarted`, `state_lost`).

use super::record::ExecutionRecord;
use super::{ExecutionId, Runtime, Sandbox, SandboxError};
use crate::isolation;
use crate::isolation::beneath::Kind;
use crate::trace::{blob_outputs, Finished};
use cellblock_protocol::client::{Execution, ExecutionEvent, KernelClient};
use cellblock_protocol::message::{Channel, Content, ErrorContent, ExecuteRequest};
use cellblock_protocol::outputs::{Dropped, Output, OutputLimits, Segment};
use futures_util::FutureExt;
use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedMutexGuard};
use tokio::task::JoinHandle;

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecStatus {
    Ok,
    Error,
    Timeout,
    Crashed,
    /// Cancelled while queued; it never ran.
    Cancelled,
}

impl ExecStatus {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Crashed => "crashed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The result of one execution.
#[derive(Debug, Serialize)]
pub struct ExecutionResult {
    pub execution_id: ExecutionId,
    pub execution_count: Option<i64>,
    pub status: ExecStatus,
    pub stdout: String,
    pub stderr: String,
    pub outputs: Vec<Output>,
    pub error: Option<ErrorContent>,
    pub duration_ms: u64,
    /// Output beyond a per-execution cap was dropped.
    pub truncated: bool,
    /// What was dropped, when `truncated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<Dropped>,
    /// The kernel was replaced during this execution.
    pub kernel_restarted: bool,
    /// Variables, imports and functions defined before are gone.
    pub state_lost: bool,
    /// What changed under /home/user during the execution.
    pub files: FileChanges,
    /// How stdout, stderr and outputs interleave (kept for the notebook).
    #[serde(skip)]
    pub layout: Vec<Segment>,
}

/// A file reported as changed.
#[derive(Debug, Clone, Serialize)]
pub struct ChangedFile {
    pub path: String,
    pub size: u64,
    pub mime: String,
}

/// Files created, modified and deleted under /home/user by one execution.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileChanges {
    pub created: Vec<ChangedFile>,
    pub modified: Vec<ChangedFile>,
    pub deleted: Vec<ChangedFile>,
    /// The home held more than [`SNAPSHOT_CAP`] entries; changes beyond are not reported.
    pub truncated: bool,
}

/// Most entries looked at per snapshot of a home.
pub const SNAPSHOT_CAP: usize = 5000;

type Snapshot = (BTreeMap<String, (u64, f64)>, bool);

/// Regular files under the home with their size and mtime (a cheap stat walk).
fn snapshot(sandbox: &Sandbox) -> Snapshot {
    let Ok(root) = sandbox.files() else {
        return (BTreeMap::new(), true);
    };
    match root.list(std::path::Path::new(""), 32, SNAPSHOT_CAP) {
        Ok((entries, truncated)) => (
            entries
                .into_iter()
                .filter(|e| e.kind == Kind::File && !e.name.starts_with(".cellblock-upload-"))
                .map(|e| (e.path, (e.size, e.mtime)))
                .collect(),
            truncated,
        ),
        Err(_) => (BTreeMap::new(), true),
    }
}

fn changed(path: &str, size: u64) -> ChangedFile {
    ChangedFile {
        path: path.to_owned(),
        size,
        mime: mime_guess::from_path(path)
            .first_or_octet_stream()
            .essence_str()
            .to_owned(),
    }
}

fn diff(before: &Snapshot, after: &Snapshot) -> FileChanges {
    let mut out = FileChanges {
        truncated: before.1 || after.1,
        ..FileChanges::default()
    };
    for (path, &(size, mtime)) in &after.0 {
        match before.0.get(path) {
            None => out.created.push(changed(path, size)),
            Some(&(s, m)) if s != size || m != mtime => out.modified.push(changed(path, size)),
            Some(_) => {}
        }
    }
    for (path, &(size, _)) in &before.0 {
        if !after.0.contains_key(path) {
            out.deleted.push(changed(path, size));
        }
    }
    out
}

/// What the caller asked to run.
#[derive(Debug, Clone)]
pub struct ExecuteOptions {
    pub code: String,
    /// Running time allowed; time spent queued does not count.
    pub timeout: Duration,
    /// `input()` asks the client; otherwise it raises at once.
    pub allow_stdin: bool,
    /// How long an `input()` waits for an answer before it is interrupted.
    pub input_timeout: Duration,
    pub limits: OutputLimits,
    /// Raw kernel messages go here too (a Jupyter websocket client).
    pub mirror: Option<super::record::Mirror>,
    /// `silent` and `store_history` as a Jupyter client asked.
    pub silent: bool,
    pub store_history: bool,
}

impl ExecutionResult {
    /// The result of an execution that produced nothing: cancelled, or ended
    /// before it could run.
    pub fn ended(id: ExecutionId, status: ExecStatus, error: Option<ErrorContent>) -> Self {
        Self {
            execution_id: id,
            execution_count: None,
            status,
            stdout: String::new(),
            stderr: String::new(),
            outputs: Vec::new(),
            error,
            duration_ms: 0,
            truncated: false,
            dropped: None,
            kernel_restarted: false,
            state_lost: false,
            files: FileChanges::default(),
            layout: Vec::new(),
        }
    }
}

fn err_content(ename: &str, evalue: impl Into<String>) -> Option<ErrorContent> {
    Some(ErrorContent {
        ename: ename.into(),
        evalue: evalue.into(),
        traceback: Vec::new(),
    })
}

enum Ending {
    Complete,
    /// The kernel went idle without replying: an interrupt landed before the
    /// cell ran (ipykernel then swallows the KeyboardInterrupt), or the
    /// request failed inside the kernel. Its state is intact.
    NoReply,
    TimedOut,
    Crashed(String),
}

/// How long after `idle` an `execute_reply` may still arrive.
const REPLY_AFTER_IDLE: Duration = Duration::from_secs(2);

/// How long a forwarded request (`kernel_info`, `complete`, …) waits for its
/// turn behind executions, as the kernel's own shell queue would make it.
const FORWARD_WAIT: Duration = Duration::from_secs(3600);

/// How long a forwarded request's message waits for a client's queue.
const MIRROR_WAIT: Duration = Duration::from_secs(30);

/// Decrements the active count when the execution ends, however it ends.
struct ActiveGuard(Arc<Sandbox>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// What one pass of [`Driver::drive`] works with.
struct Driver<'a> {
    exec: &'a mut Execution,
    client: &'a KernelClient,
    record: &'a ExecutionRecord,
    input: &'a mut mpsc::Receiver<String>,
    input_timeout: Duration,
    input_deadline: Option<tokio::time::Instant>,
    input_timed_out: bool,
    pid: i32,
}

impl Driver<'_> {
    /// Folds events until the execution completes, the kernel exits, or `deadline`.
    async fn drive(
        &mut self,
        exited: impl std::future::Future<Output = String>,
        deadline: tokio::time::Instant,
    ) -> Ending {
        tokio::pin!(exited);
        let mut reply_deadline = None;
        loop {
            let input_deadline = self.input_deadline;
            if reply_deadline.is_none() && self.exec.went_idle() && self.exec.reply().is_none() {
                reply_deadline = Some(tokio::time::Instant::now() + REPLY_AFTER_IDLE);
            }
            tokio::select! {
                ev = self.exec.next() => match ev {
                    Some(ExecutionEvent::Iopub(m)) => {
                        if matches!(m.content, Content::ExecuteInput(_)) && self.record.began() {
                            isolation::signal_group(self.pid, Signal::SIGINT);
                        }
                        self.record.apply_iopub(&m);
                        self.record.mirror(Channel::Iopub, &m).await;
                    }
                    Some(ExecutionEvent::Reply(reply)) => {
                        self.record.mirror(Channel::Shell, &reply).await;
                    }
                    Some(ExecutionEvent::InputRequest(m)) => {
                        self.record.mirror(Channel::Stdin, &m).await;
                        if let Content::InputRequest(req) = &m.content {
                            self.record.input_requested(req);
                            self.input_deadline =
                                Some(tokio::time::Instant::now() + self.input_timeout);
                        }
                    }
                    Some(_) => {}
                    None if self.exec.is_complete() => return Ending::Complete,
                    None => return Ending::Crashed("the kernel connection closed".into()),
                },
                Some(value) = self.input.recv() => {
                    self.input_deadline = None;
                    if let Err(e) = self.client.send_input(self.exec, value).await {
                        tracing::warn!(error = %e, "sending an input reply");
                    }
                }
                _ = tokio::time::sleep_until(input_deadline.unwrap_or(deadline)),
                    if input_deadline.is_some() =>
                {
                    // Nobody answered: interrupt the input() so the cell ends.
                    self.input_deadline = None;
                    self.input_timed_out = true;
                    self.record.input_abandoned();
                    isolation::signal_group(self.pid, Signal::SIGINT);
                }
                status = &mut exited => {
                    // Output published just before the exit may still be queued.
                    while let Ok(Some(ExecutionEvent::Iopub(m))) =
                        tokio::time::timeout(Duration::from_millis(20), self.exec.next()).await
                    {
                        self.record.apply_iopub(&m);
                    }
                    return Ending::Crashed(status);
                }
                _ = tokio::time::sleep_until(reply_deadline.unwrap_or(deadline)),
                    if reply_deadline.is_some() => return Ending::NoReply,
                _ = tokio::time::sleep_until(deadline) => return Ending::TimedOut,
            }
        }
    }
}

impl Sandbox {
    /// Queues an execution. It runs in its own task, to its end, whoever
    /// waits for it; the handle yields its serialised result.
    pub fn submit(
        self: &Arc<Self>,
        opts: ExecuteOptions,
    ) -> Result<(Arc<ExecutionRecord>, JoinHandle<Arc<RawValue>>), SandboxError> {
        if self.deleted.load(Ordering::SeqCst) {
            return Err(SandboxError::Deleted);
        }
        let max = self.cfg.max_queued_executions;
        if self
            .active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n <= max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(SandboxError::QueueFull(max));
        }
        let guard = ActiveGuard(self.clone());
        self.touch();
        let record =
            ExecutionRecord::new(self.id, &opts.code, opts.limits, self.cfg.event_log_bytes);
        self.records().insert(record.clone());
        record.set_mirror(opts.mirror.clone());
        // In the trace before the client hears of it.
        let ordinal = self.submitted.fetch_add(1, Ordering::SeqCst);
        self.trace(|s| {
            s.execution_submitted(
                &self.id.to_string(),
                &record.id.0.to_string(),
                ordinal,
                &opts.code,
                record.created_at,
            )
        });
        let turn = self.turn();
        let (sandbox, rec) = (self.clone(), record.clone());
        let handle = tokio::spawn(async move {
            let rt = tokio::select! {
                biased;
                rt = turn => Some(rt),
                () = rec.cancelled() => None,
            };
            // The runtime stays held until the result is recorded and
            // published, so the next execution starts after this one ended.
            let (mut result, rt) = match rt {
                Some(mut rt) => (sandbox.run(&mut rt, &rec, opts).await, Some(rt)),
                None => (
                    ExecutionResult::ended(rec.id, ExecStatus::Cancelled, None),
                    None,
                ),
            };
            // In the trace before the client receives it, with one end time.
            let finished = std::time::SystemTime::now();
            let stored = stored_result(&mut result);
            let id = rec.id.0.to_string();
            sandbox.trace(|s| {
                s.execution_finished(Finished {
                    id: &id,
                    started: rec.started_at(),
                    finished,
                    status: result.status.as_str(),
                    execution_count: result.execution_count,
                    duration_ms: result.duration_ms,
                    result_json: stored.0,
                    blobs: stored.1,
                })
            });
            let raw = rec.finish(&result, finished);
            drop(rt);
            drop(result);
            sandbox
                .records()
                .finished(&rec, sandbox.cfg.execution_retention_bytes);
            drop(guard);
            raw
        });
        Ok((record, handle))
    }

    /// Runs the execution, holding the sandbox's runtime, and builds its result.
    #[tracing::instrument(skip_all, fields(sandbox_id = %self.id, execution_id = %record.id.0))]
    async fn run(
        self: &Arc<Self>,
        rt: &mut Runtime,
        record: &ExecutionRecord,
        opts: ExecuteOptions,
    ) -> ExecutionResult {
        if self.deleted.load(Ordering::SeqCst) {
            return ExecutionResult::ended(record.id, ExecStatus::Error, deleted_error());
        }
        if !record.start() {
            return ExecutionResult::ended(record.id, ExecStatus::Cancelled, None);
        }
        if let Some(started) = record.started_at() {
            let eid = record.id.0.to_string();
            self.trace(|s| s.execution_started(&eid, started));
        }
        let started = Instant::now();
        let mut kernel_restarted = false;
        if rt.kernel.as_ref().is_none_or(|k| k.has_exited()) {
            // The kernel died between executions; start afresh.
            kernel_restarted = true;
            if let Err(e) = self.replace_kernel(rt).await {
                let (status, err) = match e {
                    SandboxError::Deleted => (ExecStatus::Error, deleted_error()),
                    e => (
                        ExecStatus::Crashed,
                        err_content("KernelStartFailed", e.to_string()),
                    ),
                };
                let mut r = ExecutionResult::ended(record.id, status, err);
                r.kernel_restarted = true;
                r.state_lost = true;
                return r;
            }
        }
        let ooms_before = self.cgroup.oom_kills();
        let files_before = snapshot(self);
        self.executions.fetch_add(1, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + opts.timeout;
        let mut input = record.take_input().unwrap_or_else(|| mpsc::channel(1).1);

        let kernel = rt.kernel.as_mut().expect("a kernel was just ensured");
        let pid = kernel.pid;
        let mut ending;
        let mut reply_count = None;
        let mut reply_error = false;
        let mut input_timed_out = false;
        let mut request = ExecuteRequest::new(opts.code);
        request.allow_stdin = opts.allow_stdin;
        request.silent = opts.silent;
        request.store_history = opts.store_history && !opts.silent;
        match kernel.client.execute(request).await {
            Ok(mut exec) => {
                let mut d = Driver {
                    exec: &mut exec,
                    client: &kernel.client,
                    record,
                    input: &mut input,
                    input_timeout: opts.input_timeout,
                    input_deadline: None,
                    input_timed_out: false,
                    pid,
                };
                ending = d.drive(kernel.exited(), deadline).await;
                if matches!(ending, Ending::TimedOut) {
                    tracing::info!("execution timed out; interrupting");
                    record.input_abandoned();
                    isolation::signal_group(pid, Signal::SIGINT);
                    let grace = tokio::time::Instant::now() + self.cfg.interrupt_grace;
                    ending = match d.drive(kernel.exited(), grace).await {
                        Ending::Complete | Ending::NoReply => Ending::TimedOut,
                        Ending::TimedOut => {
                            Ending::Crashed("timeout: did not stop after SIGINT".into())
                        }
                        Ending::Crashed(why) => Ending::Crashed(format!("timeout: {why}")),
                    };
                }
                input_timed_out = d.input_timed_out;
                if let Some(r) = exec.reply() {
                    reply_count = r.execution_count;
                    reply_error = r.status != "ok";
                }
            }
            Err(e) => ending = Ending::Crashed(format!("sending the request: {e}")),
        }

        let timed_out = started.elapsed() >= opts.timeout;
        let mut state_lost = false;
        let mut deleted = false;
        let mut status = match &ending {
            Ending::Complete if reply_error || record.has_error() => ExecStatus::Error,
            Ending::Complete => ExecStatus::Ok,
            Ending::NoReply => ExecStatus::Error,
            Ending::TimedOut => ExecStatus::Timeout,
            Ending::Crashed(why) => {
                tracing::warn!(%why, "kernel lost during execution");
                state_lost = true;
                kernel_restarted = true;
                match self.replace_kernel(rt).await {
                    Ok(()) => {}
                    Err(SandboxError::Deleted) => deleted = true,
                    Err(e) => tracing::error!(error = %e, "restarting the kernel"),
                }
                if why.starts_with("timeout") || timed_out {
                    ExecStatus::Timeout
                } else {
                    ExecStatus::Crashed
                }
            }
        };
        // Still under the lock: the next execution must not be counted here.
        let files = diff(&files_before, &snapshot(self));
        record.push("files", &files);
        let out = record.take_outputs();
        let mut error = out.error;
        let oom_killed = state_lost && self.cgroup.oom_kills() > ooms_before;
        if oom_killed {
            status = ExecStatus::Error;
            error = err_content("OOMKilled", format!(
                "the sandbox ran out of memory (limit {} MB) and its kernel was killed; a fresh kernel was started and its state was lost",
                self.limits.memory_mb
            ));
        } else if deleted && error.is_none() {
            error = deleted_error();
        } else if status == ExecStatus::Crashed && error.is_none() {
            error = err_content(
                "KernelDied",
                "the kernel process exited during execution; it was restarted and its state was lost",
            );
        } else if matches!(ending, Ending::NoReply) && error.is_none() {
            error = if record.was_interrupted() {
                err_content(
                    "KeyboardInterrupt",
                    "interrupted before the cell's code began running; the kernel's state is kept",
                )
            } else {
                err_content(
                    "NoReply",
                    "the kernel went idle without answering the request; its state is kept",
                )
            };
        } else if input_timed_out {
            if let Some(e) = error.as_mut().filter(|e| e.ename == "KeyboardInterrupt") {
                e.ename = "InputTimeout".into();
                e.evalue = format!(
                    "input() got no answer within {} s; answer through POST /v1/sandboxes/{}/executions/{}/input, raise input_timeout_s, or send allow_stdin: false",
                    opts.input_timeout.as_secs_f64(),
                    self.id,
                    record.id.0
                );
            }
        }
        ExecutionResult {
            execution_id: record.id,
            execution_count: reply_count,
            status,
            stdout: out.stdout,
            stderr: out.stderr,
            outputs: out.outputs,
            error,
            duration_ms: started.elapsed().as_millis() as u64,
            truncated: out.truncated,
            dropped: out.dropped,
            kernel_restarted,
            state_lost,
            files,
            layout: out.layout,
        }
    }
}

/// The result as the trace stores it: the API's JSON plus `layout`, with
/// large output values moved out as blobs. Serialised straight from the
/// typed result, so a big stdout is not copied into a JSON tree first.
fn stored_result(result: &mut ExecutionResult) -> (String, Vec<(String, String)>) {
    #[derive(Serialize)]
    struct Stored<'a> {
        #[serde(flatten)]
        result: &'a ExecutionResult,
        layout: &'a [Segment],
    }
    let originals = std::mem::take(&mut result.outputs);
    let (outputs, blobs) = blob_outputs(&originals);
    result.outputs = outputs;
    let json = serde_json::to_string(&Stored {
        result,
        layout: &result.layout,
    })
    .unwrap_or_default();
    result.outputs = originals;
    (json, blobs)
}

fn deleted_error() -> Option<ErrorContent> {
    err_content(
        "SandboxDeleted",
        "the sandbox was deleted (or the server stopped) before the execution ended",
    )
}

impl Sandbox {
    /// Sends a Jupyter client's request that is not an execution
    /// (`kernel_info`, `complete`, `inspect`, `comm_*`, …) to the kernel, in
    /// FIFO order with executions (its place is taken now, in call order),
    /// and mirrors every message parented by it until its reply and `idle`
    /// arrived (or 30 s passed).
    pub fn forward_request(
        self: &Arc<Self>,
        channel: Channel,
        content: Content,
        buffers: Vec<bytes::Bytes>,
        mirror: super::record::Mirror,
    ) {
        let Some(pending) = self.try_pending() else {
            tracing::warn!(sandbox_id = %self.id, "too many forwarded requests waiting; one dropped");
            return;
        };
        let turn = self.turn();
        let s = self.clone();
        tokio::spawn(async move {
            let _pending = pending;
            let Ok(rt) = tokio::time::timeout(FORWARD_WAIT, turn).await else {
                tracing::warn!(sandbox_id = %s.id, "a forwarded request waited too long for its turn");
                return;
            };
            let _ = s
                .forward_in_turn(rt, channel, content, buffers, mirror)
                .await;
        });
    }

    /// A place in the sandbox's FIFO, taken now, in call order (the lock
    /// future is polled once, which queues it); it resolves to the runtime
    /// once every earlier holder is done.
    fn turn(&self) -> impl std::future::Future<Output = OwnedMutexGuard<Runtime>> + Send + 'static {
        // Unconstrained: a task out of its co-op budget must still be queued
        // by this first poll.
        let mut turn = Box::pin(tokio::task::unconstrained(
            self.runtime.clone().lock_owned(),
        ));
        let ready = (&mut turn).now_or_never();
        async move {
            match ready {
                Some(rt) => rt,
                None => turn.await,
            }
        }
    }

    async fn forward_in_turn(
        self: &Arc<Self>,
        mut rt: OwnedMutexGuard<Runtime>,
        channel: Channel,
        content: Content,
        buffers: Vec<bytes::Bytes>,
        mirror: super::record::Mirror,
    ) -> Result<(), SandboxError> {
        if self.deleted.load(Ordering::SeqCst) {
            return Err(SandboxError::Deleted);
        }
        if rt.kernel.as_ref().is_none_or(|k| k.has_exited()) {
            self.replace_kernel(&mut rt).await?;
        }
        let kernel = rt.kernel.as_ref().ok_or(SandboxError::NotRunning)?;
        let msg_type = content.msg_type().to_owned();
        let mut sub = kernel
            .client
            .request_with_buffers(channel, content, buffers)
            .await
            .map_err(|_| SandboxError::NotRunning)?;
        let mut deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // comm_open, comm_msg and comm_close have no reply: idle ends them.
        let (mut replied, mut idle) = (!msg_type.ends_with("_request"), false);
        while !(replied && idle) {
            let Ok(Some((ch, msg))) = tokio::time::timeout_at(deadline, sub.recv()).await else {
                break;
            };
            replied |= ch == channel && msg.msg_type().ends_with("_reply");
            if matches!(&msg.content, Content::Status(s) if s.execution_state == "idle") && !idle {
                idle = true;
                // A request the kernel does not answer ends soon after idle.
                deadline = deadline.min(tokio::time::Instant::now() + REPLY_AFTER_IDLE);
            }
            // The runtime is held: a client that does not read is not
            // waited for long (the same rule as an execution's mirror).
            let sent = mirror.tx.send((mirror.tag.clone(), ch, msg));
            if !matches!(tokio::time::timeout(MIRROR_WAIT, sent).await, Ok(Ok(()))) {
                break;
            }
        }
        self.touch();
        Ok(())
    }
}
