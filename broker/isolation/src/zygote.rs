//! The zygote's side of the jail, and the broker's side of its socket.
//!
//! The zygote (`kernel-images/python/cellblock_zygote.py`) is a Python
//! process that imported the data stack and ipykernel once. For each
//! sandbox it forks a child, and the child loads this crate as a shared
//! library (`libcellblock_isolation.so`) and calls
//! [`cellblock_zygote_enter`] with the path of the sandbox's
//! [`JailSpec`]. That runs the same P0–P3 chain as `cellblock __jail`
//! ([`super::jail::enter_in_process`]); only P3 returns, confined, into
//! Python, which then starts the kernel. So a forked kernel gets exactly
//! the isolation of a spawned one, from the same code.
//!
//! The broker talks to the zygote over a `SOCK_SEQPACKET` socket pair: it
//! sends a spec path with the kernel's stderr pipe and a "go" pipe attached
//! ([`send_with_fds`]), and gets back the child's pid. The zygote never reads
//! a spec; its child does.

use super::jail::{enter_in_process, sys, JailError, SETUP_FAILED};
use super::spec::JailSpec;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::ffi::{c_char, c_int, CStr, OsStr};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Called by a freshly forked, single-threaded child of the zygote, as host
/// root. Returns 0 in P3, inside the sandbox and confined; the caller then
/// starts the kernel. Returns [`SETUP_FAILED`] if the chain could not start
/// (the reason is on stderr). Once the chain started, the calling process
/// never returns: it waits for the sandbox and exits with its status.
///
/// # Safety
/// `spec_path` must be null or a NUL-terminated string that stays valid for
/// the call (ctypes' `c_char_p`). The caller must not rely on anything but
/// its own memory afterwards: P3 is a copy of it made by raw `fork`s.
#[no_mangle]
pub unsafe extern "C" fn cellblock_zygote_enter(spec_path: *const c_char) -> c_int {
    if spec_path.is_null() {
        return SETUP_FAILED;
    }
    // SAFETY: the caller guarantees a NUL-terminated string valid for the call.
    let raw = unsafe { CStr::from_ptr(spec_path) };
    let path = Path::new(OsStr::from_bytes(raw.to_bytes()));
    match read_spec(path).and_then(|spec| enter_in_process(&spec)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cellblock zygote: {e}");
            SETUP_FAILED
        }
    }
}

/// Entry point of `cellblock __zygote PROGRAM ARGS…`: execs the zygote in
/// a network namespace of its own (only a down `lo`), so the image's
/// import-time code, which runs there as host root, has no network, and
/// nothing can reach the zygote over one. Its children leave it for their
/// sandbox's own. The environment is passed through. Never returns.
pub fn exec_without_network(argv: &[String]) -> ! {
    let err = exec_in_netns(argv).unwrap_err();
    eprintln!("cellblock zygote: {err}");
    std::process::exit(SETUP_FAILED)
}

fn exec_in_netns(argv: &[String]) -> Result<std::convert::Infallible, JailError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(sys("unsharing the zygote's network namespace"))?;
    let argv = argv
        .iter()
        .map(|a| std::ffi::CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| JailError::Arg("a NUL byte in the zygote's argv".into()))?;
    let prog = argv
        .first()
        .ok_or_else(|| JailError::Arg("empty argv".into()))?;
    nix::unistd::execv(prog, &argv).map_err(sys("executing the zygote"))
}

fn read_spec(path: &Path) -> Result<JailSpec, JailError> {
    let bytes = std::fs::read(path).map_err(|source| JailError::Io {
        step: "reading the jail spec",
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| JailError::Arg(format!("the jail spec: {e}")))
}

/// Sends one message with fds attached.
pub fn send_with_fds(sock: BorrowedFd<'_>, msg: &[u8], fds: &[BorrowedFd<'_>]) -> nix::Result<()> {
    let fds: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(msg)];
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)?;
    if sent != msg.len() {
        return Err(nix::errno::Errno::EMSGSIZE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn call(path: &[u8]) -> c_int {
        let c = std::ffi::CString::new(path).unwrap();
        // SAFETY: a NUL-terminated string that outlives the call.
        unsafe { cellblock_zygote_enter(c.as_ptr()) }
    }

    #[test]
    fn a_null_or_unreadable_spec_is_refused_without_forking() {
        // SAFETY: null is allowed and checked.
        let rc = unsafe { cellblock_zygote_enter(std::ptr::null()) };
        assert_eq!(rc, SETUP_FAILED);
        assert_eq!(call(b"/nonexistent/cellblock/jail.json"), SETUP_FAILED);
    }

    #[test]
    fn a_multithreaded_caller_is_refused_before_any_step() {
        let dir = std::env::temp_dir().join(format!("cbz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = JailSpec {
            uid_base: 1_000_000,
            root_dir: dir.join("root"),
            sock_dir: dir.join("sock"),
            home_dir: dir.join("home"),
            ro_binds: Vec::new(),
            tmp_mb: 16,
            // A cgroup the step would join: it must not be touched.
            cgroup_procs: vec![dir.join("cgroup.procs")],
            argv: vec!["/bin/true".into()],
            env: Vec::new(),
            cwd: PathBuf::from("/"),
        };
        let path = dir.join("jail.json");
        std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
        // The test harness runs this on a thread of its own: more than one.
        let err = enter_in_process(&spec).unwrap_err().to_string();
        assert!(err.contains("threads"), "{err}");
        assert_eq!(call(path.as_os_str().as_encoded_bytes()), SETUP_FAILED);
        assert!(!dir.join("cgroup.procs").exists(), "a step ran");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
