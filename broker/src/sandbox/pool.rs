//! The warm pool: `--pool-size N` sandboxes of the image kept created and
//! ready (fully isolated, kernel answering), so `POST /v1/sandboxes` hands
//! one out in milliseconds instead of starting a kernel.
//!
//! A pooled sandbox is made exactly as a cold one, with the default options,
//! and nothing ever runs in it before it is taken: its namespace is empty,
//! its home clean, its first execution is number 1, and its RNGs were seeded
//! by its own process (no state is shared with any other sandbox).
//!
//! At take time the request's options are applied:
//! - idle timeout and metadata: set; the sandbox's `created_at` and idle
//!   clock start then;
//! - memory, CPU and pids limits: written to its cgroup;
//! - env: set in the kernel's `os.environ` by a silent execution (no
//!   execution count, no history, nothing bound in the user namespace), and
//!   kept for commands and kernel restarts;
//! - a different `disk_mb` (the home's tmpfs size) does not fit: that
//!   request gets a cold sandbox.
//!
//! A pooled sandbox whose kernel died, or that cannot take the options, is
//! torn down and the next one (or a cold start) is used. The pool refills in
//! the background, one sandbox at a time, and is emptied at shutdown.
//! Pooled sandboxes do not count against `--max-sandboxes` until taken; they
//! are not listed, traced or culled before.

use super::{CreateOptions, Manager, Sandbox};
use crate::isolation::cgroup;
use cellblock_protocol::message::ExecuteRequest;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long setting the env of a taken sandbox may take.
const FIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a pooled kernel may take to answer at take time.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// The wait before trying again after a pooled sandbox failed to start.
const RETRY_AFTER: Duration = Duration::from_secs(5);

impl Manager {
    fn pool(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Sandbox>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pooled sandboxes ready now.
    pub fn pool_ready(&self) -> usize {
        self.pool().len()
    }

    /// A ready sandbox from the pool with `opts` applied, if one fits.
    pub(super) async fn take_pooled(&self, opts: &CreateOptions) -> Option<Sandbox> {
        if self.cfg.pool_size == 0 {
            return None;
        }
        let limits = opts.limits.unwrap_or(self.cfg.default_limits);
        if limits.disk_mb != self.cfg.default_limits.disk_mb {
            return None;
        }
        loop {
            let taken = self.pool().pop_front();
            self.pool_wake.notify_one();
            let mut sandbox = taken?;
            match fit(&mut sandbox, opts, limits).await {
                Ok(()) => return Some(sandbox),
                Err(why) => {
                    tracing::warn!(sandbox_id = %sandbox.id, %why, "a pooled sandbox did not fit; trying the next");
                    sandbox.teardown().await;
                    self.release_uid_slot(sandbox.slot);
                }
            }
        }
    }

    /// Keeps the pool full until shutdown: one sandbox at a time, woken
    /// whenever one is taken.
    pub async fn run_pool(self: Arc<Self>) {
        if self.cfg.pool_size == 0 {
            return;
        }
        loop {
            while !self.is_shutting_down() && self.pool_ready() < self.cfg.pool_size {
                let opts = CreateOptions {
                    idle_timeout: self.cfg.default_idle_timeout,
                    limits: Some(self.cfg.default_limits),
                    ..CreateOptions::default()
                };
                match self.prepare(opts).await {
                    Ok(sandbox) if self.is_shutting_down() => {
                        sandbox.teardown().await;
                        self.release_uid_slot(sandbox.slot);
                    }
                    Ok(sandbox) => {
                        tracing::debug!(sandbox_id = %sandbox.id, "pooled sandbox ready");
                        self.pool().push_back(sandbox);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "filling the warm pool");
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                }
            }
            if self.is_shutting_down() {
                return;
            }
            self.pool_wake.notified().await;
        }
    }

    /// Tears down every pooled sandbox (at shutdown).
    pub(super) async fn drain_pool(&self) {
        let pooled: Vec<Sandbox> = self.pool().drain(..).collect();
        for sandbox in pooled {
            sandbox.teardown().await;
            self.release_uid_slot(sandbox.slot);
        }
        self.pool_wake.notify_one();
    }
}

/// Applies a request's options to a pooled sandbox.
async fn fit(
    sandbox: &mut Sandbox,
    opts: &CreateOptions,
    limits: crate::config::SandboxLimits,
) -> Result<(), String> {
    {
        let rt = sandbox.runtime.lock().await;
        let kernel = rt
            .kernel
            .as_ref()
            .filter(|k| !k.has_exited())
            .ok_or("its kernel exited")?;
        // Alive and answering (a kernel killed a moment ago may not have
        // been noticed yet): one kernel_info round trip, ~2 ms.
        kernel
            .client
            .kernel_info(PING_TIMEOUT)
            .await
            .map_err(|e| format!("its kernel does not answer: {e}"))?;
        if !opts.env.is_empty() {
            let vars = serde_json::to_string(&opts.env).map_err(|e| e.to_string())?;
            let mut req = ExecuteRequest::new(format!("__import__('os').environ.update({vars})"));
            req.silent = true;
            req.store_history = false;
            let ran = async {
                let mut ex = kernel
                    .client
                    .execute(req)
                    .await
                    .map_err(|e| e.to_string())?;
                while ex.next().await.is_some() {}
                match ex.reply() {
                    Some(r) if r.status == "ok" => Ok(()),
                    Some(r) => Err(format!("setting its env failed: {}", r.status)),
                    None => Err("its kernel went away while setting its env".to_owned()),
                }
            };
            tokio::time::timeout(FIT_TIMEOUT, ran)
                .await
                .map_err(|_| "setting its env timed out".to_owned())??;
        }
    }
    if limits != sandbox.limits {
        sandbox
            .cgroup
            .set_limits(cgroup::Limits {
                memory_mb: limits.memory_mb,
                cpu_millis: (limits.cpus * 1000.0).round() as u64,
                pids: limits.pids,
            })
            .map_err(|e| format!("its limits: {e}"))?;
    }
    let now = SystemTime::now();
    sandbox.created_at = now;
    *sandbox
        .last_activity
        .get_mut()
        .unwrap_or_else(|e| e.into_inner()) = now;
    sandbox.idle_timeout = opts.idle_timeout;
    sandbox.metadata = opts.metadata.clone();
    sandbox.env = opts.env.clone();
    sandbox.limits = limits;
    sandbox.from_pool = true;
    Ok(())
}
