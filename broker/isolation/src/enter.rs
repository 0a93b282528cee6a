//! Running a command inside a live sandbox (`cellblock __enter SPEC`): the
//! same namespaces, cgroup, root, uid, Landlock and seccomp as its kernel.
//!
//! Steps, in order:
//! 1. C0 (host root, single-threaded) joins the command's cgroup, a child of
//!    the sandbox's, so the sandbox's limits apply and the command's whole
//!    process tree can be killed on its own.
//! 2. C0 joins the mount, PID, network, IPC, UTS and cgroup namespaces of the
//!    sandbox's init (owned by the host's user namespace, so this happens as
//!    host root), then its user namespace last.
//! 3. C0 forks C1, which is inside the sandbox's PID namespace, and waits.
//! 4. C1 takes the same last steps as the kernel (see [`super::jail`]):
//!    setsid, rlimits, empty bounding set, uid 1000, no_new_privs, fds closed,
//!    Landlock, seccomp, `execve`.

use super::jail::{p3_exec, sys, wait_child, JailError, SETUP_FAILED};
use super::seccomp;
use super::spec::EnterSpec;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::SigSet;
use nix::unistd::{fork, ForkResult};
use std::fs;

/// Entry point of `cellblock __enter SPEC`. Never returns.
pub fn run(spec: &EnterSpec) -> ! {
    let code = enter(spec).unwrap_or_else(|e| {
        eprintln!("cellblock enter: {e}");
        SETUP_FAILED
    });
    std::process::exit(code)
}

fn enter(spec: &EnterSpec) -> Result<i32, JailError> {
    let me = std::process::id().to_string();
    for procs in &spec.jail.cgroup_procs {
        fs::write(procs, &me).map_err(|source| JailError::Io {
            step: "joining the command cgroup",
            source,
        })?;
    }
    let order = [
        ("mnt", CloneFlags::CLONE_NEWNS),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("net", CloneFlags::CLONE_NEWNET),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("user", CloneFlags::CLONE_NEWUSER),
    ];
    // Open every namespace first: /proc is the host's until the mount namespace changes.
    let mut fds = Vec::new();
    for (name, flag) in order {
        let f = fs::File::open(format!("/proc/{}/ns/{name}", spec.init_pid)).map_err(|source| {
            JailError::Io {
                step: "opening the sandbox's namespaces",
                source,
            }
        })?;
        fds.push((f, flag));
    }
    for (f, flag) in &fds {
        setns(f, *flag).map_err(sys("joining a sandbox namespace"))?;
    }
    drop(fds);
    let filters = seccomp::build()?;
    // SAFETY: this helper is single-threaded (a fresh process, no runtime).
    match unsafe { fork() }.map_err(sys("forking the command"))? {
        ForkResult::Child => {
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            let e = p3_exec(&spec.jail, &filters, &SigSet::empty());
            eprintln!("cellblock enter: {e}");
            std::process::exit(SETUP_FAILED)
        }
        ForkResult::Parent { child } => Ok(wait_child(child)),
    }
}
