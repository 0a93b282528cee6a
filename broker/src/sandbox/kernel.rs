//! One kernel process: spawning it with a clean environment, connecting the
//! client, watching for its exit, and stopping it.
//!
//! Each kernel is the leader of its own process group, so signals (SIGINT for
//! interrupt, SIGKILL for teardown) reach everything it started. When the
//! kernel exits for any reason, the rest of its group is killed too.

use super::zygote::Zygote;
use crate::image::Image;
use crate::isolation;
use crate::isolation::spec::JailSpec;
use cellblock_protocol::client::ClientOptions;
use cellblock_protocol::message::KernelInfoReply;
use cellblock_protocol::{ConnectionInfo, KernelClient, Limits};
use nix::sys::signal::Signal;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

/// Errors starting a kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("preparing {path}: {source}")]
    Prepare {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the connection file: {0}")]
    ConnectionFile(#[from] cellblock_protocol::connection::ConnectionError),
    #[error("spawning the kernel: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the kernel exited during startup ({status}); its last words: {stderr}")]
    DiedAtStart { status: String, stderr: String },
    #[error("the kernel did not answer within {0:?}; its last words: {1}")]
    StartTimeout(Duration, String),
    #[error("connecting to the kernel: {0}")]
    Client(#[from] cellblock_protocol::ClientError),
    #[error("preparing the socket dir: {0}")]
    SockDir(#[from] isolation::TmpfsError),
    #[error("the kernel's socket {0} is not a socket (tampered with?)")]
    NotASocket(String),
}

/// What a kernel needs to start.
pub struct KernelSpec<'a> {
    pub image: &'a Image,
    /// Broker-only directory: jail specs and the pid file.
    pub run_dir: &'a Path,
    /// The sandbox's jail; argv and env are filled in here.
    pub jail: &'a JailSpec,
    pub env: &'a BTreeMap<String, String>,
    pub generation: u64,
    pub start_timeout: Duration,
    pub max_message_bytes: usize,
    /// Modules the launcher imports before the kernel starts (`--preload`).
    pub preload: &'a [String],
    /// Forks the kernel when it can; `None` always spawns.
    pub zygote: Option<&'a Zygote>,
}

/// How a kernel process was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Forked from the image's zygote, with the data stack imported.
    Zygote,
    /// A fresh interpreter (`cellblock __jail` exec'ing Python).
    Spawn,
}

/// A started kernel process, before the client connects.
struct Launched {
    pid: i32,
    origin: Origin,
    stderr: Pin<Box<dyn AsyncRead + Send>>,
    /// Resolves with the exit status once the process is gone; `None` for
    /// a forked kernel, which is gone when its stderr closes (P0 holds the
    /// pipe until it exits, and it exits after everything in the sandbox).
    exit: Option<Pin<Box<dyn Future<Output = String> + Send>>>,
}

/// Variables read while an interpreter starts (by Python, the C library,
/// numeric libraries, matplotlib): setting them in an already running
/// process would not do what a fresh start does. A kernel asked for one of
/// them is spawned, never forked from the zygote or taken from the pool.
const STARTUP_ENV: [&str; 20] = [
    "PYTHON",
    "LD_",
    "LC_",
    "LANG",
    "TZ",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "NUMEXPR_",
    "VECLIB_",
    "MPL",
    "MALLOC_",
    "JUPYTER",
    "IPYTHON",
    "PATH",
    "TMPDIR",
    "NPY_",
    "KMP_",
    "GOTO_",
    "BLIS_",
];

/// True if `env` sets a variable only a fresh interpreter honours.
pub fn read_at_startup(env: &BTreeMap<String, String>) -> bool {
    env.keys()
        .any(|k| STARTUP_ENV.iter().any(|p| k.starts_with(p)))
}

/// Size of the tmpfs holding a kernel's sockets, connection file and caches.
pub const SOCK_DIR_MB: u64 = 16;

/// The environment every process in a sandbox starts from: the image's
/// `bin` first on `PATH`, a UTF-8 locale, the sandbox user's home.
pub fn base_env(image: &Image) -> BTreeMap<String, String> {
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", image.bin_dir().display());
    [
        ("PATH", path),
        ("LANG", "C.UTF-8".to_owned()),
        ("HOME", "/home/user".to_owned()),
        ("USER", "user".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// What a kernel's environment starts from, before the request's
/// variables: [`base_env`] and the kernel's own settings. The zygote is
/// started with it too, so what its imports read is what a kernel has.
pub fn kernel_env(image: &Image) -> BTreeMap<String, String> {
    let mut env = base_env(image);
    for (k, v) in [
        ("PYTHONIOENCODING", "utf-8"),
        ("MPLBACKEND", "module://matplotlib_inline.backend_inline"),
        ("PYDEVD_DISABLE_FILE_VALIDATION", "1"),
    ] {
        env.insert(k.to_owned(), v.to_owned());
    }
    env
}

/// How much of a kernel's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;

/// A running kernel and the client connected to it.
pub struct KernelProcess {
    pub pid: i32,
    pub generation: u64,
    pub origin: Origin,
    pub client: KernelClient,
    pub info: KernelInfoReply,
    exited: watch::Receiver<Option<String>>,
    stderr_tail: Arc<Mutex<String>>,
}

/// Environment variables that cellblock sets itself and a client may not.
pub const RESERVED_ENV: &[&str] = &["HOME", "IPYTHONDIR", "MPLCONFIGDIR", "PWD"];

fn prepare_err(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Prepare {
        path: path.display().to_string(),
        source,
    }
}

fn tail(buf: &Arc<Mutex<String>>) -> String {
    let s = buf.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if s.trim().is_empty() {
        "(nothing on stderr)".to_owned()
    } else {
        s.trim().to_owned()
    }
}

impl KernelProcess {
    /// Spawns a kernel and waits until it is ready (shell answers, iopub flows).
    #[tracing::instrument(skip_all, fields(generation = spec.generation))]
    pub async fn start(spec: KernelSpec<'_>) -> Result<Self, KernelError> {
        let sock = &spec.jail.sock_dir;
        let uid = spec.jail.host_uid();
        // An empty socket dir for every generation: nothing an earlier kernel
        // planted there (symlinks to host files or sockets) survives.
        isolation::fresh_tmpfs(sock, SOCK_DIR_MB, uid)?;
        let prefix = sock.join(format!("k{}", spec.generation));
        let conn_path = sock.join(format!("k{}.json", spec.generation));
        let mut conn = ConnectionInfo::new_ipc(&prefix);
        conn.kernel_name = spec.image.name.clone();
        conn.write(&conn_path)?;
        // Writable copies: matplotlib's font cache, and the IPython profile
        // (IPython ignores a read-only IPYTHONDIR and with it our config).
        let mpl = sock.join("mpl");
        copy_dir(&spec.image.mpl_cache(), &mpl).map_err(prepare_err(&mpl))?;
        let ipython = sock.join("ipython");
        let profile = ipython.join("profile_default");
        std::fs::create_dir(&ipython).map_err(prepare_err(&ipython))?;
        copy_dir(&spec.image.ipython_dir().join("profile_default"), &profile)
            .map_err(prepare_err(&profile))?;
        for p in [sock, &conn_path, &mpl, &ipython] {
            isolation::chown_tree(p, uid).map_err(prepare_err(p))?;
        }

        // Defaults, then the client's variables, then what cellblock owns;
        // one value per name, the later one winning.
        let mut env = kernel_env(spec.image);
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (k, v) in [
            ("HOME", "/home/user".to_owned()),
            ("PWD", "/home/user".to_owned()),
            ("USER", "user".to_owned()),
            ("IPYTHONDIR", ipython.display().to_string()),
            ("MPLCONFIGDIR", mpl.display().to_string()),
        ] {
            env.insert(k.to_owned(), v);
        }
        // Read and removed by the launcher before user code runs.
        if spec.preload.is_empty() {
            env.remove("CELLBLOCK_PRELOAD");
        } else {
            env.insert("CELLBLOCK_PRELOAD".into(), spec.preload.join(","));
        }
        let mut jail = spec.jail.clone();
        jail.argv = vec![
            spec.image.python().display().to_string(),
            // -I: the launcher is imported from the image, never from a
            // planted /home/user/cellblock_kernel.py (IPython adds the working
            // directory to sys.path for user code later).
            "-I".into(),
            "-m".into(),
            "cellblock_kernel".into(),
            "-f".into(),
            conn_path.display().to_string(),
        ];
        jail.env = env.into_iter().collect();
        let jail_path = spec.run_dir.join(format!("jail{}.json", spec.generation));
        let jail_json = serde_json::to_vec(&jail).unwrap_or_default();
        std::fs::write(&jail_path, jail_json).map_err(prepare_err(&jail_path))?;

        let forkable = !read_at_startup(spec.env);
        let launched = match spec.zygote.filter(|_| forkable) {
            Some(z) => match fork(z, &jail_path).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "spawning the kernel instead of forking it");
                    spawn(spec.run_dir, &jail_path)?
                }
            },
            None => spawn(spec.run_dir, &jail_path)?,
        };
        let Launched {
            pid,
            origin,
            stderr: mut err,
            exit,
        } = launched;
        let pid_file = spec.run_dir.join("kernel.pid");
        if let Err(e) = std::fs::write(&pid_file, format!("{pid}\n")) {
            // A spawned kernel dies with its handle; a forked one would not.
            isolation::signal_group(pid, Signal::SIGKILL);
            return Err(prepare_err(&pid_file)(e));
        }

        let stderr_tail = Arc::new(Mutex::new(String::new()));
        let (eof_tx, eof) = tokio::sync::oneshot::channel::<()>();
        {
            let buf = stderr_tail.clone();
            tokio::spawn(async move {
                let _eof = eof_tx;
                let mut chunk = vec![0u8; 4096];
                while let Ok(n) = err.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&chunk[..n]);
                    tracing::debug!(pid, text = %text.trim_end(), "kernel stderr");
                    let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
                    b.push_str(&text);
                    if b.len() > STDERR_TAIL {
                        let cut = b.len() - STDERR_TAIL;
                        let cut = (cut..b.len()).find(|&i| b.is_char_boundary(i)).unwrap_or(0);
                        b.drain(..cut);
                    }
                }
            });
        }

        let (exit_tx, exited) = watch::channel(None);
        let exit = exit.unwrap_or_else(|| {
            Box::pin(async move {
                let _ = eof.await;
                "exited (forked by the zygote)".to_owned()
            })
        });
        tokio::spawn(async move {
            let status = exit.await;
            // Whatever the kernel started dies with it.
            isolation::signal_group(pid, Signal::SIGKILL);
            let _ = exit_tx.send(Some(status));
        });

        let opts = ClientOptions {
            limits: Limits {
                max_message_bytes: spec.max_message_bytes,
                ..Limits::default()
            },
            connect_timeout: spec.start_timeout,
            ..ClientOptions::default()
        };
        let mut exited_start = exited.clone();
        let ready = async {
            seal_sockets(&conn, spec.start_timeout).await?;
            let client = KernelClient::connect(&conn, opts).await?;
            let info = client.wait_ready(spec.start_timeout).await?;
            Ok::<_, KernelError>((client, info))
        };
        let result = tokio::select! {
            r = tokio::time::timeout(spec.start_timeout, ready) => r,
            st = exited_start.wait_for(Option::is_some) => {
                let status = st.map(|s| s.clone().unwrap_or_default()).unwrap_or_default();
                return Err(KernelError::DiedAtStart { status, stderr: tail(&stderr_tail) });
            }
        };
        match result {
            Ok(Ok((client, info))) => Ok(Self {
                pid,
                generation: spec.generation,
                origin,
                client,
                info,
                exited,
                stderr_tail,
            }),
            Ok(Err(e)) => {
                isolation::signal_group(pid, Signal::SIGKILL);
                Err(e)
            }
            Err(_) => {
                isolation::signal_group(pid, Signal::SIGKILL);
                Err(KernelError::StartTimeout(
                    spec.start_timeout,
                    tail(&stderr_tail),
                ))
            }
        }
    }

    /// True once the kernel process has exited.
    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// Resolves when the kernel process exits, with its exit status.
    pub async fn wait_exit(&mut self) -> String {
        let _ = self.exited.wait_for(Option::is_some).await;
        self.exited.borrow().clone().unwrap_or_default()
    }

    /// A future that resolves with the exit status once the process exits;
    /// it does not borrow `self`.
    pub fn exited(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.exited.clone();
        async move {
            let _ = rx.wait_for(Option::is_some).await;
            let status = rx.borrow().clone();
            status.unwrap_or_default()
        }
    }

    /// The last lines the kernel wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr_tail)
    }

    /// Stops the kernel: `shutdown_request` on control, then SIGTERM, then
    /// SIGKILL, each with a short wait. Returns once the process is gone.
    #[tracing::instrument(skip_all, fields(pid = self.pid))]
    pub async fn stop(mut self, polite: bool) {
        if polite && !self.has_exited() {
            let _ = self
                .client
                .shutdown(false, Duration::from_millis(300))
                .await;
            if self.wait_exit_for(Duration::from_millis(700)).await {
                return;
            }
            isolation::signal_group(self.pid, Signal::SIGTERM);
            if self.wait_exit_for(Duration::from_millis(500)).await {
                return;
            }
        }
        if self.has_exited() {
            // Its process group may be gone and its number reused.
            return;
        }
        isolation::signal_group(self.pid, Signal::SIGKILL);
        if !self.wait_exit_for(Duration::from_secs(5)).await {
            tracing::error!(pid = self.pid, "kernel did not exit after SIGKILL");
        }
    }

    async fn wait_exit_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.wait_exit()).await.is_ok()
    }
}

/// Starts `cellblock __jail SPEC`, which execs a fresh interpreter.
fn spawn(run_dir: &Path, jail_path: &Path) -> Result<Launched, KernelError> {
    let mut child = tokio::process::Command::new(isolation::HELPER_BINARY)
        .arg("__jail")
        .arg(jail_path)
        .env_clear()
        .current_dir(run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(KernelError::Spawn)?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let stderr: Pin<Box<dyn AsyncRead + Send>> = match child.stderr.take() {
        Some(e) => Box::pin(e),
        None => Box::pin(tokio::io::empty()),
    };
    Ok(Launched {
        pid,
        origin: Origin::Spawn,
        stderr,
        exit: Some(Box::pin(async move {
            match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            }
        })),
    })
}

/// Asks the zygote for the kernel. Its exit code goes to the zygote, its
/// parent; the broker learns of the exit from its stderr closing.
async fn fork(zygote: &Zygote, jail_path: &Path) -> Result<Launched, KernelError> {
    let forked = zygote
        .fork(jail_path)
        .await
        .map_err(|e| KernelError::Spawn(std::io::Error::other(e.to_string())))?;
    let pid = forked.pid;
    let stderr = match tokio::net::unix::pipe::Receiver::from_owned_fd(forked.stderr) {
        Ok(r) => r,
        Err(e) => {
            isolation::signal_group(pid, Signal::SIGKILL);
            return Err(KernelError::Spawn(e));
        }
    };
    Ok(Launched {
        pid,
        origin: Origin::Zygote,
        stderr: Box::pin(stderr),
        exit: None,
    })
}

/// Waits for the kernel's five sockets, then seals the socket dir so the
/// sandbox can no longer swap them for symlinks, and checks that each is a
/// socket. Only then does the broker (host root) connect to them.
async fn seal_sockets(conn: &ConnectionInfo, timeout: Duration) -> Result<(), KernelError> {
    let ports = [
        conn.shell_port,
        conn.iopub_port,
        conn.stdin_port,
        conn.control_port,
        conn.hb_port,
    ];
    let paths: Vec<PathBuf> = ports
        .iter()
        .filter_map(|&p| conn.ipc_path(p).map(PathBuf::from))
        .collect();
    let deadline = std::time::Instant::now() + timeout;
    while !paths.iter().all(|p| p.symlink_metadata().is_ok()) {
        if std::time::Instant::now() >= deadline {
            return Err(KernelError::StartTimeout(
                timeout,
                "its sockets never appeared".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    if let Some(dir) = paths.first().and_then(|p| p.parent()) {
        isolation::seal_dir(dir).map_err(prepare_err(dir))?;
    }
    match paths.iter().find(|p| !isolation::is_socket(p)) {
        Some(bad) => Err(KernelError::NotASocket(bad.display().to_string())),
        None => Ok(()),
    }
}

/// Copies the files of a flat directory into a new directory, refusing to
/// follow or overwrite anything already there.
fn copy_dir(from: &Path, to: &PathBuf) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    if let Ok(entries) = std::fs::read_dir(from) {
        for e in entries.flatten() {
            if e.file_type()?.is_file() {
                let mut src = std::fs::File::open(e.path())?;
                let mut dst = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(to.join(e.file_name()))?;
                std::io::copy(&mut src, &mut dst)?;
            }
        }
    }
    Ok(())
}
