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
//! - a different `disk_mb` (the home's tmpfs size), env variables read when
//!   a process starts (`PYTHON*`, `LD_*`, locale, `TZ`, thread counts of
//!   numeric libraries, …) or limits the sandbox cannot take (a memory
//!   limit below what its kernel uses) do not fit: that request gets a cold
//!   sandbox, and the pooled one stays.
//!
//! A pooled sandbox whose kernel died, or that cannot take the options, is
//! torn down and the next one (or a cold start) is used. The pool refills in
//! the background, one sandbox at a time, and is emptied at shutdown.
//! Pooled sandboxes do not count against `--max-sandboxes` until taken; they
//! are not listed, traced or culled before.

use super::{CreateOptions, Manager, Sandbox};
use crate::isolation::cgroup;
use cellblock_protocol::message::ExecuteRequest;
use std::sync::atomic::Ordering;
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
        if limits.disk_mb != self.cfg.default_limits.disk_mb
            || super::kernel::read_at_startup(&opts.env)
        {
            return None;
        }
        loop {
            let taken = self.pool().pop_front();
            let mut sandbox = taken?;
            match fit(&mut sandbox, opts, limits).await {
                Ok(()) => {
                    self.pool_wake.notify_one();
                    return Some(sandbox);
                }
                Err(Misfit::Request(why)) => {
                    // The request's fault (say, a memory limit below what
                    // the kernel uses): the sandbox goes back, as it was.
                    tracing::info!(sandbox_id = %sandbox.id, %why, "a request's limits do not fit a pooled sandbox; starting one cold");
                    self.pool().push_front(sandbox);
                    return None;
                }
                Err(Misfit::Dead(why)) => {
                    tracing::warn!(sandbox_id = %sandbox.id, %why, "a pooled sandbox is not usable");
                    self.pool_wake.notify_one();
                    sandbox.teardown().await;
                    self.release_uid_slot(sandbox.slot);
                    if limits != self.cfg.default_limits {
                        // Perhaps the request's limits killed it (a memory
                        // limit below its use, on cgroup v2): the next one
                        // would go the same way. Start cold.
                        return None;
                    }
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
        // Pooled kernels are forked like the others: the first fill waits
        // for the zygote (it imports the stack once, about a second).
        if let Some(z) = self.zygote() {
            z.wait_ready(std::time::Duration::from_secs(60)).await;
        }
        loop {
            while !self.is_shutting_down() && self.pool_ready() < self.cfg.pool_size {
                let opts = CreateOptions {
                    idle_timeout: self.cfg.default_idle_timeout,
                    limits: Some(self.cfg.default_limits),
                    ..CreateOptions::default()
                };
                self.pool_filling.store(true, Ordering::SeqCst);
                let made = self.prepare(opts).await;
                // Checked and pushed under the pool's lock, which
                // `drain_pool` takes after shutdown began: a sandbox is
                // either drained there or torn down here.
                let late = match made {
                    Ok(sandbox) => {
                        let mut pool = self.pool();
                        if self.is_shutting_down() {
                            Some(sandbox)
                        } else {
                            tracing::debug!(sandbox_id = %sandbox.id, "pooled sandbox ready");
                            pool.push_back(sandbox);
                            None
                        }
                    }
                    Err(e) => {
                        self.pool_filling.store(false, Ordering::SeqCst);
                        tracing::warn!(error = %e, "filling the warm pool");
                        tokio::time::sleep(RETRY_AFTER).await;
                        continue;
                    }
                };
                if let Some(sandbox) = late {
                    sandbox.teardown().await;
                    self.release_uid_slot(sandbox.slot);
                }
                self.pool_filling.store(false, Ordering::SeqCst);
            }
            if self.is_shutting_down() {
                return;
            }
            self.pool_wake.notified().await;
        }
    }

    /// Tears down every pooled sandbox (at shutdown), after the one being
    /// made, if any, is done (up to the kernel start timeout).
    pub(super) async fn drain_pool(&self) {
        let deadline = std::time::Instant::now() + self.cfg.kernel_start_timeout;
        while self.pool_filling.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pooled: Vec<Sandbox> = self.pool().drain(..).collect();
        for sandbox in pooled {
            sandbox.teardown().await;
            self.release_uid_slot(sandbox.slot);
        }
        self.pool_wake.notify_one();
    }
}

/// Why a pooled sandbox was not handed out.
enum Misfit {
    /// The request asks for what this sandbox cannot take; it is fine.
    Request(String),
    /// The sandbox is not usable (its kernel died or does not answer).
    Dead(String),
}

fn cgroup_limits(l: crate::config::SandboxLimits) -> cgroup::Limits {
    cgroup::Limits {
        memory_mb: l.memory_mb,
        cpu_millis: (l.cpus * 1000.0).round() as u64,
        pids: l.pids,
    }
}

/// Applies a request's options to a pooled sandbox: limits first (so a
/// kernel a lower memory limit kills is seen by the ping after), then the
/// liveness ping, then the env.
async fn fit(
    sandbox: &mut Sandbox,
    opts: &CreateOptions,
    limits: crate::config::SandboxLimits,
) -> Result<(), Misfit> {
    if limits != sandbox.limits {
        if let Err(e) = sandbox.cgroup.set_limits(cgroup_limits(limits)) {
            let _ = sandbox.cgroup.set_limits(cgroup_limits(sandbox.limits));
            return Err(Misfit::Request(format!("its limits: {e}")));
        }
    }
    {
        let rt = sandbox.runtime.lock().await;
        let dead = |why: String| Misfit::Dead(why);
        let kernel = rt
            .kernel
            .as_ref()
            .filter(|k| !k.has_exited())
            .ok_or_else(|| dead("its kernel exited".into()))?;
        // Alive and answering (a kernel killed a moment ago may not have
        // been noticed yet): one kernel_info round trip, ~2 ms.
        kernel
            .client
            .kernel_info(PING_TIMEOUT)
            .await
            .map_err(|e| dead(format!("its kernel does not answer: {e}")))?;
        if !opts.env.is_empty() {
            let vars = serde_json::to_string(&opts.env).map_err(|e| dead(e.to_string()))?;
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
                .map_err(|_| dead("setting its env timed out".into()))?
                .map_err(dead)?;
        }
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
