//! Settings for `cellblock serve`, shared by every module as `Arc<Config>`.

use cellblock_protocol::outputs::OutputLimits;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The broker's settings.
#[derive(Clone)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// State: run dirs, sandbox homes, the lock file.
    pub data_dir: PathBuf,
    /// Where images are built.
    pub images_dir: PathBuf,
    /// Bearer key for the API; `None` means loopback only, no auth.
    pub api_key: Option<String>,
    /// Most live sandboxes.
    pub max_sandboxes: usize,
    /// Ready sandboxes kept in the warm pool.
    pub pool_size: usize,
    /// Modules every kernel imports before it starts (`--preload`).
    pub preload: Vec<String>,
    /// The zygote's shared library; `None` turns the zygote off and every
    /// kernel is spawned.
    pub zygote_library: Option<PathBuf>,
    /// Default and largest `timeout_s` of an execution.
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    /// After a timeout's interrupt, how long the kernel gets before a restart.
    pub interrupt_grace: Duration,
    /// Default and largest `idle_timeout_s` of a sandbox.
    pub default_idle_timeout: Duration,
    pub max_idle_timeout: Duration,
    /// How often idle sandboxes are looked for.
    pub cull_interval: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Output caps of an execution when the request names none; requests may
    /// only lower them.
    pub output_limits: OutputLimits,
    /// Executions that may wait behind the running one in a sandbox.
    pub max_queued_executions: usize,
    /// Bytes of streamed events kept per execution for re-attaching clients.
    pub event_log_bytes: usize,
    /// Bytes of finished executions' logs, results and code kept per sandbox;
    /// beyond it the oldest keep only their status.
    pub execution_retention_bytes: usize,
    /// How long `input()` waits for an answer when the request names no time.
    pub default_input_timeout: Duration,
    /// How long traces are kept after their sandbox is deleted.
    pub trace_retention: Duration,
    /// Largest single message accepted from a kernel.
    pub max_kernel_message_bytes: usize,
    /// How long a kernel may take to answer after it is spawned.
    pub kernel_start_timeout: Duration,
    /// Limits a sandbox gets when the request names none.
    pub default_limits: SandboxLimits,
    /// The most a request may ask for.
    pub max_limits: SandboxLimits,
    /// First host uid of the first sandbox's range; each sandbox gets 65536.
    pub uid_base: u32,
    /// The cgroup filesystem root.
    pub cgroup_root: PathBuf,
    /// Lock files that reserve uid ranges across every cellblock on the host.
    pub uid_lock_dir: PathBuf,
}

/// Per-sandbox resource limits.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SandboxLimits {
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids: u64,
    pub disk_mb: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("images_dir", &self.images_dir)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("max_sandboxes", &self.max_sandboxes)
            .field("pool_size", &self.pool_size)
            .field("preload", &self.preload)
            .field("zygote_library", &self.zygote_library)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults for everything but the paths and the address.
    pub fn new(listen: SocketAddr, data_dir: PathBuf, images_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            images_dir,
            api_key: None,
            max_sandboxes: 64,
            pool_size: 2,
            preload: Vec::new(),
            zygote_library: None,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(3600),
            interrupt_grace: Duration::from_secs(3),
            default_idle_timeout: Duration::from_secs(900),
            max_idle_timeout: Duration::from_secs(7 * 24 * 3600),
            cull_interval: Duration::from_secs(1),
            max_body_bytes: 16 * 1024 * 1024,
            output_limits: OutputLimits::default(),
            max_queued_executions: 16,
            event_log_bytes: 8 << 20,
            execution_retention_bytes: 256 << 20,
            default_input_timeout: Duration::from_secs(60),
            trace_retention: Duration::from_secs(7 * 24 * 3600),
            max_kernel_message_bytes: 64 * 1024 * 1024,
            kernel_start_timeout: Duration::from_secs(60),
            default_limits: SandboxLimits {
                memory_mb: 1024,
                cpus: 1.0,
                pids: 256,
                disk_mb: 1024,
            },
            max_limits: SandboxLimits {
                memory_mb: 16 * 1024,
                cpus: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
                pids: 4096,
                disk_mb: 16 * 1024,
            },
            uid_base: 1_000_000,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            uid_lock_dir: PathBuf::from("/run/cellblock/uid-ranges"),
        }
    }

    /// Directory of per-sandbox run dirs (connection files, sockets, pid files).
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }

    /// This instance's name: a hash of its data dir. Names its cgroup parent.
    pub fn instance(&self) -> String {
        use sha2::Digest;
        let h = sha2::Sha256::digest(self.data_dir.as_os_str().as_encoded_bytes());
        hex::encode(&h[..6])
    }

    /// The trace database.
    pub fn trace_db(&self) -> PathBuf {
        self.data_dir.join("trace.db")
    }

    /// Directory of per-sandbox root mount points.
    pub fn roots_dir(&self) -> PathBuf {
        self.data_dir.join("roots")
    }

    /// Directory of per-sandbox home dirs.
    pub fn homes_dir(&self) -> PathBuf {
        self.data_dir.join("homes")
    }
}
