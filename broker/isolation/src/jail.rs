//! The process chain that puts a kernel in its sandbox. Runs in the
//! single-threaded helper process `cellblock __jail SPEC`, never in the
//! tokio process: `fork` is only sound here because nothing else runs.
//!
//! Steps, in order (mirrored in SECURITY.md):
//! 1. P0 (host root) joins the sandbox's cgroups, so everything below is limited.
//! 2. P0 forks P1; P1 unshares PID, network, IPC, UTS and cgroup
//!    namespaces, names the host `sandbox`, brings `lo` up, and forks P2.
//! 3. P2 is PID 1 of the new PID namespace. It unshares a mount namespace
//!    and, still host root, builds the
//!    private root and pivots into it ([`super::mounts`]); the mount namespace
//!    stays owned by the host's user namespace, so no mount can be undone from
//!    inside.
//! 4. P2 unshares a user namespace; P1 maps it to the sandbox's own
//!    unprivileged host range (`0 → uid_base`, never host uid 0).
//! 5. P2 forks P3 and serves as init: forwards SIGINT/SIGTERM to the kernel's
//!    process group, reaps orphans, and when the kernel exits kills everything
//!    left and exits with the kernel's status.
//! 6. P3: new session, default signals, rlimits (core 0), empty bounding set,
//!    no groups, uid/gid 1000 (which clears every capability), no_new_privs,
//!    only fds 0–2, Landlock rules, the seccomp filter, then `execve` with an
//!    explicit environment.
//!
//! P1 and P2 die with their parent (PDEATHSIG), so killing P0's process group
//! tears the whole sandbox down.

use super::spec::{JailSpec, ID_RANGE, SANDBOX_UID};
use super::{fsrules, mounts, seccomp};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// A failed step, named after the step.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{step}: {errno}")]
    Sys {
        step: &'static str,
        errno: nix::errno::Errno,
    },
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    FsRules(#[from] fsrules::FsRulesError),
    #[error("bad argument: {0}")]
    Arg(String),
}

pub(super) fn sys(step: &'static str) -> impl FnOnce(nix::errno::Errno) -> JailError {
    move |errno| JailError::Sys { step, errno }
}

fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> JailError {
    move |source| JailError::Io { step, source }
}

/// Exit status reported when a setup step fails (the error is on stderr).
pub const SETUP_FAILED: i32 = 125;

/// How the chain ends in P3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// `execve` the spec's argv (`cellblock __jail`).
    Exec,
    /// Return to the caller, confined (a child of the zygote, see
    /// [`super::zygote`]): it goes on to start the kernel it already holds.
    Return,
}

/// What a step of the chain ends in.
#[derive(Debug)]
enum Outcome {
    /// A helper (P0, P1 or P2) is done: exit with this code.
    Exit(i32),
    /// This process is P3, confined, and returns to the caller (`Finish::Return`).
    Kernel,
}

/// Entry point of `cellblock __jail SPEC`. Never returns.
pub fn run(spec: &JailSpec) -> ! {
    exit_with(p0_helper(spec, Finish::Exec))
}

/// Builds the sandbox from inside the calling process, which must be
/// single-threaded and host root: the same P0–P3 chain as [`run`], but P3
/// returns `Ok(())` to the caller instead of exec'ing. The calling process
/// becomes P0 and never returns once the chain started: it waits for the
/// sandbox and exits with the kernel's status. An `Err` means nothing was
/// forked.
pub fn enter_in_process(spec: &JailSpec) -> Result<(), JailError> {
    let threads = fs::read_dir("/proc/self/task")
        .map_err(io("counting this process's threads"))?
        .count();
    if threads != 1 {
        return Err(JailError::Arg(format!(
            "the caller has {threads} threads; forking the jail needs exactly one"
        )));
    }
    // A writable shared mapping would be one region common to the zygote
    // (host root) and every kernel forked from it.
    let maps = fs::read_to_string("/proc/self/maps").map_err(io("reading this process's maps"))?;
    if let Some(shared) = maps.lines().find(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|p| p.starts_with("rw") && p.ends_with('s'))
    }) {
        return Err(JailError::Arg(format!(
            "the caller has a writable shared mapping, which the kernel would share: {shared}"
        )));
    }
    match p0_helper(spec, Finish::Return)? {
        Outcome::Kernel => Ok(()),
        done => exit_with(Ok(done)),
    }
}

fn status_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Waits for `child` and returns its exit code, retrying on EINTR.
pub(super) fn wait_child(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(s) => {
                if let Some(code) = status_code(s) {
                    return code;
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return SETUP_FAILED,
        }
    }
}

fn pipe() -> Result<(std::fs::File, std::fs::File), JailError> {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().map_err(sys("creating a pipe"))?;
    Ok((r.into(), w.into()))
}

/// Step 1, in the host's namespaces.
fn p0_helper(spec: &JailSpec, finish: Finish) -> Result<Outcome, JailError> {
    // SIGINT is meant for the kernel; init forwards it. The helpers ignore it.
    ignore(Signal::SIGINT)?;
    let me = std::process::id().to_string();
    for procs in &spec.cgroup_procs {
        fs::write(procs, &me).map_err(io("joining the sandbox cgroup"))?;
    }
    // SAFETY: this helper process is single-threaded (it is a fresh process
    // that never started a runtime), so the child may run arbitrary code.
    match unsafe { fork() }.map_err(sys("forking the namespace process"))? {
        ForkResult::Child => in_child(p1_namespaces(spec, finish)),
        ForkResult::Parent { child } => Ok(Outcome::Exit(wait_child(child))),
    }
}

/// In a forked child of the chain: P3 returning to its caller goes on up
/// the stack; every other result ends the process here.
fn in_child(result: Result<Outcome, JailError>) -> Result<Outcome, JailError> {
    match result {
        Ok(Outcome::Kernel) => Ok(Outcome::Kernel),
        other => exit_with(other),
    }
}

/// Exits with the step's code, printing its error first.
fn exit_with(result: Result<Outcome, JailError>) -> ! {
    let code = match result {
        Ok(Outcome::Exit(code)) => code,
        Ok(Outcome::Kernel) => 0,
        Err(e) => {
            eprintln!("cellblock jail: {e}");
            SETUP_FAILED
        }
    };
    // SAFETY: _exit ends the process at once. Nothing here needs atexit
    // handlers or destructors (stderr is unbuffered), and in a child of the
    // zygote they would be Python's and its libraries', not ours to run.
    unsafe { libc::_exit(code) }
}

fn ignore(sig: Signal) -> Result<(), JailError> {
    // SAFETY: SIG_IGN is not a function pointer; no handler code runs.
    unsafe { signal::signal(sig, SigHandler::SigIgn) }
        .map(|_| ())
        .map_err(sys("ignoring a signal"))
}

fn die_with_parent() -> Result<(), JailError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("setting PDEATHSIG"))
}

/// Step 2, and the uid map of step 4.
fn p1_namespaces(spec: &JailSpec, finish: Finish) -> Result<Outcome, JailError> {
    die_with_parent()?;
    unshare(
        CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(sys("unsharing namespaces"))?;
    nix::unistd::sethostname("sandbox").map_err(sys("setting the hostname"))?;
    loopback_up()?;
    let (mut ready_r, ready_w) = pipe()?;
    let (go_r, mut go_w) = pipe()?;
    // SAFETY: still single-threaded; see p0_helper.
    match unsafe { fork() }.map_err(sys("forking init"))? {
        ForkResult::Child => {
            drop(ready_r);
            drop(go_w);
            in_child(p2_init(spec, finish, ready_w, go_r))
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(go_r);
            let mut b = [0u8; 1];
            if ready_r.read_exact(&mut b).is_err() {
                return Ok(Outcome::Exit(wait_child(child)));
            }
            let map = format!("0 {} {}\n", spec.uid_base, ID_RANGE);
            fs::write(format!("/proc/{child}/uid_map"), &map).map_err(io("writing uid_map"))?;
            fs::write(format!("/proc/{child}/gid_map"), &map).map_err(io("writing gid_map"))?;
            go_w.write_all(b"g").map_err(io("releasing init"))?;
            drop(go_w);
            Ok(Outcome::Exit(wait_child(child)))
        }
    }
}

/// Brings `lo` up in the new network namespace (it starts down).
fn loopback_up() -> Result<(), JailError> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys("opening a socket for lo"))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own, sized as the kernel expects.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    if rc < 0 {
        return Err(sys("reading lo's flags")(nix::errno::Errno::last()));
    }
    // SAFETY: the union member ifru_flags is the one SIOCGIFFLAGS filled in.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    if rc < 0 {
        return Err(sys("bringing lo up")(nix::errno::Errno::last()));
    }
    Ok(())
}

extern "C" fn noop_handler(_: libc::c_int) {}

/// Steps 3–5: PID 1.
fn p2_init(
    spec: &JailSpec,
    finish: Finish,
    mut ready: std::fs::File,
    mut go: std::fs::File,
) -> Result<Outcome, JailError> {
    die_with_parent()?;
    // Its own mount namespace: P1 keeps the host's view (and its /proc) to
    // write the uid map.
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unsharing the mount namespace"))?;
    mounts::build_root(spec)?;
    unshare(CloneFlags::CLONE_NEWUSER).map_err(sys("unsharing the user namespace"))?;
    ready
        .write_all(b"r")
        .map_err(io("asking for the uid map"))?;
    drop(ready);
    let mut b = [0u8; 1];
    go.read_exact(&mut b)
        .map_err(io("waiting for the uid map"))?;
    drop(go);
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(sys("becoming root gid of the user namespace"))?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(sys("becoming root of the user namespace"))?;
    // Build the filters before forking so a failure is reported by init.
    let filters = seccomp::build()?;
    let forwarded = [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ];
    let mut set = SigSet::empty();
    for s in forwarded {
        set.add(s);
        // SAFETY: the handler does nothing and is async-signal-safe. PID 1
        // must have a handler, or signals from the host are discarded.
        unsafe { signal::signal(s, SigHandler::Handler(noop_handler)) }
            .map_err(sys("installing init's handlers"))?;
    }
    signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(sys("blocking signals in init"))?;
    // SAFETY: init is single-threaded.
    let kernel = match unsafe { fork() }.map_err(sys("forking the kernel"))? {
        ForkResult::Child => match finish {
            Finish::Exec => exit_with(Err(p3_exec(spec, &filters, &set))),
            Finish::Return => {
                return in_child(confine(spec, &filters, &set).map(|()| Outcome::Kernel))
            }
        },
        ForkResult::Parent { child } => child,
    };
    loop {
        let sig = set.wait().map_err(sys("waiting for signals"))?;
        match sig {
            Signal::SIGCHLD => loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(status) => {
                        if status.pid() == Some(kernel) {
                            let code = status_code(status).unwrap_or(SETUP_FAILED);
                            // Everything else in the sandbox goes with the kernel.
                            let _ = signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
                            return Ok(Outcome::Exit(code));
                        }
                    }
                }
            },
            other => {
                let _ = signal::killpg(kernel, other);
            }
        }
    }
}

/// Step 6. Returns only on failure.
pub(super) fn p3_exec(
    spec: &JailSpec,
    filters: &[seccompiler::BpfProgram],
    blocked: &SigSet,
) -> JailError {
    match p3_steps(spec, filters, blocked) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn p3_steps(
    spec: &JailSpec,
    filters: &[seccompiler::BpfProgram],
    blocked: &SigSet,
) -> Result<std::convert::Infallible, JailError> {
    confine(spec, filters, blocked)?;
    let cstr = |s: &str| CString::new(s).map_err(|_| JailError::Arg(format!("NUL byte in {s:?}")));
    let argv = spec
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = spec
        .env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()?;
    let prog = argv
        .first()
        .ok_or_else(|| JailError::Arg("empty argv".into()))?;
    nix::unistd::execve(prog, &argv, &env).map_err(sys("executing the kernel"))
}

/// Step 6 up to the `execve`: what every process that runs sandbox code
/// goes through, whether it then execs or (a zygote child) returns.
fn confine(
    spec: &JailSpec,
    filters: &[seccompiler::BpfProgram],
    blocked: &SigSet,
) -> Result<(), JailError> {
    nix::unistd::setsid().map_err(sys("setsid"))?;
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        // SAFETY: SIG_DFL is not a function pointer; no handler code runs.
        unsafe { signal::signal(s, SigHandler::SigDfl) }.map_err(sys("restoring signals"))?;
    }
    signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(blocked), None)
        .map_err(sys("unblocking signals"))?;
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(sys("setting RLIMIT_CORE"))?;
    drop_bounding_set()?;
    nix::unistd::setgroups(&[]).map_err(sys("clearing supplementary groups"))?;
    let id = SANDBOX_UID;
    nix::unistd::setresgid(Gid::from_raw(id), Gid::from_raw(id), Gid::from_raw(id))
        .map_err(sys("setting the sandbox gid"))?;
    // Leaving uid 0 clears the permitted, effective and ambient capabilities.
    nix::unistd::setresuid(Uid::from_raw(id), Uid::from_raw(id), Uid::from_raw(id))
        .map_err(sys("setting the sandbox uid"))?;
    nix::sys::prctl::set_no_new_privs().map_err(sys("setting no_new_privs"))?;
    // Changing uids made the process non-dumpable, which owns its /proc
    // files by root: the kernel could not read /proc/self/environ or list
    // /proc/self/fd. `execve` undoes that; a zygote child does not exec, so
    // it is undone here, for both. (A forked kernel's /proc/self/cmdline and
    // environ are the zygote's, which was started with a kernel's env.)
    nix::sys::prctl::set_dumpable(true).map_err(sys("setting the process dumpable"))?;
    close_other_fds()?;
    nix::unistd::chdir(&spec.cwd).map_err(sys("entering the working directory"))?;
    let mut read_only: Vec<PathBuf> = [
        "/usr", "/etc", "/proc", "/dev", "/bin", "/lib", "/lib64", "/sbin",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.exists())
    .collect();
    read_only.extend(spec.ro_binds.iter().cloned());
    let read_write: Vec<PathBuf> = vec![
        "/home/user".into(),
        "/tmp".into(),
        "/dev/shm".into(),
        "/dev/null".into(),
        "/dev/zero".into(),
        "/dev/full".into(),
        spec.sock_dir.clone(),
    ];
    fsrules::apply(&read_only, &read_write)?;
    seccomp::install(filters)?;
    Ok(())
}

/// Empties the capability bounding set, so nothing exec'd can regain a capability.
fn drop_bounding_set() -> Result<(), JailError> {
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 {
            let e = nix::errno::Errno::last();
            if e == nix::errno::Errno::EINVAL {
                break; // past the last capability this kernel knows
            }
            return Err(sys("dropping the bounding set")(e));
        }
    }
    Ok(())
}

/// Closes every fd above 2.
fn close_other_fds() -> Result<(), JailError> {
    // SAFETY: close_range touches no memory; fds 0–2 stay open, and nothing
    // in this process holds the others (OwnedFd wrappers are not used after).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc < 0 {
        return Err(sys("closing inherited fds")(nix::errno::Errno::last()));
    }
    Ok(())
}
