//! Reaping what an earlier run left behind: kernel processes (found by the
//! pid files in run dirs, and checked against `/proc` so a recycled pid is
//! never touched), sandbox cgroups (everything in them is killed), home
//! mounts, run dirs, roots and homes.

use crate::config::Config;
use crate::isolation;
use crate::isolation::cgroup::{Layout, SandboxCgroup};
use nix::sys::signal::Signal;
use std::path::Path;

/// Kills leftover kernels and removes leftover directories. Returns how many
/// kernel processes were killed.
pub fn reap(cfg: &Config, layout: &Layout) -> usize {
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
            isolation::unmount_tmpfs(&dir.join("sock"));
            remove(&dir);
        }
    }
    for dir in layout.leftovers() {
        if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
            let cg = SandboxCgroup::existing(layout, name);
            if !cg.is_empty() {
                killed += 1;
            }
            cg.remove();
        }
    }
    if let Ok(entries) = std::fs::read_dir(cfg.homes_dir()) {
        for entry in entries.flatten() {
            isolation::unmount_tmpfs(&entry.path());
            remove(&entry.path());
        }
    }
    if let Ok(entries) = std::fs::read_dir(cfg.roots_dir()) {
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
