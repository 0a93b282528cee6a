//! Isolation: everything that touches processes at the OS level. This is the
//! only module with raw syscalls and `unsafe`; each `unsafe` block carries a
//! `// SAFETY:` comment.
//!
//! A kernel runs as the last process of a chain, built by a small
//! single-threaded helper (`cellblock __jail SPEC`), never by the tokio process:
//!
//! ```text
//! broker ─spawn─▶ P0 helper (host root, joins the sandbox cgroups, writes uid/gid maps)
//!                  └─fork─▶ P1 (unshares user, mount, pid, net, ipc, uts, cgroup namespaces)
//!                            └─fork─▶ P2 init, PID 1: builds the private root, pivots,
//!                                      forwards SIGINT/SIGTERM, reaps, kills all on exit
//!                                      └─fork─▶ P3 kernel: setsid, rlimits, caps dropped,
//!                                               no_new_privs, uid 1000, Landlock, seccomp, exec
//! ```
//!
//! ## The zygote (issue #8)
//!
//! The steps are plain functions over one input, [`JailSpec`](spec::JailSpec).
//! Only the last step differs between a spawned kernel and one forked from
//! the preloaded Python zygote: `cellblock __jail` ends P3 in `execve`, while
//! a zygote child runs the same chain in process through
//! [`zygote::cellblock_zygote_enter`] (this crate is also built as a shared
//! library for that) and P3 returns into Python, confined. There is no
//! second, weaker path.
//!
//! ## Modules
//!
//! - [`spec`]: [`JailSpec`](spec::JailSpec), what the helper is told to build.
//! - [`jail`]: the process chain above, step by step, in order.
//! - [`mounts`]: the private root.
//! - [`cgroup`]: per-sandbox cgroups on v1 or v2, limits, OOM counts, kill.
//! - [`seccomp`]: the syscall filter.
//! - [`fsrules`]: the Landlock filesystem rules.
//! - [`preflight`]: the host check that refuses to run unconfined.
//! - [`signals`]: signals to process groups and `/proc` checks.
//! - [`zygote`]: the C entry the zygote's children call, and passing fds
//!   over the zygote's socket.

pub mod beneath;
pub mod cgroup;
pub mod enter;
pub mod fsrules;
pub mod jail;
pub mod mounts;
pub mod preflight;
pub mod seccomp;
pub mod signals;
pub mod spec;
pub mod writer;
pub mod zygote;

/// The helpers (`__jail`, `__enter`, `__write`) are the broker's own binary.
/// `/proc/self/exe` still reaches it after the file on disk was replaced by
/// an upgrade or a rebuild, where the path would give ENOENT.
pub const HELPER_BINARY: &str = "/proc/self/exe";

pub use signals::{cmdline_mentions, first_child, is_alive, processes_mentioning, signal_group};

/// A failed file operation of a setup step, with the step and the path.
#[derive(Debug, thiserror::Error)]
#[error("{step} {path}: {source}")]
pub struct StepIo {
    pub step: &'static str,
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// Maps an I/O error to a [`StepIo`] naming `step` and `path`.
pub(crate) fn step_io<'a>(
    step: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> StepIo + 'a {
    move |source| StepIo {
        step,
        path: path.display().to_string(),
        source,
    }
}

/// Errors mounting or unmounting a sandbox's home.
#[derive(Debug, thiserror::Error)]
#[error("{step} {path}: {errno}")]
pub struct TmpfsError {
    pub step: &'static str,
    pub path: String,
    pub errno: nix::errno::Errno,
}

/// Mounts a size-limited tmpfs at `dir` (a host path) owned by `uid`, to be the
/// sandbox's `/home/user`. A tmpfs is bounded by its size; its pages are
/// charged to the memory cgroup of whoever writes them (see SECURITY.md).
pub fn mount_tmpfs(dir: &std::path::Path, size_mb: u64, uid: u32) -> Result<(), TmpfsError> {
    use nix::mount::{mount, MsFlags};
    let err = |step| {
        move |errno| TmpfsError {
            step,
            path: dir.display().to_string(),
            errno,
        }
    };
    let opts = format!("size={size_mb}m,nr_inodes=1m,mode=0700,uid={uid},gid={uid}");
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(err("mounting the home tmpfs on"))
}

/// Detaches a home mounted by [`mount_tmpfs`]; not mounted is not an error.
pub fn unmount_tmpfs(dir: &std::path::Path) {
    use nix::mount::{umount2, MntFlags};
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "unmounting a sandbox home"),
    }
}

/// Gives `path` (recursively) to the sandbox user's host uid.
pub fn chown_tree(path: &std::path::Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid))?;
    if path.is_dir() && !path.is_symlink() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid)?;
        }
    }
    Ok(())
}

/// Gives a sandbox an empty, private tmpfs at `dir` (a host path), replacing
/// whatever was mounted there: a kernel generation never inherits files,
/// symlinks or sockets planted by an earlier one.
pub fn fresh_tmpfs(dir: &std::path::Path, size_mb: u64, uid: u32) -> Result<(), TmpfsError> {
    unmount_tmpfs(dir);
    mount_tmpfs(dir, size_mb, uid)
}

/// Takes a directory away from the sandbox user: owned by host root, mode
/// 0755. Its entries stay, but the sandbox can no longer add, remove or
/// replace them (its uid is not the owner and holds no capability over it).
pub fn seal_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = || std::fs::Permissions::from_mode(0o755);
    // 0755 before the chown too: the kernel is still reading the dir, and a
    // moment of root-owned 0700 would fail its lookups.
    std::fs::set_permissions(dir, mode())?;
    std::os::unix::fs::lchown(dir, Some(0), Some(0))?;
    // Again as owner root: undoes any mode the kernel set in between.
    std::fs::set_permissions(dir, mode())
}

/// True if `path` itself (not a symlink target) is a unix socket.
pub fn is_socket(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}
