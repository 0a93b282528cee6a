//! Kernel images: a Python venv with ipykernel and the data stack, built once
//! per version and reused by every sandbox.
//!
//! The image's files live in `kernel-images/<name>/` and are compiled into the
//! binary. The version is a hash of those files and the interpreter's version,
//! so changing a pin produces a new image beside the old one. Builds take a
//! file lock, so two processes never build the same image at once, and write
//! `.complete` last, so a cut-off build is detected and redone.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Errors while building or finding an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("unknown image {0:?}; available: python")]
    Unknown(String),
    #[error("running {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}); see the output above")]
    Failed { what: String, status: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("locking {path}: {errno}")]
    Lock {
        path: String,
        errno: nix::errno::Errno,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The source files of an image, compiled in.
#[derive(Debug, Clone, Copy)]
pub struct ImageSpec {
    pub name: &'static str,
    pub requirements: &'static str,
    pub launcher: &'static str,
    /// The fork server (`cellblock_zygote.py`), installed next to the launcher.
    pub zygote: &'static str,
    pub ipython_config: &'static str,
}

/// The default image.
pub const PYTHON: ImageSpec = ImageSpec {
    name: "python",
    requirements: include_str!("../../kernel-images/python/requirements.txt"),
    launcher: include_str!("../../kernel-images/python/cellblock_kernel.py"),
    zygote: include_str!("../../kernel-images/python/cellblock_zygote.py"),
    ipython_config: include_str!("../../kernel-images/python/ipython_kernel_config.py"),
};

/// Looks an image up by name.
pub fn spec(name: &str) -> Result<ImageSpec, ImageError> {
    match name {
        "python" => Ok(PYTHON),
        other => Err(ImageError::Unknown(other.to_owned())),
    }
}

/// A built image, ready to launch kernels from.
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    pub name: String,
    pub version: String,
    pub dir: PathBuf,
    pub python_version: String,
    /// The interpreter's `sys.base_prefix`: bound read-only into sandboxes.
    pub base_prefix: PathBuf,
}

impl Image {
    /// The venv's interpreter.
    pub fn python(&self) -> PathBuf {
        self.dir.join("venv/bin/python")
    }
    /// The venv's `bin`.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("venv/bin")
    }
    /// `IPYTHONDIR` for kernels of this image.
    pub fn ipython_dir(&self) -> PathBuf {
        self.dir.join("ipython")
    }
    /// The prebuilt matplotlib cache, copied into each sandbox.
    pub fn mpl_cache(&self) -> PathBuf {
        self.dir.join("mplcache")
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<String, ImageError> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| ImageError::Spawn {
            what: what.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(ImageError::Failed {
            what: what.to_owned(),
            status: out.status.to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The interpreter's `sys.version`, part of the image version.
pub fn python_version(python: &str) -> Result<String, ImageError> {
    run(
        Command::new(python).args(["-c", "import sys; print(sys.version)"]),
        &format!("{python} (is python3 installed?)"),
    )
}

/// The version of `spec` when built with an interpreter of `python_version`.
pub fn version(spec: &ImageSpec, python_version: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        spec.name,
        spec.requirements,
        spec.launcher,
        spec.zygote,
        spec.ipython_config,
        python_version,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())[..12].to_owned()
}

/// Finds the image, building it first if it is missing or half-built.
/// Blocking: call it from a blocking context.
pub fn ensure(images_dir: &Path, spec: &ImageSpec, python: &str) -> Result<Image, ImageError> {
    let py_version = python_version(python)?;
    let version = version(spec, &py_version);
    let base = images_dir.join(spec.name);
    fs::create_dir_all(&base).map_err(io_err(&base))?;
    let dir = base.join(&version);
    let image = Image {
        name: spec.name.to_owned(),
        version: version.clone(),
        dir: dir.clone(),
        python_version: py_version,
        base_prefix: PathBuf::new(),
    };
    if dir.join(".complete").exists() {
        return with_base_prefix(image);
    }
    let lock_path = base.join(".lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, errno)| ImageError::Lock {
            path: lock_path.display().to_string(),
            errno,
        },
    )?;
    if dir.join(".complete").exists() {
        return with_base_prefix(image);
    }
    tracing::info!(image = spec.name, %version, dir = %dir.display(),
        "building kernel image (first use: installs pinned packages from PyPI, takes a few minutes)");
    eprintln!(
        "cellblock: building image {}@{} in {} (first use; a few minutes)…",
        spec.name,
        version,
        dir.display()
    );
    build(&image, spec, python)?;
    eprintln!("cellblock: image {}@{} is ready", spec.name, version);
    with_base_prefix(image)
}

fn with_base_prefix(mut image: Image) -> Result<Image, ImageError> {
    let prefix = run(
        Command::new(image.python()).args(["-c", "import sys; print(sys.base_prefix)"]),
        "asking the image's interpreter for its prefix",
    )?;
    image.base_prefix = PathBuf::from(prefix);
    Ok(image)
}

fn build(image: &Image, spec: &ImageSpec, python: &str) -> Result<(), ImageError> {
    let dir = &image.dir;
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io_err(dir))?;
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let venv = dir.join("venv");
    run(
        Command::new(python).arg("-m").arg("venv").arg(&venv),
        "python3 -m venv (on Debian/Ubuntu: apt-get install python3-venv)",
    )?;
    let req = dir.join("requirements.txt");
    fs::write(&req, spec.requirements).map_err(io_err(&req))?;
    let py = image.python();
    run(
        Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--no-input",
                "--disable-pip-version-check",
            ])
            .args(["--progress-bar", "off", "-r"])
            .arg(&req)
            // Progress goes to stderr: stdout is for the command's result.
            .stdout(std::io::stderr()),
        "pip install -r requirements.txt",
    )?;
    let purelib = run(
        Command::new(&py).args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ]),
        "locating site-packages",
    )?;
    let launcher = Path::new(&purelib).join("cellblock_kernel.py");
    fs::write(&launcher, spec.launcher).map_err(io_err(&launcher))?;
    let zygote = Path::new(&purelib).join("cellblock_zygote.py");
    fs::write(&zygote, spec.zygote).map_err(io_err(&zygote))?;
    let profile = image.ipython_dir().join("profile_default");
    for sub in ["startup", "log", "pid", "security"] {
        let p = profile.join(sub);
        fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    let cfg = profile.join("ipython_kernel_config.py");
    fs::write(&cfg, spec.ipython_config).map_err(io_err(&cfg))?;
    let mpl = image.mpl_cache();
    fs::create_dir_all(&mpl).map_err(io_err(&mpl))?;
    run(
        Command::new(&py)
            .args(["-c", "import matplotlib.pyplot, matplotlib.font_manager"])
            .env("MPLCONFIGDIR", &mpl)
            .env("MPLBACKEND", "Agg"),
        "building the matplotlib font cache",
    )?;
    let freeze = run(
        Command::new(&py).args(["-m", "pip", "freeze", "--disable-pip-version-check"]),
        "pip freeze",
    )?;
    let meta = serde_json::json!({
        "name": image.name,
        "version": image.version,
        "python": image.python_version,
        "packages": freeze.lines().collect::<Vec<_>>(),
        "built_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    });
    let meta_path = dir.join("image.json");
    fs::write(
        &meta_path,
        serde_json::to_vec_pretty(&meta).unwrap_or_default(),
    )
    .map_err(io_err(&meta_path))?;
    let done = dir.join(".complete");
    fs::write(&done, b"").map_err(io_err(&done))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_depends_on_inputs() {
        let a = version(&PYTHON, "3.11.7");
        assert_eq!(a.len(), 12);
        assert_eq!(a, version(&PYTHON, "3.11.7"));
        assert_ne!(a, version(&PYTHON, "3.12.0"));
        let mut other = PYTHON;
        other.requirements = "numpy==1\n";
        assert_ne!(a, version(&other, "3.11.7"));
    }

    #[test]
    fn unknown_image() {
        assert!(matches!(spec("ruby"), Err(ImageError::Unknown(_))));
        assert!(spec("python").is_ok());
    }
}
