//! The zygote: one fork server per image that imported the data stack and
//! ipykernel once, so a kernel starts as a copy-on-write fork instead of a
//! fresh interpreter (issue #8).
//!
//! This module owns the zygote process (`cellblock_zygote.py` in the image,
//! see there for the protocol): starting it, restarting it when it dies
//! (with backoff; creation falls back to a plain spawn meanwhile), asking it
//! for a kernel, and stopping it at shutdown. The sandbox itself is built by
//! the forked child with the isolation crate's own jail chain
//! (`cellblock_isolation::zygote`), so a forked kernel is confined exactly
//! like a spawned one.
//!
//! What the zygote is told is a path to a jail spec in the sandbox's
//! broker-only run dir, and what it answers is a pid: it never
//! sees a request's environment or connection key, so nothing of one sandbox
//! can stay in its memory for the next child to inherit.

use crate::image::Image;
use crate::isolation;
use crate::sandbox::kernel::kernel_env;
use nix::sys::socket::{socketpair, sockopt, AddressFamily, MsgFlags, SockFlag, SockType};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// The modules the zygote imports besides ipykernel: the data stack. Ones
/// the image lacks are skipped (logged by the zygote).
pub const STACK: &[&str] = &["numpy", "pandas", "matplotlib", "matplotlib.pyplot"];

/// How long the zygote may take to import the stack and say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one fork may take before the zygote is declared stuck.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);
/// Restart backoff: first wait, and the most it grows to.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A zygote that lived this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// The shared library the zygote's children load: next to the binary.
pub const LIBRARY: &str = "libcellblock_isolation.so";

/// Why a kernel could not be forked (the caller then spawns it).
#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    #[error("the zygote is not running ({0})")]
    Unavailable(String),
    #[error("the zygote refused: {0}")]
    Refused(String),
    #[error("talking to the zygote: {0}")]
    Io(String),
}

/// A kernel process forked by the zygote: P0 of its jail chain, the leader
/// of its process group.
pub struct Forked {
    pub pid: i32,
    /// The read end of the kernel's stderr; it closes when P0 exits.
    pub stderr: OwnedFd,
}

/// The running zygote: its socket and process. Held (locked) for a whole
/// exchange, also by the blocking task doing it, so a request abandoned by
/// its caller cannot interleave with the next one.
struct Live {
    sock: Arc<OwnedFd>,
    child: tokio::process::Child,
}

/// What `/healthz` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ZygoteStatus {
    pub state: &'static str,
    pub pid: Option<u32>,
    pub restarts: u64,
    pub forks: u64,
    pub last_error: Option<String>,
}

/// One image's zygote and its supervisor's state.
pub struct Zygote {
    image: Image,
    /// The library as built next to the binary; copied into `dir` once, at
    /// the first start, and loaded from there by every zygote of this run,
    /// so an upgrade on disk never mixes versions.
    library: PathBuf,
    /// The zygote's own directory (its `HOME`, the library copy).
    dir: PathBuf,
    preload: Vec<String>,
    live: Arc<tokio::sync::Mutex<Option<Live>>>,
    /// Wakes the supervisor: the zygote broke, or shutdown began.
    broken: tokio::sync::Notify,
    stopping: AtomicBool,
    restarts: AtomicU64,
    forks: AtomicU64,
    state: Mutex<(&'static str, Option<u32>, Option<String>)>,
}

impl Zygote {
    /// A zygote for `image` that will import [`STACK`] plus `preload`. It is
    /// started by [`Zygote::supervise`].
    pub fn new(image: Image, library: PathBuf, dir: PathBuf, preload: &[String]) -> Arc<Self> {
        let mut all: Vec<String> = STACK.iter().map(|s| s.to_string()).collect();
        all.extend(preload.iter().cloned());
        Arc::new(Self {
            image,
            library,
            dir,
            preload: all,
            live: Arc::new(tokio::sync::Mutex::new(None)),
            broken: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            forks: AtomicU64::new(0),
            state: Mutex::new(("starting", None, None)),
        })
    }

    /// Where the shared library is looked for: beside the running binary.
    pub fn default_library() -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.join(LIBRARY))
    }

    fn set_state(&self, state: &'static str, pid: Option<u32>, error: Option<String>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = state;
        s.1 = pid;
        if error.is_some() {
            s.2 = error;
        }
    }

    /// For `/healthz`.
    pub fn status(&self) -> ZygoteStatus {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        ZygoteStatus {
            state: s.0,
            pid: s.1,
            restarts: self.restarts.load(Ordering::SeqCst),
            forks: self.forks.load(Ordering::SeqCst),
            last_error: s.2,
        }
    }

    /// Keeps a zygote running until [`Zygote::stop`]: starts it, waits for
    /// it to die or break, and starts it again after a backoff.
    pub async fn supervise(self: Arc<Self>) {
        let mut backoff = BACKOFF_MIN;
        if let Err(e) = self.prepare_dir() {
            tracing::warn!(error = %e, "the zygote is off; kernels are spawned");
            self.set_state("dead", None, Some(e));
            return;
        }
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let started = std::time::Instant::now();
            let started_ok = self.start().await;
            if self.stopping.load(Ordering::SeqCst) {
                self.kill().await;
                return;
            }
            match started_ok {
                Ok(pid) => {
                    tracing::info!(
                        pid,
                        ms = started.elapsed().as_millis() as u64,
                        "zygote ready"
                    );
                    self.set_state("ready", Some(pid), None);
                    self.wait_broken().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "starting the zygote; kernels are spawned meanwhile");
                    self.set_state("dead", None, Some(e.to_string()));
                }
            }
            self.kill().await;
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            self.set_state("restarting", None, None);
            if started.elapsed() >= HEALTHY_AFTER {
                backoff = BACKOFF_MIN;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            self.restarts.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The zygote's directory: an empty `home` and this run's copy of the
    /// library (root-only, made again at every broker start).
    fn prepare_dir(&self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let err = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
        let _ = std::fs::remove_dir_all(&self.dir);
        let home = self.dir.join("home");
        std::fs::create_dir_all(&home).map_err(|e| err("creating", &home, e))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err("securing", &self.dir, e))?;
        let copy = self.dir.join(LIBRARY);
        std::fs::copy(&self.library, &copy).map_err(|e| err("copying", &self.library, e))?;
        Ok(())
    }

    /// Starts the zygote and waits for its `ready`.
    async fn start(&self) -> Result<u32, ZygoteError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io)?;
        // Started with the environment a kernel starts with (a forked
        // kernel's /proc/self/environ shows it); -B: no bytecode written as
        // root into the image.
        // Through `cellblock __zygote`, which gives it a network namespace
        // of its own first.
        let mut child = tokio::process::Command::new(isolation::HELPER_BINARY)
            .arg("__zygote")
            .arg(self.image.python())
            .args(["-I", "-B", "-m", "cellblock_zygote"])
            .arg(self.dir.join(LIBRARY))
            .arg(self.dir.join("home"))
            .arg(self.preload.join(","))
            .arg(self.image.mpl_cache())
            .env_clear()
            .envs(kernel_env(&self.image))
            .current_dir("/")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(io)?;
        let pid = child.id().unwrap_or(0);
        if let Some(err) = child.stderr.take() {
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::warn!(pid, "zygote: {line}");
                }
            });
        }
        let sock = Arc::new(ours);
        let mut live = self.live.clone().lock_owned().await;
        *live = Some(Live {
            sock: sock.clone(),
            child,
        });
        let reply = exchange(live, sock, None, READY_TIMEOUT).await.0?;
        if reply == b"ready" {
            Ok(pid)
        } else {
            Err(ZygoteError::Refused(
                String::from_utf8_lossy(&reply).into_owned(),
            ))
        }
    }

    /// Resolves when the zygote exits or a fork found it broken.
    async fn wait_broken(&self) {
        let broken = self.broken.notified();
        tokio::pin!(broken);
        broken.as_mut().enable();
        loop {
            let exited = {
                let mut live = self.live.lock().await;
                match live.as_mut() {
                    Some(l) => l.child.try_wait().map(|s| s.is_some()).unwrap_or(true),
                    None => true,
                }
            };
            if exited || self.stopping.load(Ordering::SeqCst) {
                return;
            }
            tokio::select! {
                _ = &mut broken => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    async fn kill(&self) {
        if let Some(mut l) = self.live.lock().await.take() {
            let _ = l.child.start_kill();
            let _ = l.child.wait().await;
        }
    }

    /// Waits up to `timeout` for the zygote to be ready; false if it is not.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let state = self.status().state;
            if state == "ready" {
                return true;
            }
            if state == "stopped" || tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the zygote for good (shutdown). Its kernels are not affected.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.broken.notify_one();
        self.kill().await;
        self.set_state("stopped", None, None);
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Forks a kernel for the jail spec at `jail_path` (in the sandbox's run
    /// dir). The zygote's child builds the sandbox from it and starts the
    /// kernel; see the module docs.
    pub async fn fork(&self, jail_path: &Path) -> Result<Forked, ZygoteError> {
        let live = self.live.clone().lock_owned().await;
        let sock = match live.as_ref() {
            Some(l) if self.status().state == "ready" => l.sock.clone(),
            _ => {
                let why = self.status().last_error;
                return Err(ZygoteError::Unavailable(
                    why.unwrap_or_else(|| "starting".into()),
                ));
            }
        };
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let (err_r, err_w) = nix::unistd::pipe2(cloexec).map_err(io)?;
        // The child waits for a byte on this pipe: written below once the
        // pid is known; if this returns early, `go_w` is dropped, the pipe
        // closes and the child exits without building anything.
        let (go_r, go_w) = nix::unistd::pipe2(cloexec).map_err(io)?;
        let path = jail_path.as_os_str().as_encoded_bytes().to_vec();
        let request = Some((path, [err_w, go_r]));
        let (result, mut live) = exchange(live, sock, request, FORK_TIMEOUT).await;
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                // A zygote that does not answer is replaced.
                tracing::warn!(error = %e, "the zygote failed a fork; restarting it");
                if let Some(l) = live.as_mut() {
                    let _ = l.child.start_kill();
                }
                self.set_state("restarting", None, Some(e.to_string()));
                self.broken.notify_one();
                return Err(e);
            }
        };
        drop(live);
        let text = String::from_utf8_lossy(&reply).into_owned();
        match text.strip_prefix("pid ").map(|n| n.trim().parse::<i32>()) {
            Some(Ok(pid)) if pid > 1 => {
                use std::io::Write;
                std::fs::File::from(go_w).write_all(b"g").map_err(io)?;
                self.forks.fetch_add(1, Ordering::SeqCst);
                Ok(Forked { pid, stderr: err_r })
            }
            _ => Err(ZygoteError::Refused(text)),
        }
    }
}

/// The zygote's state, locked.
type LiveGuard = tokio::sync::OwnedMutexGuard<Option<Live>>;

/// A failed socket, pipe or process operation with the zygote.
fn io(e: impl std::fmt::Display) -> ZygoteError {
    ZygoteError::Io(e.to_string())
}

/// Sends one request (a message with its fds) if given, then reads one
/// answer, on the blocking pool, within `timeout`. The lock travels with the
/// blocking task and comes back with the answer: a caller that goes away
/// mid-exchange leaves the zygote locked until its answer is read.
async fn exchange(
    live: LiveGuard,
    sock: Arc<OwnedFd>,
    request: Option<(Vec<u8>, [OwnedFd; 2])>,
    timeout: Duration,
) -> (Result<Vec<u8>, ZygoteError>, LiveGuard) {
    let mutex = tokio::sync::OwnedMutexGuard::mutex(&live).clone();
    let task =
        tokio::task::spawn_blocking(move || (exchange_blocking(&sock, request, timeout), live));
    match task.await {
        Ok(done) => done,
        Err(e) => (Err(io(e)), mutex.lock_owned().await),
    }
}

fn exchange_blocking(
    sock: &OwnedFd,
    request: Option<(Vec<u8>, [OwnedFd; 2])>,
    timeout: Duration,
) -> Result<Vec<u8>, ZygoteError> {
    let tv = nix::sys::time::TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64);
    nix::sys::socket::setsockopt(sock, sockopt::ReceiveTimeout, &tv).map_err(io)?;
    if let Some((msg, fds)) = request {
        let fds = [fds[0].as_fd(), fds[1].as_fd()];
        isolation::zygote::send_with_fds(sock.as_fd(), &msg, &fds).map_err(io)?;
    }
    let mut buf = vec![0u8; 4096];
    let n = nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(io)?;
    if n == 0 {
        return Err(ZygoteError::Io("the zygote closed its socket".into()));
    }
    buf.truncate(n);
    Ok(buf)
}
