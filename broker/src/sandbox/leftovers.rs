//! Reaping what an earlier run left behind: kernel processes (found by the
//! pid files in run dirs, and checked against `/proc` so a recycled pid is
//! never touched), run dirs and sandbox homes.

use crate::config::Config;
use crate::isolation;
use nix::sys::signal::Signal;
use std::path::Path;

/// Kills leftover kernels and removes leftover directories. Returns how many
/// kernel processes were killed.
pub fn reap(cfg: &Config) -> usize {
    let mut killed = 0;
    let run = cfg.run_dir();
    if let Ok(entries) = std::fs::read_dir(&run) {
        for entry in entries.flatten() {
            let dir = entry.path();
            killed += kill_recorded_kernel(&dir);
            // Anything else still mentioning this run dir (e.g. a kernel whose
            // pid file was never written) goes too.
            for pid in isolation::processes_mentioning(&dir) {
                isolation::signal_group(pid, Signal::SIGKILL);
                killed += 1;
            }
            remove(&dir);
        }
    }
    if let Ok(entries) = std::fs::read_dir(cfg.homes_dir()) {
        for entry in entries.flatten() {
            remove(&entry.path());
        }
    }
    if killed > 0 {
        tracing::warn!(killed, "reaped kernels left by an earlier run");
    }
    killed
}

fn kill_recorded_kernel(dir: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(dir.join("kernel.pid")) else {
        return 0;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return 0;
    };
    if pid > 1 && isolation::is_alive(pid) && isolation::cmdline_mentions(pid, dir) {
        isolation::signal_group(pid, Signal::SIGKILL);
        return 1;
    }
    0
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path) {
        tracing::warn!(path = %path.display(), error = %e, "removing leftover directory");
    }
}
