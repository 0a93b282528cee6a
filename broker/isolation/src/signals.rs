//! Signals to process groups and `/proc` checks (no `unsafe`).

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use std::path::Path;

/// Sends `sig` to the process group led by `pgid`. A group that is already
/// gone is not an error.
pub fn signal_group(pgid: i32, sig: Signal) {
    if pgid <= 1 {
        return;
    }
    match signal::killpg(Pid::from_raw(pgid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, ?sig, error = %e, "signalling kernel process group"),
    }
}

/// True if a process with this pid exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the last ')' (the command name may contain one).
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// True if the command line of `pid` mentions `needle`. Used before killing a
/// leftover pid, so a recycled pid of an unrelated process is never touched.
pub fn cmdline_mentions(pid: i32, needle: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = needle.as_os_str().as_encoded_bytes();
    !needle.is_empty() && raw.windows(needle.len()).any(|w| w == needle)
}

/// Pids of live processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != std::process::id() as i32)
        .filter(|&pid| cmdline_mentions(pid, needle) && is_alive(pid))
        .collect()
}

/// The first child of `pid` (from `/proc/PID/task/PID/children`).
pub fn first_child(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_is_alive_and_bogus_is_not() {
        assert!(is_alive(std::process::id() as i32));
        assert!(!is_alive(i32::MAX));
        assert!(!cmdline_mentions(i32::MAX, Path::new("x")));
    }

    #[test]
    fn refuses_to_signal_init_or_nonsense() {
        // Must be a no-op, not a kill of everything.
        signal_group(0, Signal::SIGCONT);
        signal_group(1, Signal::SIGCONT);
        signal_group(-1, Signal::SIGCONT);
    }
}
