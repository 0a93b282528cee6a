//! Per-sandbox cgroups on v1 (separate memory, pids and cpu hierarchies, as
//! on this project's CI host) or v2 (one unified hierarchy). The layout is
//! detected, never assumed; the cgroup root is passed in so tests can point
//! it at a temporary directory.

use super::step_io as io;
use std::fs;
use std::path::{Path, PathBuf};

/// Errors from cgroup setup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy under {root}: {why}")]
    Unsupported { root: String, why: String },
    #[error(transparent)]
    Io(#[from] super::StepIo),
}

/// Which cgroup version holds the controllers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One directory per controller, each the parent of our sandboxes.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
    },
    /// One unified parent.
    V2 { parent: PathBuf },
}

/// Limits applied to one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_mb: u64,
    /// CPU quota in thousandths of a CPU.
    pub cpu_millis: u64,
    pub pids: u64,
}

const PERIOD_US: u64 = 100_000;

impl Layout {
    /// Detects the layout under `root` (normally `/sys/fs/cgroup`) and creates
    /// the parent group(s) `group` (e.g. `cellblock/<instance>`), under which
    /// this broker's sandboxes live. Each broker instance has its own parent,
    /// so reaping leftovers never touches another instance's sandboxes.
    pub fn detect(root: &Path, group: &str) -> Result<Self, CgroupError> {
        let unsupported = |why: String| CgroupError::Unsupported {
            root: root.display().to_string(),
            why,
        };
        let controllers = root.join("cgroup.controllers");
        if controllers.exists() {
            let have = fs::read_to_string(&controllers).map_err(io("reading", &controllers))?;
            let missing: Vec<_> = ["memory", "pids", "cpu"]
                .into_iter()
                .filter(|c| !have.split_whitespace().any(|h| h == *c))
                .collect();
            if !missing.is_empty() {
                return Err(unsupported(format!(
                    "cgroup v2 lacks the {} controller(s)",
                    missing.join(", ")
                )));
            }
            let mut dir = root.to_path_buf();
            let ctl = dir.join("cgroup.subtree_control");
            fs::write(&ctl, "+memory +pids +cpu").map_err(io("enabling controllers in", &ctl))?;
            for part in group.split('/') {
                dir = dir.join(part);
                fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
                let ctl = dir.join("cgroup.subtree_control");
                fs::write(&ctl, "+memory +pids +cpu")
                    .map_err(io("enabling controllers in", &ctl))?;
            }
            return Ok(Layout::V2 { parent: dir });
        }
        let mut dirs = Vec::new();
        // The root of a v1 pids hierarchy has no pids.max; its children do.
        for (ctrl, probe) in [
            ("memory", "memory.limit_in_bytes"),
            ("pids", "cgroup.procs"),
            ("cpu", "cpu.cfs_quota_us"),
        ] {
            let base = root.join(ctrl);
            if !base.join(probe).exists() {
                return Err(unsupported(format!(
                    "neither cgroup v2 nor a v1 {ctrl} hierarchy ({} missing)",
                    base.join(probe).display()
                )));
            }
            let parent = base.join(group);
            fs::create_dir_all(&parent).map_err(io("creating", &parent))?;
            dirs.push(parent);
        }
        let cpu = dirs.pop().unwrap_or_default();
        let pids = dirs.pop().unwrap_or_default();
        let memory = dirs.pop().unwrap_or_default();
        Ok(Layout::V1 { memory, pids, cpu })
    }

    fn parents(&self) -> Vec<&Path> {
        match self {
            Layout::V1 { memory, pids, cpu } => vec![memory, pids, cpu],
            Layout::V2 { parent } => vec![parent],
        }
    }

    /// Removes this instance's (empty) parent group(s), at shutdown.
    pub fn remove_parents(&self) {
        for p in self.parents() {
            if let Err(e) = fs::remove_dir(p) {
                tracing::debug!(dir = %p.display(), error = %e, "removing the cgroup parent");
            }
        }
    }

    /// Directories of leftover sandbox cgroups (for reaping at start).
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for p in self.parents() {
            for e in fs::read_dir(p).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        out
    }

    /// Creates the cgroup(s) of sandbox `name` with `limits`.
    pub fn create(&self, name: &str, limits: Limits) -> Result<SandboxCgroup, CgroupError> {
        let dirs: Vec<PathBuf> = self.parents().iter().map(|p| p.join(name)).collect();
        for d in &dirs {
            fs::create_dir_all(d).map_err(io("creating", d))?;
        }
        let cg = SandboxCgroup {
            layout: self.clone(),
            dirs,
        };
        cg.set_limits(limits)?;
        Ok(cg)
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    Ok(fs::write(path, value).map_err(io("writing", path))?)
}

/// The cgroup(s) of one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxCgroup {
    layout: Layout,
    dirs: Vec<PathBuf>,
}

impl SandboxCgroup {
    /// An existing sandbox cgroup found at start (for reaping).
    pub fn existing(layout: &Layout, name: &str) -> Self {
        Self {
            layout: layout.clone(),
            dirs: layout.parents().iter().map(|p| p.join(name)).collect(),
        }
    }

    /// A child group (e.g. for one command), inside this sandbox's limits.
    pub fn child(&self, name: &str) -> Result<SandboxCgroup, CgroupError> {
        let dirs: Vec<PathBuf> = self.dirs.iter().map(|d| d.join(name)).collect();
        for d in &dirs {
            fs::create_dir_all(d).map_err(io("creating", d))?;
        }
        Ok(SandboxCgroup {
            layout: self.layout.clone(),
            dirs,
        })
    }

    /// Writes `limits` (at creation, or to a live sandbox taken from the
    /// warm pool).
    pub fn set_limits(&self, limits: Limits) -> Result<(), CgroupError> {
        let mem = (limits.memory_mb * 1024 * 1024).to_string();
        let quota = (limits.cpu_millis * PERIOD_US / 1000).max(1000);
        let pids = limits.pids.to_string();
        match &self.layout {
            Layout::V1 { .. } => {
                let (m, p, c) = (&self.dirs[0], &self.dirs[1], &self.dirs[2]);
                // memsw must stay >= the memory limit: lowering goes memory
                // first, raising memsw first. Without swap accounting the
                // file is absent and there is no swap to limit.
                let memsw = m.join("memory.memsw.limit_in_bytes");
                let limit = m.join("memory.limit_in_bytes");
                if memsw.exists() {
                    if write(&limit, &mem).is_err() {
                        write(&memsw, &mem)?;
                        write(&limit, &mem)?;
                    } else {
                        write(&memsw, &mem)?;
                    }
                } else {
                    write(&limit, &mem)?;
                }
                write(&m.join("memory.swappiness"), "0").ok();
                write(&p.join("pids.max"), &pids)?;
                write(&c.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&c.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            Layout::V2 { .. } => {
                let d = &self.dirs[0];
                write(&d.join("memory.max"), &mem)?;
                write(&d.join("memory.swap.max"), "0").ok();
                write(&d.join("pids.max"), &pids)?;
                write(&d.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes itself into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// How many times the OOM killer has killed in this sandbox so far.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match &self.layout {
            Layout::V1 { .. } => (self.dirs[0].join("memory.oom_control"), "oom_kill"),
            Layout::V2 { .. } => (self.dirs[0].join("memory.events"), "oom_kill"),
        };
        fs::read_to_string(file)
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok())?
                })
            })
            .unwrap_or(0)
    }

    /// SIGKILLs every process in the sandbox's cgroup(s).
    pub fn kill_all(&self) {
        if let Layout::V2 { .. } = self.layout {
            if fs::write(self.dirs[0].join("cgroup.kill"), "1").is_ok() {
                return;
            }
        }
        for _ in 0..3 {
            for procs in self.procs_files() {
                for pid in fs::read_to_string(procs).unwrap_or_default().lines() {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
    }

    /// True when no process is left in the cgroup(s).
    pub fn is_empty(&self) -> bool {
        self.procs_files()
            .iter()
            .all(|p| fs::read_to_string(p).map_or(true, |s| s.trim().is_empty()))
    }

    /// Kills what is left and removes the directories (retrying briefly while
    /// the last processes exit).
    pub fn remove(&self) {
        self.kill_all();
        for d in &self.dirs {
            for attempt in 0..50 {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) => {
                        if attempt == 49 {
                            tracing::warn!(dir = %d.display(), error = %e, "removing cgroup");
                        }
                        self.kill_all();
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("cb-cg-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn detects_v1_and_writes_limits() {
        let root = tmp();
        for (c, f) in [
            ("memory", "memory.limit_in_bytes"),
            ("pids", "cgroup.procs"),
            ("cpu", "cpu.cfs_quota_us"),
        ] {
            fs::create_dir_all(root.join(c)).unwrap();
            fs::write(root.join(c).join(f), "").unwrap();
        }
        let layout = Layout::detect(&root, "cellblock/t").unwrap();
        assert!(matches!(layout, Layout::V1 { .. }));
        let cg = layout
            .create(
                "sb",
                Limits {
                    memory_mb: 2,
                    cpu_millis: 500,
                    pids: 7,
                },
            )
            .unwrap();
        let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(
            read("memory/cellblock/t/sb/memory.limit_in_bytes"),
            "2097152"
        );
        assert_eq!(read("pids/cellblock/t/sb/pids.max"), "7");
        assert_eq!(read("cpu/cellblock/t/sb/cpu.cfs_quota_us"), "50000");
        fs::write(
            root.join("memory/cellblock/t/sb/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills(), 3);
        assert_eq!(layout.leftovers().len(), 3);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn detects_v2_and_refuses_missing_controllers() {
        let root = tmp();
        fs::write(root.join("cgroup.controllers"), "cpu memory").unwrap();
        let err = Layout::detect(&root, "cellblock/t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pids"), "{err}");
        fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        let layout = Layout::detect(&root, "cellblock/t").unwrap();
        let cg = layout
            .create(
                "sb",
                Limits {
                    memory_mb: 1,
                    cpu_millis: 2000,
                    pids: 9,
                },
            )
            .unwrap();
        assert_eq!(
            fs::read_to_string(root.join("cellblock/t/sb/cpu.max")).unwrap(),
            "200000 100000"
        );
        assert_eq!(
            fs::read_to_string(root.join("cellblock/t/sb/memory.swap.max")).unwrap(),
            "0"
        );
        fs::write(
            root.join("cellblock/t/sb/memory.events"),
            "low 0\noom 1\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills(), 2);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn nothing_usable_is_an_error() {
        let root = tmp();
        assert!(Layout::detect(&root, "cellblock/t").is_err());
        fs::remove_dir_all(root).unwrap();
    }
}
