//! Sandbox lifecycle: the manager owns every live sandbox, each sandbox owns
//! its kernel, and executions in one sandbox run one at a time in arrival
//! order (a FIFO lock) while different sandboxes run in parallel.
//!
//! - [`kernel`]: one kernel process and its client.
//! - [`execute`]: one execution: queueing, outputs, input, timeout
//!   (interrupt, then restart) and crash recovery.
//! - [`record`]: every execution's state, event log and result, kept for
//!   re-attaching clients and for listing.
//! - [`leftovers`]: reaping what an earlier run of the broker left behind.
//! - [`pool`]: the warm pool of ready sandboxes.
//! - [`zygote`]: the fork server kernels are forked from.

pub mod commands;
pub mod execute;
pub mod kernel;
pub mod leftovers;
pub mod pool;
pub mod record;
pub mod zygote;

use crate::config::{Config, SandboxLimits};
use crate::image::Image;
use crate::isolation;
use crate::isolation::cgroup::{self, Layout, SandboxCgroup};
use crate::isolation::spec::{JailSpec, ID_RANGE};
use crate::trace::Store;
use cellblock_protocol::message::JsonMap;
use kernel::{KernelError, KernelProcess, KernelSpec};
use nix::sys::signal::Signal;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// How often traces past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
use uuid::Uuid;

/// A sandbox id (a UUID, as Jupyter's kernel routes require).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SandboxId(pub Uuid);

impl std::fmt::Display for SandboxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An execution id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ExecutionId(pub Uuid);

/// Errors of sandbox operations; the API maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("no sandbox with id {0}")]
    NotFound(SandboxId),
    #[error("the sandbox limit of {0} is reached; delete one or wait for idle ones to be culled")]
    TooMany(usize),
    #[error("the sandbox was deleted")]
    Deleted,
    #[error("the sandbox's execution queue is full ({0} waiting besides the running one); wait for one to finish or cancel one")]
    QueueFull(usize),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("starting the kernel failed: {0}")]
    KernelStart(#[from] KernelError),
    #[error("preparing the sandbox directory {path}: {source}")]
    Prepare {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the sandbox's kernel is not running; try again")]
    NotRunning,
    #[error("setting up the sandbox's cgroups: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("setting up the sandbox's home: {0}")]
    Home(#[from] isolation::TmpfsError),
}

/// What a client asked for when creating a sandbox (already validated).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub idle_timeout: Duration,
    pub limits: Option<SandboxLimits>,
    pub env: BTreeMap<String, String>,
    pub metadata: JsonMap,
}

/// Holds a host-wide reservation of a uid range while the sandbox lives.
#[derive(Debug)]
pub(crate) struct UidLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// The kernel slot of a sandbox, guarded by the FIFO execution lock.
pub(crate) struct Runtime {
    kernel: Option<KernelProcess>,
    next_generation: u64,
}

/// Websocket requests (not executions) that may wait per sandbox.
pub const MAX_PENDING: usize = 64;

/// One sandbox: a long-lived kernel and its directories.
pub struct Sandbox {
    pub id: SandboxId,
    pub image: Image,
    pub created_at: SystemTime,
    pub idle_timeout: Duration,
    pub metadata: JsonMap,
    pub limits: SandboxLimits,
    env: BTreeMap<String, String>,
    /// Broker-only: jail specs, the pid file.
    run_dir: PathBuf,
    /// The jail without argv and env; its dirs are removed at teardown.
    jail: JailSpec,
    cgroup: SandboxCgroup,
    slot: u32,
    _uid_lock: UidLock,
    cfg: Arc<Config>,
    /// The image's zygote, when it is on.
    zygote: Option<Arc<zygote::Zygote>>,
    /// How the current kernel was made.
    origin: Mutex<kernel::Origin>,
    /// Serialises executions, restarts and teardown, in arrival order
    /// (tokio's mutex is fair; executions take their place at submission).
    runtime: Arc<tokio::sync::Mutex<Runtime>>,
    /// The current kernel's pid (its process group), readable without the lock
    /// so interrupt and delete can reach a busy kernel.
    kernel_pid: AtomicI32,
    generation: AtomicU64,
    restarts: AtomicU64,
    last_activity: Mutex<SystemTime>,
    /// Executions queued or running.
    active: AtomicUsize,
    /// Open Jupyter websocket connections: a connected kernel is not culled.
    connections: AtomicUsize,
    /// Permits for websocket requests waiting for their turn (forwarded
    /// requests, restarts): at most [`MAX_PENDING`] per sandbox.
    pending: Arc<tokio::sync::Semaphore>,
    executions: AtomicU64,
    deleted: AtomicBool,
    language_info: Mutex<JsonMap>,
    records: Mutex<record::Registry>,
    /// Taken ready from the warm pool rather than started for its request.
    pub from_pool: bool,
    /// Executions submitted so far (their order in the trace).
    submitted: AtomicU64,
    store: Arc<Store>,
}

/// The public view of a sandbox.
#[derive(Debug, Serialize)]
pub struct SandboxView {
    pub id: SandboxId,
    pub image: String,
    pub image_version: String,
    pub state: &'static str,
    pub created_at: String,
    pub last_activity: String,
    pub expires_at: String,
    pub idle_timeout_s: u64,
    pub metadata: JsonMap,
    pub limits: SandboxLimits,
    pub env_keys: Vec<String>,
    pub executions: u64,
    pub pending_executions: usize,
    pub kernel_restarts: u64,
    pub language_info: JsonMap,
    /// Taken ready from the warm pool.
    pub from_pool: bool,
    /// How the current kernel was made: `zygote` (forked, with the data
    /// stack imported) or `spawn` (a fresh interpreter).
    pub kernel_origin: kernel::Origin,
}

fn iso(t: SystemTime) -> String {
    cellblock_protocol::message::iso8601(t)
}

impl Sandbox {
    fn lock_activity(&self) -> std::sync::MutexGuard<'_, SystemTime> {
        self.last_activity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes to the trace store; a failure is logged, never fatal.
    pub(crate) fn trace(&self, write: impl FnOnce(&Store) -> Result<(), crate::trace::TraceError>) {
        trace_write(&self.store, self.id, write);
    }

    /// Records the deletion with the sandbox's final view.
    fn trace_deleted(&self) {
        let mut view = serde_json::to_value(self.view()).unwrap_or_default();
        view["state"] = serde_json::json!("deleted");
        self.trace(|s| s.sandbox_deleted(&self.id.to_string(), &view));
    }

    /// The sandbox's executions.
    pub fn records(&self) -> std::sync::MutexGuard<'_, record::Registry> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for one more waiting websocket request, if there is room.
    pub fn try_pending(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.pending.clone().try_acquire_owned().ok()
    }

    /// True once the sandbox was deleted (or the server is stopping).
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    /// Marks a Jupyter websocket connection open until the guard drops: the
    /// sandbox is not culled meanwhile, and its idle time counts from when
    /// the last connection closed.
    pub fn connected(self: &Arc<Self>) -> Connected {
        self.connections.fetch_add(1, Ordering::SeqCst);
        Connected(self.clone())
    }

    /// Marks the sandbox as used now.
    pub fn touch(&self) {
        *self.lock_activity() = SystemTime::now();
    }

    /// When the sandbox will be culled if nothing happens.
    pub fn expires_at(&self) -> SystemTime {
        *self.lock_activity() + self.idle_timeout
    }

    /// The public view.
    pub fn view(&self) -> SandboxView {
        let pending = self.active.load(Ordering::SeqCst);
        let last_activity = *self.lock_activity();
        SandboxView {
            id: self.id,
            image: self.image.name.clone(),
            image_version: self.image.version.clone(),
            state: if pending > 0 { "busy" } else { "ready" },
            created_at: iso(self.created_at),
            last_activity: iso(last_activity),
            expires_at: iso(last_activity + self.idle_timeout),
            idle_timeout_s: self.idle_timeout.as_secs(),
            metadata: self.metadata.clone(),
            limits: self.limits,
            env_keys: self.env.keys().cloned().collect(),
            executions: self.executions.load(Ordering::SeqCst),
            pending_executions: pending,
            kernel_restarts: self.restarts.load(Ordering::SeqCst),
            language_info: self
                .language_info
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            from_pool: self.from_pool,
            kernel_origin: *self.origin.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    async fn start_kernel(&self, rt: &mut Runtime) -> Result<(), SandboxError> {
        let generation = rt.next_generation;
        rt.next_generation += 1;
        let kernel = KernelProcess::start(KernelSpec {
            image: &self.image,
            run_dir: &self.run_dir,
            jail: &self.jail,
            env: &self.env,
            generation,
            start_timeout: self.cfg.kernel_start_timeout,
            max_message_bytes: self.cfg.max_kernel_message_bytes,
            preload: &self.cfg.preload,
            zygote: self.zygote.as_deref(),
        })
        .await?;
        self.kernel_pid.store(kernel.pid, Ordering::SeqCst);
        *self.origin.lock().unwrap_or_else(|e| e.into_inner()) = kernel.origin;
        self.generation.store(generation, Ordering::SeqCst);
        *self.language_info.lock().unwrap_or_else(|e| e.into_inner()) =
            kernel.info.language_info.clone();
        let li = serde_json::Value::Object(kernel.info.language_info.clone());
        self.trace(|s| s.set_language_info(&self.id.to_string(), &li));
        rt.kernel = Some(kernel);
        Ok(())
    }

    /// Replaces the kernel with a fresh one (state is lost).
    async fn replace_kernel(&self, rt: &mut Runtime) -> Result<(), SandboxError> {
        if let Some(k) = rt.kernel.take() {
            k.stop(false).await;
        }
        if self.deleted.load(Ordering::SeqCst) {
            return Err(SandboxError::Deleted);
        }
        self.restarts.fetch_add(1, Ordering::SeqCst);
        self.start_kernel(rt).await
    }

    /// The sandbox's home, opened from the host for the file API.
    pub fn files(&self) -> Result<isolation::beneath::Root, isolation::beneath::BeneathError> {
        self.touch();
        isolation::beneath::Root::open(&self.jail.home_dir, self.jail.host_uid())
    }

    /// The `cgroup.procs` files of the sandbox's cgroup(s).
    pub fn cgroup_procs(&self) -> Vec<PathBuf> {
        self.cgroup.procs_files()
    }

    /// Interrupts the running execution, if any. Returns whether one was running.
    pub fn interrupt(&self) -> bool {
        let running = self.records().running();
        match running {
            Some(r) => self.interrupt_execution(&r),
            None => {
                // Harmless if idle: the kernel ignores SIGINT between cells.
                self.signal_kernel(Signal::SIGINT);
                false
            }
        }
    }

    /// Interrupts a running execution: SIGINT to the kernel's process group
    /// now, or as soon as the kernel begins the cell.
    pub fn interrupt_execution(&self, record: &record::ExecutionRecord) -> bool {
        if record.request_interrupt() {
            self.signal_kernel(Signal::SIGINT);
        }
        true
    }

    /// Sends a signal to the current kernel's process group.
    pub(crate) fn signal_kernel(&self, signal: Signal) {
        isolation::signal_group(self.kernel_pid.load(Ordering::SeqCst), signal);
    }

    /// Restarts the kernel now. A running execution ends as `crashed`.
    #[tracing::instrument(skip_all, fields(sandbox_id = %self.id))]
    pub async fn restart(&self) -> Result<(), SandboxError> {
        let killed_generation = self.generation.load(Ordering::SeqCst);
        if self.active.load(Ordering::SeqCst) > 0 {
            // Do not wait behind a long execution: end it.
            self.signal_kernel(Signal::SIGKILL);
        }
        let mut rt = self.runtime.lock().await;
        if self.deleted.load(Ordering::SeqCst) {
            return Err(SandboxError::Deleted);
        }
        let already_fresh = self.generation.load(Ordering::SeqCst) != killed_generation
            && rt.kernel.as_ref().is_some_and(|k| !k.has_exited());
        if !already_fresh {
            if let Some(k) = rt.kernel.take() {
                k.stop(true).await;
            }
            self.restarts.fetch_add(1, Ordering::SeqCst);
            self.start_kernel(&mut rt).await?;
        }
        self.touch();
        Ok(())
    }

    /// Stops the kernel and removes the sandbox's directories.
    #[tracing::instrument(skip_all, fields(sandbox_id = %self.id))]
    async fn teardown(&self) {
        self.deleted.store(true, Ordering::SeqCst);
        if self.active.load(Ordering::SeqCst) > 0 {
            self.signal_kernel(Signal::SIGKILL);
        }
        let mut rt = self.runtime.lock().await;
        if let Some(k) = rt.kernel.take() {
            k.stop(false).await;
        }
        self.cgroup.remove();
        isolation::unmount_tmpfs(&self.jail.home_dir);
        isolation::unmount_tmpfs(&self.jail.sock_dir);
        for dir in [&self.run_dir, &self.jail.home_dir, &self.jail.root_dir] {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), error = %e, "removing sandbox directory");
                }
            }
        }
    }
}

/// Owns every live sandbox.
pub struct Manager {
    cfg: Arc<Config>,
    image: Image,
    sandboxes: RwLock<HashMap<SandboxId, Arc<Sandbox>>>,
    /// Live plus being-created sandboxes, for the limit.
    slots: AtomicUsize,
    /// Uid-range slots in use by this instance.
    uid_slots: Mutex<BTreeSet<u32>>,
    layout: Layout,
    shutting_down: AtomicBool,
    store: Arc<Store>,
    /// Ready sandboxes of the warm pool (see [`pool`]).
    pool: Mutex<std::collections::VecDeque<Sandbox>>,
    /// Wakes [`Manager::run_pool`] when one was taken.
    pool_wake: tokio::sync::Notify,
    /// A pooled sandbox is being made (shutdown waits for it).
    pool_filling: AtomicBool,
    /// The image's fork server, unless `--no-zygote`.
    zygote: Option<Arc<zygote::Zygote>>,
}

/// Runs a trace write off the async worker's hot path; failures are logged.
fn trace_write(
    store: &Store,
    id: SandboxId,
    write: impl FnOnce(&Store) -> Result<(), crate::trace::TraceError>,
) {
    let result = match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| write(store))
        }
        _ => write(store),
    };
    if let Err(e) = result {
        tracing::error!(sandbox_id = %id, error = %e, "writing the trace");
    }
}

/// Frees a reserved sandbox slot unless it was handed to a live sandbox.
struct Slot<'a>(&'a AtomicUsize, bool);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Manager {
    /// A manager for `image` with the given settings.
    pub fn new(cfg: Arc<Config>, image: Image, layout: Layout, store: Arc<Store>) -> Arc<Self> {
        let zygote = cfg.zygote_library.clone().map(|lib| {
            let dir = cfg.data_dir.join("zygote");
            zygote::Zygote::new(image.clone(), lib, dir, &cfg.preload)
        });
        Arc::new(Self {
            cfg,
            image,
            sandboxes: RwLock::new(HashMap::new()),
            slots: AtomicUsize::new(0),
            uid_slots: Mutex::new(BTreeSet::new()),
            layout,
            shutting_down: AtomicBool::new(false),
            store,
            pool: Mutex::default(),
            pool_wake: tokio::sync::Notify::new(),
            pool_filling: AtomicBool::new(false),
            zygote,
        })
    }

    /// The zygote, when it is on; [`zygote::Zygote::supervise`] runs it.
    pub fn zygote(&self) -> Option<&Arc<zygote::Zygote>> {
        self.zygote.as_ref()
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The image every sandbox uses today.
    pub fn image(&self) -> &Image {
        &self.image
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SandboxId, Arc<Sandbox>>> {
        self.sandboxes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SandboxId, Arc<Sandbox>>> {
        self.sandboxes.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a sandbox and waits until its kernel answers.
    #[tracing::instrument(skip_all)]
    pub async fn create(&self, opts: CreateOptions) -> Result<Arc<Sandbox>, SandboxError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(SandboxError::ShuttingDown);
        }
        let max = self.cfg.max_sandboxes;
        if self
            .slots
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(SandboxError::TooMany(max));
        }
        let mut slot = Slot(&self.slots, false);
        let sandbox = match self.take_pooled(&opts).await {
            Some(s) => s,
            None => self.prepare(opts).await?,
        };
        let sandbox = Arc::new(sandbox);
        let id = sandbox.id;
        if self.shutting_down.load(Ordering::SeqCst) {
            sandbox.teardown().await;
            self.release_uid_slot(sandbox.slot);
            return Err(SandboxError::ShuttingDown);
        }
        slot.1 = true;
        let view = serde_json::to_value(sandbox.view()).unwrap_or_default();
        let li = view["language_info"].clone();
        sandbox.trace(|s| s.sandbox_created(&id.to_string(), &view, &li, sandbox.created_at));
        self.write().insert(id, sandbox.clone());
        tracing::info!(sandbox_id = %id, from_pool = sandbox.from_pool, "sandbox ready");
        Ok(sandbox)
    }

    /// Makes a sandbox with `opts` and starts its kernel (for a request, or
    /// for the warm pool).
    async fn prepare(&self, opts: CreateOptions) -> Result<Sandbox, SandboxError> {
        let id = SandboxId(Uuid::new_v4());
        let (uid_slot, uid_lock) = self.take_uid_slot()?;
        let sandbox = match self.assemble(id, uid_slot, uid_lock, opts) {
            Ok(s) => s,
            Err(e) => {
                self.release_uid_slot(uid_slot);
                return Err(e);
            }
        };
        let started = {
            let mut rt = sandbox.runtime.lock().await;
            sandbox.start_kernel(&mut rt).await
        };
        if let Err(e) = started {
            tracing::warn!(sandbox_id = %id, error = %e, "sandbox failed to start");
            sandbox.teardown().await;
            self.release_uid_slot(uid_slot);
            return Err(e);
        }
        Ok(sandbox)
    }

    /// Reserves a uid range no other sandbox on this host holds: free in this
    /// instance, and its lock file not held by another cellblock process.
    fn take_uid_slot(&self) -> Result<(u32, UidLock), SandboxError> {
        let dir = &self.cfg.uid_lock_dir;
        std::fs::create_dir_all(dir).map_err(|source| SandboxError::Prepare {
            path: dir.display().to_string(),
            source,
        })?;
        let mut used = self.uid_slots.lock().unwrap_or_else(|e| e.into_inner());
        let max_slots = (u32::MAX - self.cfg.uid_base) / ID_RANGE;
        for n in 0..max_slots {
            if used.contains(&n) {
                continue;
            }
            let path = dir.join(n.to_string());
            let Ok(file) = std::fs::File::create(&path) else {
                continue;
            };
            if let Ok(lock) =
                nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            {
                used.insert(n);
                return Ok((n, UidLock(lock)));
            }
        }
        Err(SandboxError::TooMany(self.cfg.max_sandboxes))
    }

    fn release_uid_slot(&self, slot: u32) {
        self.uid_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&slot);
    }

    /// Creates the directories, cgroups and home of a new sandbox.
    fn assemble(
        &self,
        id: SandboxId,
        uid_slot: u32,
        uid_lock: UidLock,
        opts: CreateOptions,
    ) -> Result<Sandbox, SandboxError> {
        let name = id.0.simple().to_string();
        let limits = opts.limits.unwrap_or(self.cfg.default_limits);
        let run_dir = self.cfg.run_dir().join(&name);
        let jail = JailSpec {
            uid_base: self.cfg.uid_base + uid_slot * ID_RANGE,
            root_dir: self.cfg.roots_dir().join(&name),
            sock_dir: run_dir.join("sock"),
            home_dir: self.cfg.homes_dir().join(&name),
            ro_binds: vec![self.image.dir.clone(), self.image.base_prefix.clone()],
            tmp_mb: (limits.disk_mb / 4).clamp(16, 1024),
            cgroup_procs: Vec::new(),
            argv: Vec::new(),
            env: Vec::new(),
            cwd: "/home/user".into(),
        };
        for dir in [&run_dir, &jail.sock_dir, &jail.root_dir, &jail.home_dir] {
            std::fs::create_dir_all(dir).map_err(|source| SandboxError::Prepare {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let cgroup = self.layout.create(
            &name,
            cgroup::Limits {
                memory_mb: limits.memory_mb,
                cpu_millis: (limits.cpus * 1000.0).round() as u64,
                pids: limits.pids,
            },
        )?;
        let mut jail = jail;
        jail.cgroup_procs = cgroup.procs_files();
        // The socket dir gets its own small tmpfs at every kernel start.
        if let Err(e) = isolation::mount_tmpfs(&jail.home_dir, limits.disk_mb, jail.host_uid()) {
            cgroup.remove();
            return Err(e.into());
        }
        let now = SystemTime::now();
        Ok(Sandbox {
            id,
            image: self.image.clone(),
            created_at: now,
            idle_timeout: opts.idle_timeout,
            metadata: opts.metadata,
            limits,
            env: opts.env,
            run_dir,
            jail,
            cgroup,
            slot: uid_slot,
            _uid_lock: uid_lock,
            cfg: self.cfg.clone(),
            zygote: self.zygote.clone(),
            origin: Mutex::new(kernel::Origin::Spawn),
            runtime: Arc::new(tokio::sync::Mutex::new(Runtime {
                kernel: None,
                next_generation: 0,
            })),
            kernel_pid: AtomicI32::new(0),
            generation: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            last_activity: Mutex::new(now),
            active: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            pending: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING)),
            executions: AtomicU64::new(0),
            deleted: AtomicBool::new(false),
            language_info: Mutex::new(JsonMap::new()),
            records: Mutex::new(record::Registry::default()),
            from_pool: false,
            submitted: AtomicU64::new(0),
            store: self.store.clone(),
        })
    }

    /// The cgroup layout in use.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Looks a sandbox up.
    pub fn get(&self, id: SandboxId) -> Result<Arc<Sandbox>, SandboxError> {
        self.read()
            .get(&id)
            .cloned()
            .ok_or(SandboxError::NotFound(id))
    }

    /// Every live sandbox, oldest first.
    pub fn list(&self) -> Vec<Arc<Sandbox>> {
        let mut all: Vec<_> = self.read().values().cloned().collect();
        all.sort_by_key(|s| s.created_at);
        all
    }

    /// Deletes a sandbox: its kernel is stopped and its files removed.
    pub async fn delete(&self, id: SandboxId) -> Result<(), SandboxError> {
        let sandbox = self.write().remove(&id).ok_or(SandboxError::NotFound(id))?;
        sandbox.teardown().await;
        sandbox.trace_deleted();
        self.release_uid_slot(sandbox.slot);
        self.slots.fetch_sub(1, Ordering::SeqCst);
        tracing::info!(sandbox_id = %id, "sandbox deleted");
        Ok(())
    }

    /// Deletes sandboxes idle past their timeout. Returns how many.
    pub async fn cull_idle(&self) -> usize {
        let now = SystemTime::now();
        let idle: Vec<SandboxId> = self
            .read()
            .values()
            .filter(|s| {
                s.active.load(Ordering::SeqCst) == 0
                    && s.connections.load(Ordering::SeqCst) == 0
                    && s.expires_at() <= now
            })
            .map(|s| s.id)
            .collect();
        let mut n = 0;
        for id in idle {
            tracing::info!(sandbox_id = %id, "culling idle sandbox");
            if self.delete(id).await.is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Runs [`Manager::cull_idle`] forever at the configured interval.
    pub async fn run_culler(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.cull_interval);
        let mut last_prune = std::time::Instant::now();
        loop {
            tick.tick().await;
            if self.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            self.cull_idle().await;
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = std::time::Instant::now();
                let store = self.store.clone();
                let retention = self.cfg.trace_retention;
                match tokio::task::spawn_blocking(move || store.prune(retention)).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(sandboxes = n, "pruned old traces"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "pruning traces"),
                    _ => {}
                }
            }
        }
    }

    /// The trace store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stops every kernel; new sandboxes are refused from now on.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let ids: Vec<SandboxId> = self.read().keys().copied().collect();
        let mut set = tokio::task::JoinSet::new();
        for id in ids {
            if let Ok(sandbox) = self.get(id) {
                self.write().remove(&id);
                set.spawn(async move {
                    sandbox.teardown().await;
                    sandbox.trace_deleted();
                });
            }
        }
        while set.join_next().await.is_some() {}
        self.drain_pool().await;
        if let Some(z) = &self.zygote {
            z.stop().await;
        }
        tracing::info!("every kernel is stopped");
    }

    /// True once shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
/// An open Jupyter websocket connection to a sandbox; see
/// [`Sandbox::connected`].
pub struct Connected(Arc<Sandbox>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.touch();
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}
