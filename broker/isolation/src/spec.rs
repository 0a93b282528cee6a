//! What the jail helper builds, written by the broker as JSON and read by
//! `cellblock __jail`. Paths are host paths.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The uid (and gid) the kernel runs as inside the sandbox.
pub const SANDBOX_UID: u32 = 1000;
/// How many ids each sandbox's user namespace maps.
pub const ID_RANGE: u32 = 65536;

/// Everything the helper needs, and nothing of the broker's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JailSpec {
    /// First host uid/gid of this sandbox's range; sandbox root maps to it.
    pub uid_base: u32,
    /// An empty host directory where the private root's tmpfs is mounted
    /// (inside the jail's own mount namespace only).
    pub root_dir: PathBuf,
    /// The socket directory, bound read-write at the same path.
    pub sock_dir: PathBuf,
    /// The host directory bound at `/home/user`, read-write.
    pub home_dir: PathBuf,
    /// Host directories bound read-only at the same path (image, interpreter).
    pub ro_binds: Vec<PathBuf>,
    /// Size of `/tmp` and of `/dev/shm`, MiB.
    pub tmp_mb: u64,
    /// `cgroup.procs` files the helper joins before unsharing.
    pub cgroup_procs: Vec<PathBuf>,
    /// The kernel's argv; `argv[0]` is an absolute path.
    pub argv: Vec<String>,
    /// The kernel's whole environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    #[serde(default = "default_cwd")]
    pub cwd: PathBuf,
}

fn default_cwd() -> PathBuf {
    PathBuf::from("/home/user")
}

/// What `cellblock __enter` needs to run a command in a live sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnterSpec {
    /// The sandbox's jail, with the command's argv, env and cwd.
    pub jail: JailSpec,
    /// Host pid of the sandbox's init (PID 1 inside); its namespaces are joined.
    pub init_pid: i32,
}

impl JailSpec {
    /// The host uid of the sandbox user.
    pub fn host_uid(&self) -> u32 {
        self.uid_base + SANDBOX_UID
    }
}
