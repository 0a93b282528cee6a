//! Shell commands inside a sandbox (`POST /v1/sandboxes/{id}/commands`).
//!
//! A command runs through `cellblock __enter` in the sandbox's own namespaces,
//! cgroup, root, uid, Landlock and seccomp, beside the kernel: it sees the
//! kernel's files and the kernel sees its files. Each command gets a child
//! cgroup of the sandbox's, so its whole process tree is killed when it times
//! out or ends (background children included), and nothing else is.

use super::{Sandbox, SandboxError};
use crate::isolation;
use crate::isolation::spec::EnterSpec;
use serde::Serialize;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// A command as the client gave it (validated by the API).
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// argv; a string command arrives as `["/bin/sh", "-c", cmd]`.
    pub argv: Vec<String>,
    pub timeout: Duration,
    /// Inside the sandbox; relative paths are taken from /home/user.
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    pub stdin: Vec<u8>,
    /// Most bytes kept of stdout and of stderr each.
    pub max_output: usize,
}

/// What a command did.
#[derive(Debug, Serialize)]
pub struct CommandResult {
    /// The exit code; 128+N when killed by signal N; `null` after a timeout.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
    /// `ok` (it ran to its end, whatever its exit code) or `timeout`.
    pub status: &'static str,
    /// Output beyond the cap was dropped.
    pub truncated: bool,
}

/// Reads a stream to its end, keeping at most `cap` bytes.
async fn drain<R: AsyncRead + Unpin>(mut r: R, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut truncated = false;
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        truncated |= n > room;
    }
    (kept, truncated)
}

impl Sandbox {
    /// Runs a command in this sandbox and waits for it (or its timeout).
    #[tracing::instrument(skip_all, fields(sandbox_id = %self.id))]
    pub async fn run_command(&self, spec: CommandSpec) -> Result<CommandResult, SandboxError> {
        self.touch();
        let helper_pid = self.kernel_pid.load(Ordering::SeqCst);
        let init_pid = isolation::first_child(helper_pid)
            .and_then(isolation::first_child)
            .ok_or(SandboxError::NotRunning)?;
        let name = format!("cmd-{}", uuid::Uuid::new_v4().simple());
        let cgroup = self.cgroup.child(&name)?;
        let cwd = if spec.cwd.is_empty() {
            "/home/user".into()
        } else if spec.cwd.starts_with('/') {
            spec.cwd.clone().into()
        } else {
            std::path::Path::new("/home/user").join(&spec.cwd)
        };
        let mut env = super::kernel::base_env(&self.image);
        env.extend(self.env.clone());
        env.extend(spec.env);
        env.insert("PWD".into(), cwd.display().to_string());
        let mut jail = self.jail.clone();
        jail.argv = spec.argv;
        jail.env = env.into_iter().collect();
        jail.cwd = cwd;
        jail.cgroup_procs = cgroup.procs_files();
        let spec_path = self.run_dir.join(format!("{name}.json"));
        let json = serde_json::to_vec(&EnterSpec { jail, init_pid }).unwrap_or_default();
        let prepare = |source| SandboxError::Prepare {
            path: spec_path.display().to_string(),
            source,
        };
        std::fs::write(&spec_path, json).map_err(prepare)?;

        let started = Instant::now();
        let spawned = tokio::process::Command::new(isolation::HELPER_BINARY)
            .arg("__enter")
            .arg(&spec_path)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                cgroup.remove();
                let _ = std::fs::remove_file(&spec_path);
                return Err(prepare(e));
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            let input = spec.stdin;
            tokio::spawn(async move {
                let _ = stdin.write_all(&input).await;
            });
        }
        let out = child
            .stdout
            .take()
            .map(|o| tokio::spawn(drain(o, spec.max_output)));
        let err = child
            .stderr
            .take()
            .map(|e| tokio::spawn(drain(e, spec.max_output)));
        let waited = tokio::time::timeout(spec.timeout, child.wait()).await;
        // Whatever is left of the command's tree goes, on timeout or not.
        cgroup.kill_all();
        let _ = child.start_kill();
        let _ = child.wait().await;
        let (status, exit_code) = match waited {
            Ok(Ok(s)) => ("ok", s.code()),
            Ok(Err(_)) => ("ok", None),
            Err(_) => ("timeout", None),
        };
        let collect = |h: Option<tokio::task::JoinHandle<(Vec<u8>, bool)>>| async move {
            match h {
                Some(h) => h.await.unwrap_or_default(),
                None => Default::default(),
            }
        };
        let (stdout, t1) = collect(out).await;
        let (stderr, t2) = collect(err).await;
        cgroup.remove();
        let _ = std::fs::remove_file(&spec_path);
        self.touch();
        Ok(CommandResult {
            exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            duration_ms: started.elapsed().as_millis() as u64,
            status,
            truncated: t1 || t2,
        })
    }
}
