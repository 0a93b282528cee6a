//! The private root, built by the sandbox's init (PID 1 of its namespaces)
//! in its own mount namespace, then entered with `pivot_root`:
//!
//! - a small tmpfs as `/`, made read-only at the end;
//! - `/usr` (with the merged-usr symlinks), the image and the interpreter
//!   bound read-only, nosuid, nodev;
//! - `/home/user` bound read-write from the host's size-limited home;
//! - size-limited tmpfs `/tmp` and `/dev/shm`;
//! - a minimal `/dev` (null, zero, full, random, urandom bound from the host);
//! - a fresh `/proc`, mounted before the old root is detached;
//! - no `/sys`, and a synthetic `/etc`; nothing else of the host.

use super::spec::{JailSpec, SANDBOX_UID};
use super::step_io as io;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// Host paths shared read-only when they exist.
const SHARED_ETC: &[&str] = &[
    "/etc/alternatives",
    "/etc/fonts",
    "/etc/ssl/certs",
    "/etc/mime.types",
];
const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// A failed step, named after the step.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{step} {path}: {errno}")]
    Sys {
        step: &'static str,
        path: String,
        errno: nix::errno::Errno,
    },
    #[error(transparent)]
    Io(#[from] super::StepIo),
}

fn sys<'a>(
    step: &'static str,
    path: &'a Path,
) -> impl FnOnce(nix::errno::Errno) -> MountError + 'a {
    move |errno| MountError::Sys {
        step,
        path: path.display().to_string(),
        errno,
    }
}

/// `inner` (absolute) re-rooted under `root`.
fn under(root: &Path, inner: &Path) -> PathBuf {
    root.join(inner.strip_prefix("/").unwrap_or(inner))
}

fn mkdirs(p: &Path) -> Result<(), MountError> {
    Ok(fs::create_dir_all(p).map_err(io("creating", p))?)
}

fn tmpfs(target: &Path, opts: &str, flags: MsFlags) -> Result<(), MountError> {
    mkdirs(target)?;
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(opts))
        .map_err(sys("mounting tmpfs on", target))
}

/// Flags of the mount holding `path` that a user namespace may not clear.
fn locked_flags(path: &Path) -> MsFlags {
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs_flag) {
            out |= ms_flag;
        }
    }
    out
}

/// Binds `src` at `dst`, then remounts it with `extra` flags (keeping the
/// flags the user namespace may not clear).
fn bind(src: &Path, dst: &Path, extra: MsFlags) -> Result<(), MountError> {
    if src.is_dir() {
        mkdirs(dst)?;
    } else {
        if let Some(parent) = dst.parent() {
            mkdirs(parent)?;
        }
        fs::write(dst, b"").map_err(io("creating", dst))?;
    }
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("binding", dst))?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | locked_flags(dst);
    mount(None::<&str>, dst, None::<&str>, flags, None::<&str>).map_err(sys("remounting", dst))
}

const RO: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV);
const RW: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

fn write_etc(etc: &Path) -> Result<(), MountError> {
    mkdirs(etc)?;
    let uid = SANDBOX_UID;
    let files = [
        (
            "passwd",
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\nuser:x:{uid}:{uid}:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        ),
        (
            "group",
            format!("root:x:0:\nuser:x:{uid}:\nnogroup:x:65534:\n"),
        ),
        ("hosts", "127.0.0.1 localhost sandbox\n::1 localhost\n".to_owned()),
        ("hostname", "sandbox\n".to_owned()),
        ("nsswitch.conf", "passwd: files\ngroup: files\nhosts: files\n".to_owned()),
        ("resolv.conf", String::new()),
    ];
    for (name, text) in files {
        let p = etc.join(name);
        fs::write(&p, text).map_err(io("writing", &p))?;
    }
    Ok(())
}

/// Builds the root under `spec.root_dir` and pivots into it. Runs as PID 1 of
/// the sandbox's PID namespace, still host root and before the user namespace
/// exists, so host paths such as a 0700 `/root` holding the interpreter can be
/// bound; the mount namespace is then owned by the host's user namespace, so
/// nothing inside the sandbox can change a mount.
pub fn build_root(spec: &JailSpec) -> Result<(), MountError> {
    let root = spec.root_dir.as_path();
    // Nothing we mount propagates back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making private", Path::new("/")))?;
    tmpfs(
        root,
        "size=16m,mode=755",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;

    // /tmp first: host paths bound below may lie under /tmp.
    let tmp_opts = format!("size={}m,mode=1777", spec.tmp_mb);
    tmpfs(&root.join("tmp"), &tmp_opts, RW)?;
    bind(Path::new("/usr"), &root.join("usr"), RO)?;
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        if Path::new("/").join(target).exists() {
            symlink(target, root.join(link)).map_err(io("linking", &root.join(link)))?;
        }
    }
    for dir in &spec.ro_binds {
        if !dir.starts_with("/usr") {
            bind(dir, &under(root, dir), RO)?;
        }
    }
    write_etc(&root.join("etc"))?;
    for shared in SHARED_ETC {
        let p = Path::new(shared);
        if p.exists() {
            bind(p, &under(root, p), RO)?;
        }
    }

    let home = root.join("home/user");
    bind(&spec.home_dir, &home, RW)?;
    bind(&spec.sock_dir, &under(root, &spec.sock_dir), RW)?;

    let dev = root.join("dev");
    tmpfs(
        &dev,
        "size=64k,mode=755",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
    )?;
    for node in DEV_NODES {
        let host = Path::new("/dev").join(node);
        bind(
            &host,
            &dev.join(node),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        )?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link)).map_err(io("linking", &dev.join(link)))?;
    }
    tmpfs(&dev.join("shm"), &tmp_opts, RW | MsFlags::MS_NOEXEC)?;

    // A fresh /proc for the new PID namespace: before the old root goes, or EPERM.
    let proc_dir = root.join("proc");
    mkdirs(&proc_dir)?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("mounting proc on", &proc_dir))?;

    let old = root.join(".old");
    mkdirs(&old)?;
    nix::unistd::pivot_root(root, &old).map_err(sys("pivot_root into", root))?;
    nix::unistd::chdir("/").map_err(sys("chdir", Path::new("/")))?;
    umount2("/.old", MntFlags::MNT_DETACH)
        .map_err(sys("detaching the old root", Path::new("/.old")))?;
    fs::remove_dir("/.old").map_err(io("removing", Path::new("/.old")))?;
    let ro_root = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    mount(None::<&str>, "/", None::<&str>, ro_root, None::<&str>)
        .map_err(sys("making read-only", Path::new("/")))?;
    Ok(())
}
