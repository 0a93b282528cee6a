//! Host-side access to a sandbox's home, never outside it.
//!
//! The broker runs as root and the home is full of files the sandbox made,
//! symlinks included. Every path is resolved with `openat2` from a directory
//! fd, with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV`: no `..` out, no symlink followed (a planted link to
//! `/etc/shadow` or another sandbox's home fails with ELOOP), no crossing into
//! another mount. Only regular files are read; fifos and devices are refused.
//! Files the API writes are owned by the sandbox user.

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Why a path or an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("invalid path: {0}")]
    InvalidPath(String),
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: a symlink or a path leaving the sandbox's home; refused")]
    Refused(String),
    #[error("{0}: not a regular file")]
    NotAFile(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{0}: is a directory")]
    IsADirectory(String),
    #[error("{0}: directory not empty (use recursive=true)")]
    NotEmpty(String),
    #[error("the sandbox's disk is full (disk_mb)")]
    NoSpace,
    #[error("{path}: {errno}")]
    Sys { path: String, errno: Errno },
}

impl BeneathError {
    fn from_errno(path: &Path, errno: Errno) -> Self {
        let p = path.display().to_string();
        match errno {
            Errno::ENOENT => Self::NotFound(p),
            Errno::ELOOP | Errno::EXDEV => Self::Refused(p),
            Errno::ENOTDIR => Self::NotADirectory(p),
            Errno::EISDIR => Self::IsADirectory(p),
            Errno::ENOTEMPTY => Self::NotEmpty(p),
            Errno::ENOSPC | Errno::EDQUOT => Self::NoSpace,
            errno => Self::Sys { path: p, errno },
        }
    }
}

/// Checks a client's relative path and returns it normalised: no NUL, not
/// absolute, no `..`, no empty result; `.` and repeated slashes are dropped.
pub fn validate(raw: &str) -> Result<PathBuf, BeneathError> {
    let bad = |why: &str| Err(BeneathError::InvalidPath(format!("{raw:?}: {why}")));
    if raw.contains('\0') {
        return bad("contains a NUL byte");
    }
    if raw.len() > 4096 {
        return bad("longer than 4096 bytes");
    }
    let mut out = PathBuf::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(part) => {
                if part.len() > 255 {
                    return bad("a component is longer than 255 bytes");
                }
                out.push(part);
            }
            Component::CurDir => {}
            Component::ParentDir => return bad("'..' is not allowed"),
            Component::RootDir | Component::Prefix(_) => {
                return bad("paths are relative to /home/user")
            }
        }
    }
    Ok(out)
}

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS)
    .union(ResolveFlag::RESOLVE_NO_XDEV);

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of a listing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: f64,
}

fn kind_of(mode: u32) -> Kind {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// Where an upload goes: the parent directory, the file name, and the
/// directories created on the way.
pub struct Parents {
    pub dir: OwnedFd,
    pub name: PathBuf,
    pub created: Vec<(OwnedFd, PathBuf)>,
}

/// A sandbox's home, opened from the host.
pub struct Root {
    fd: OwnedFd,
    uid: u32,
}

impl Root {
    /// Opens the home directory (a host path the broker created).
    pub fn open(home: &Path, uid: u32) -> Result<Self, BeneathError> {
        let fd = nix::fcntl::open(
            home,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| BeneathError::from_errno(home, e))?;
        Ok(Self { fd, uid })
    }

    fn at<Fd: AsFd>(dir: Fd, rel: &Path, flags: OFlag, mode: u32) -> Result<OwnedFd, BeneathError> {
        let rel_or_dot = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(RESOLVE);
        openat2(dir, rel_or_dot, how).map_err(|e| BeneathError::from_errno(rel, e))
    }

    /// Opens a regular file for reading; returns it and its size.
    pub fn read_file(&self, rel: &Path) -> Result<(File, u64), BeneathError> {
        // Look before opening for reading: opening a socket or a device node
        // fails with its own errors, and must read as "not a file".
        let probe = Self::at(&self.fd, rel, OFlag::O_PATH, 0)?;
        let st = fstat(&probe).map_err(|e| BeneathError::from_errno(rel, e))?;
        match kind_of(st.st_mode) {
            Kind::File => {}
            Kind::Symlink => return Err(BeneathError::Refused(rel.display().to_string())),
            Kind::Dir => return Err(BeneathError::IsADirectory(rel.display().to_string())),
            _ => return Err(BeneathError::NotAFile(rel.display().to_string())),
        }
        let fd = Self::at(&self.fd, rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0).map_err(|e| {
            match e {
                // Swapped for something else since the look.
                BeneathError::Sys { .. } => BeneathError::NotAFile(rel.display().to_string()),
                e => e,
            }
        })?;
        let st = fstat(&fd).map_err(|e| BeneathError::from_errno(rel, e))?;
        match kind_of(st.st_mode) {
            Kind::File => {}
            Kind::Dir => return Err(BeneathError::IsADirectory(rel.display().to_string())),
            _ => return Err(BeneathError::NotAFile(rel.display().to_string())),
        }
        // Back to blocking reads for the streaming copy.
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
            .map_err(|e| BeneathError::from_errno(rel, e))?;
        Ok((File::from(fd), st.st_size as u64))
    }

    /// Opens a directory beneath the home (the home itself for an empty path).
    pub fn open_dir(&self, rel: &Path) -> Result<OwnedFd, BeneathError> {
        Self::at(&self.fd, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
    }

    /// Creates the parent directories of `rel` (owned by the sandbox user) and
    /// returns the parent's fd, the file name, and the directories it created
    /// (parent fd and name, outermost first) so a failed upload can remove them.
    pub fn make_parents(&self, rel: &Path) -> Result<Parents, BeneathError> {
        let name = rel
            .file_name()
            .map(PathBuf::from)
            .ok_or_else(|| BeneathError::InvalidPath("a file name is needed".into()))?;
        let mut dir = self.open_dir(Path::new(""))?;
        let mut created = Vec::new();
        if let Some(parent) = rel.parent() {
            for part in parent.components() {
                let part = Path::new(part.as_os_str());
                match mkdirat(&dir, part, Mode::from_bits_truncate(0o755)) {
                    Ok(()) => {
                        fchown_at(&dir, part, self.uid)?;
                        let next = Self::at(&dir, part, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
                        created.push((dir, part.to_path_buf()));
                        dir = next;
                        continue;
                    }
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(BeneathError::from_errno(part, e)),
                }
                dir = Self::at(&dir, part, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
            }
        }
        Ok(Parents { dir, name, created })
    }

    /// Removes directories [`Root::make_parents`] created, innermost first,
    /// each only if it is still empty.
    pub fn remove_created(&self, created: &[(OwnedFd, PathBuf)]) {
        for (parent, name) in created.iter().rev() {
            let _ = unlinkat(parent, name.as_path(), UnlinkatFlags::RemoveDir);
        }
    }

    /// Creates a new temporary file in `dir` for an upload.
    pub fn create_temp(&self, dir: &OwnedFd) -> Result<(File, PathBuf), BeneathError> {
        let name = PathBuf::from(format!(
            ".cellblock-upload-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let fd = Self::at(
            dir,
            &name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            0o644,
        )?;
        fchown(
            &fd,
            Some(Uid::from_raw(self.uid)),
            Some(Gid::from_raw(self.uid)),
        )
        .map_err(|e| BeneathError::from_errno(&name, e))?;
        Ok((File::from(fd), name))
    }

    /// Moves a finished upload into place (replacing a file or symlink, never
    /// following one).
    pub fn commit(&self, dir: &OwnedFd, temp: &Path, name: &Path) -> Result<(), BeneathError> {
        if let Ok(st) = fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            if kind_of(st.st_mode) == Kind::Dir {
                let _ = unlinkat(dir, temp, UnlinkatFlags::NoRemoveDir);
                return Err(BeneathError::IsADirectory(name.display().to_string()));
            }
        }
        nix::fcntl::renameat(dir, temp, dir, name).map_err(|e| BeneathError::from_errno(name, e))
    }

    /// Removes a temporary file after a failed upload.
    pub fn discard(&self, dir: &OwnedFd, temp: &Path) {
        let _ = unlinkat(dir, temp, UnlinkatFlags::NoRemoveDir);
    }

    /// Deletes a file, a symlink (not its target) or, with `recursive`, a directory.
    pub fn remove(&self, rel: &Path, recursive: bool) -> Result<(), BeneathError> {
        let name = rel
            .file_name()
            .ok_or_else(|| BeneathError::InvalidPath("cannot delete the home itself".into()))?;
        let parent = self.open_dir(rel.parent().unwrap_or(Path::new("")))?;
        let st = fstatat(&parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| BeneathError::from_errno(rel, e))?;
        if kind_of(st.st_mode) == Kind::Dir {
            if recursive {
                let dir = Self::at(
                    &parent,
                    Path::new(name),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                    0,
                )?;
                empty_dir(dir, rel)?;
            }
            return unlinkat(&parent, name, UnlinkatFlags::RemoveDir)
                .map_err(|e| BeneathError::from_errno(rel, e));
        }
        unlinkat(&parent, name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| BeneathError::from_errno(rel, e))
    }

    /// Lists `rel` down to `depth` levels, at most `cap` entries. Symlinks
    /// are listed, never followed. Returns the entries and whether the cap cut
    /// the listing short.
    pub fn list(
        &self,
        rel: &Path,
        depth: u32,
        cap: usize,
    ) -> Result<(Vec<Entry>, bool), BeneathError> {
        let dir = self.open_dir(rel)?;
        let mut out = Vec::new();
        let truncated = walk(dir, rel, depth, cap, &mut out)?;
        Ok((out, truncated))
    }
}

fn fchown_at(dir: &OwnedFd, name: &Path, uid: u32) -> Result<(), BeneathError> {
    nix::unistd::fchownat(
        dir,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(uid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| BeneathError::from_errno(name, e))
}

fn entries(
    dir: OwnedFd,
    rel: &Path,
) -> Result<(nix::dir::Dir, Vec<(String, Entry)>), BeneathError> {
    let mut d = nix::dir::Dir::from_fd(dir).map_err(|e| BeneathError::from_errno(rel, e))?;
    let mut found = Vec::new();
    let names: Vec<std::ffi::CString> = d
        .iter()
        .flatten()
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    for cname in names {
        let name = cname.to_string_lossy().into_owned();
        let Ok(st) = fstatat(
            &d,
            cname.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            continue;
        };
        let path = rel.join(&name).display().to_string();
        found.push((
            name.clone(),
            Entry {
                name,
                path,
                kind: kind_of(st.st_mode),
                size: st.st_size as u64,
                mtime: st.st_mtime as f64 + st.st_mtime_nsec as f64 / 1e9,
            },
        ));
    }
    Ok((d, found))
}

fn walk(
    dir: OwnedFd,
    rel: &Path,
    depth: u32,
    cap: usize,
    out: &mut Vec<Entry>,
) -> Result<bool, BeneathError> {
    let (d, mut found) = entries(dir, rel)?;
    found.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, entry) in found {
        if out.len() >= cap {
            return Ok(true);
        }
        let is_dir = entry.kind == Kind::Dir;
        out.push(entry);
        if is_dir && depth > 1 {
            if let Ok(sub) = Root::at(
                &d,
                Path::new(&name),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                0,
            ) {
                if walk(sub, &rel.join(&name), depth - 1, cap, out)? {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

fn empty_dir(dir: OwnedFd, rel: &Path) -> Result<(), BeneathError> {
    let (d, found) = entries(dir, rel)?;
    for (name, entry) in found {
        let n = Path::new(&name);
        if entry.kind == Kind::Dir {
            let sub = Root::at(&d, n, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
            empty_dir(sub, &rel.join(n))?;
            unlinkat(&d, n, UnlinkatFlags::RemoveDir)
                .map_err(|e| BeneathError::from_errno(n, e))?;
        } else {
            unlinkat(&d, n, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| BeneathError::from_errno(n, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(validate("a/./b//c").unwrap(), PathBuf::from("a/b/c"));
        for bad in ["/etc/shadow", "../x", "a/../../b", "a\0b", ""] {
            let r = validate(bad);
            assert!(
                bad.is_empty() && r.as_ref().is_ok_and(|p| p.as_os_str().is_empty()) || r.is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refuses_symlinks_and_escapes() {
        let home =
            std::env::temp_dir().join(format!("cb-beneath-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(home.join("d")).unwrap();
        std::fs::write(home.join("d/f.txt"), b"hi").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", home.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", home.join("dirlink")).unwrap();
        let root = Root::open(&home, nix::unistd::getuid().as_raw()).unwrap();
        let (mut f, size) = root.read_file(Path::new("d/f.txt")).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).unwrap();
        assert_eq!((s.as_str(), size), ("hi", 2));
        assert!(matches!(
            root.read_file(Path::new("link")),
            Err(BeneathError::Refused(_))
        ));
        assert!(matches!(
            root.read_file(Path::new("dirlink/passwd")),
            Err(BeneathError::Refused(_))
        ));
        assert!(matches!(
            root.read_file(Path::new("d")),
            Err(BeneathError::IsADirectory(_))
        ));
        assert!(matches!(
            root.read_file(Path::new("nope")),
            Err(BeneathError::NotFound(_))
        ));
        assert!(matches!(
            root.make_parents(Path::new("dirlink/x")).map(|p| p.name),
            Err(BeneathError::Refused(_) | BeneathError::NotADirectory(_))
        ));
        assert!(!Path::new("/etc/x").exists());
        let (list, truncated) = root.list(Path::new(""), 2, 100).unwrap();
        assert!(!truncated);
        let names: Vec<_> = list.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, vec!["d", "d/f.txt", "dirlink", "link"]);
        root.remove(Path::new("link"), false).unwrap();
        assert!(
            std::fs::metadata("/etc/passwd").is_ok(),
            "the target must survive"
        );
        assert!(matches!(
            root.remove(Path::new("d"), false),
            Err(BeneathError::NotEmpty(_))
        ));
        root.remove(Path::new("d"), true).unwrap();
        std::fs::remove_dir_all(home).unwrap();
    }
}
