//! The host check `cellblock serve` runs before anything else. cellblock
//! never runs a kernel unconfined: if a needed feature is missing, it refuses
//! to start and says exactly what is missing.

use super::cgroup::Layout;
use std::path::Path;

/// Host features that are missing, each with a hint.
#[derive(Debug, thiserror::Error)]
#[error("this host cannot run sandboxes safely:\n  - {}", .0.join("\n  - "))]
pub struct Missing(pub Vec<String>);

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The Landlock ABI version the kernel offers, or 0.
pub fn landlock_abi() -> i64 {
    // SAFETY: landlock_create_ruleset with a NULL attr, size 0 and the VERSION
    // flag only returns the ABI version; it touches no memory and opens no fd.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    }
    .max(0)
}

/// Checks everything isolation needs; returns the cgroup layout to use.
pub fn check(cgroup_root: &Path, group: &str) -> Result<Layout, Missing> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push(
            "root: cellblock serve must run as root to give each sandbox its own uid range".into(),
        );
    }
    if !Path::new("/proc/self/ns/user").exists()
        || read("/proc/sys/user/max_user_namespaces").is_some_and(|v| v.trim() == "0")
    {
        missing.push("user namespaces (set user.max_user_namespaces > 0)".into());
    }
    for ns in ["mnt", "pid", "net", "ipc", "uts", "cgroup"] {
        if !Path::new(&format!("/proc/self/ns/{ns}")).exists() {
            missing.push(format!("{ns} namespaces (kernel built without them)"));
        }
    }
    match read("/proc/sys/kernel/seccomp/actions_avail") {
        Some(a) if a.contains("errno") && a.contains("kill_process") => {}
        _ => missing.push("seccomp filters with errno and kill_process actions".into()),
    }
    let abi = landlock_abi();
    if abi < 1 {
        missing.push("Landlock (boot with lsm=…,landlock, kernel 5.13 or newer)".into());
    }
    let layout = match Layout::detect(cgroup_root, group) {
        Ok(l) => Some(l),
        Err(e) => {
            missing.push(format!("cgroups: {e}"));
            None
        }
    };
    match layout {
        Some(l) if missing.is_empty() => Ok(l),
        _ => Err(Missing(missing)),
    }
}
