//! Helpers shared by the integration tests: the Python interpreter to test
//! against, a self-removing temporary directory, a deterministic PRNG, and a
//! bounded way to run a Python script.
//!
//! Each test crate uses only part of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The variable naming the Python interpreter to test against.
pub const PYTHON_VAR: &str = "CELLBLOCK_TEST_PYTHON";

/// The Python interpreter with ipykernel and jupyter_client.
///
/// Panics when the variable is unset or empty: these tests must never be
/// skipped silently.
pub fn python() -> PathBuf {
    match std::env::var_os(PYTHON_VAR) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "set {PYTHON_VAR} to a python with ipykernel and jupyter_client \
             (./scripts/test.sh does this)"
        ),
    }
}

/// A directory under the system temp dir, removed on drop.
///
/// The name is short so that unix socket paths inside it stay well under the
/// 108-byte `sun_path` limit.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let path = std::env::temp_dir().join(format!("{prefix}-{}", &id[..12]));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating temp dir {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// xorshift64* — small, deterministic, and good enough for fuzzing.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // A zero state would stay zero forever.
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n`; `n` must be non-zero.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Runs `python -c script args…` with `stdin` as its input, bounded by
/// `timeout`. Panics if Python cannot be started or does not finish in time.
pub fn run_python(script: &str, args: &[&str], stdin: &[u8], timeout: Duration) -> Output {
    let python = python();
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", python.display()));

    // Feed stdin and drain stdout/stderr on threads so no pipe can fill up
    // and deadlock the child.
    let mut child_stdin = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // The script may exit early without reading; a broken pipe is fine.
        let _ = child_stdin.write_all(&input);
    });
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("python script did not finish within {timeout:?}");
            }
            Err(e) => panic!("waiting for python: {e}"),
        }
    };
    let _ = writer.join();
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader panicked"),
        stderr: err_reader.join().expect("stderr reader panicked"),
    }
}
