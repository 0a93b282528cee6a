//! One execution in a sandbox.
//!
//! The execution waits its turn on the sandbox's FIFO lock, sends
//! `execute_request`, and folds iopub output until both `execute_reply` and
//! the matching `idle` have arrived. Two things can cut it short:
//! - **timeout**: at `timeout_s` the kernel's process group gets SIGINT; if the
//!   kernel finishes within the grace period its state is kept, otherwise the
//!   kernel is replaced and state is lost;
//! - **crash**: the kernel process exits (e.g. `os._exit(1)`); the kernel is
//!   replaced and state is lost.
//!
//! The result always says which happened (`status`, `kernel_restarted`, `state_lost`).

use super::{ExecutionId, Sandbox, SandboxError};
use crate::isolation;
use crate::isolation::beneath::Kind;
use cellblock_protocol::client::{Execution, ExecutionEvent};
use cellblock_protocol::message::{ErrorContent, ExecuteRequest};
use cellblock_protocol::outputs::{Output, OutputCollector};
use nix::sys::signal::Signal;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecStatus {
    Ok,
    Error,
    Timeout,
    Crashed,
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
    /// Output beyond the per-execution cap was dropped.
    pub truncated: bool,
    /// The kernel was replaced during this execution.
    pub kernel_restarted: bool,
    /// Variables, imports and functions defined before are gone.
    pub state_lost: bool,
    /// What changed under /home/user during the execution.
    pub files: FileChanges,
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
    pub timeout: Duration,
}

enum Ending {
    Complete,
    TimedOut,
    Crashed(String),
}

/// Decrements the active count when the execution ends, however it ends.
struct ActiveGuard<'a>(&'a Sandbox);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// Folds events until the execution completes, the kernel exits, or `deadline`.
async fn drive(
    exec: &mut Execution,
    collector: &mut OutputCollector,
    exited: impl std::future::Future<Output = String>,
    deadline: tokio::time::Instant,
) -> Ending {
    tokio::pin!(exited);
    loop {
        tokio::select! {
            ev = exec.next() => match ev {
                Some(ExecutionEvent::Iopub(m)) => collector.apply(&m),
                Some(_) => {}
                None if exec.is_complete() => return Ending::Complete,
                None => return Ending::Crashed("the kernel connection closed".into()),
            },
            status = &mut exited => {
                // Output published just before the exit may still be queued.
                while let Ok(Some(ExecutionEvent::Iopub(m))) =
                    tokio::time::timeout(Duration::from_millis(20), exec.next()).await
                {
                    collector.apply(&m);
                }
                return Ending::Crashed(status);
            }
            _ = tokio::time::sleep_until(deadline) => return Ending::TimedOut,
        }
    }
}

impl Sandbox {
    /// Runs code in this sandbox's kernel and returns the full result.
    #[tracing::instrument(skip_all, fields(sandbox_id = %self.id))]
    pub async fn execute(
        self: &Arc<Self>,
        opts: ExecuteOptions,
    ) -> Result<ExecutionResult, SandboxError> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let _guard = ActiveGuard(self);
        self.touch();
        let mut rt = self.runtime.lock().await;
        if self.deleted.load(Ordering::SeqCst) {
            return Err(SandboxError::Deleted);
        }
        let mut kernel_restarted = false;
        if rt.kernel.as_ref().is_none_or(|k| k.has_exited()) {
            // The kernel died between executions; start afresh.
            self.replace_kernel(&mut rt).await?;
            kernel_restarted = true;
        }
        let ooms_before = self.cgroup.oom_kills();
        let files_before = snapshot(self);
        let started = Instant::now();
        let execution_id = ExecutionId(Uuid::new_v4());
        self.executions.fetch_add(1, Ordering::SeqCst);
        let mut collector = OutputCollector::new(self.cfg.max_output_bytes);
        let deadline = tokio::time::Instant::now() + opts.timeout;

        let kernel = rt.kernel.as_mut().ok_or(SandboxError::Deleted)?;
        let pid = kernel.pid;
        let mut ending;
        let mut reply_count = None;
        let mut reply_error = false;
        match kernel.client.execute(ExecuteRequest::new(opts.code)).await {
            Ok(mut exec) => {
                ending = drive(&mut exec, &mut collector, kernel.wait_exit(), deadline).await;
                if matches!(ending, Ending::TimedOut) {
                    tracing::info!(sandbox_id = %self.id, "execution timed out; interrupting");
                    isolation::signal_group(pid, Signal::SIGINT);
                    let grace = tokio::time::Instant::now() + self.cfg.interrupt_grace;
                    ending = match drive(&mut exec, &mut collector, kernel.wait_exit(), grace).await
                    {
                        Ending::Complete => Ending::TimedOut,
                        Ending::TimedOut => Ending::Crashed("did not stop after SIGINT".into()),
                        crashed => crashed,
                    };
                    if let Ending::Crashed(why) = &ending {
                        tracing::info!(sandbox_id = %self.id, %why, "replacing the kernel after a timeout");
                    }
                    // Keep the timeout status either way; a restart is flagged below.
                    if !matches!(ending, Ending::TimedOut) {
                        ending = Ending::Crashed(format!("timeout: {}", crash_reason(&ending)));
                    }
                }
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
            Ending::Complete if reply_error || collector.outputs().error.is_some() => {
                ExecStatus::Error
            }
            Ending::Complete => ExecStatus::Ok,
            Ending::TimedOut => ExecStatus::Timeout,
            Ending::Crashed(why) => {
                tracing::warn!(sandbox_id = %self.id, %why, "kernel lost during execution");
                state_lost = true;
                kernel_restarted = true;
                match self.replace_kernel(&mut rt).await {
                    Ok(()) => {}
                    Err(SandboxError::Deleted) => deleted = true,
                    Err(e) => {
                        tracing::error!(sandbox_id = %self.id, error = %e, "restarting the kernel")
                    }
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
        drop(rt);
        let out = collector.finish();
        let mut error = out.error;
        let oom_killed = state_lost && self.cgroup.oom_kills() > ooms_before;
        if oom_killed {
            status = ExecStatus::Error;
            error = Some(ErrorContent {
                ename: "OOMKilled".into(),
                evalue: format!(
                    "the sandbox ran out of memory (limit {} MB) and its kernel was killed; a fresh kernel was started and its state was lost",
                    self.limits.memory_mb
                ),
                traceback: Vec::new(),
            });
        } else if deleted && error.is_none() {
            error = Some(ErrorContent {
                ename: "SandboxDeleted".into(),
                evalue: "the sandbox was deleted (or the server stopped) during execution".into(),
                traceback: Vec::new(),
            });
        } else if status == ExecStatus::Crashed && error.is_none() {
            error = Some(ErrorContent {
                ename: "KernelDied".into(),
                evalue: "the kernel process exited during execution; it was restarted and its state was lost".into(),
                traceback: Vec::new(),
            });
        }
        Ok(ExecutionResult {
            execution_id,
            execution_count: reply_count,
            status,
            stdout: out.stdout,
            stderr: out.stderr,
            outputs: out.outputs,
            error,
            duration_ms: started.elapsed().as_millis() as u64,
            truncated: out.truncated,
            kernel_restarted,
            state_lost,
            files,
        })
    }
}

fn crash_reason(e: &Ending) -> &str {
    match e {
        Ending::Crashed(why) => why,
        _ => "",
    }
}
