//! `cellblock __write PROCS…`: copies stdin to stdout (an upload's temporary
//! file, opened by the broker through [`super::beneath`]) from inside the
//! sandbox's cgroup, so the tmpfs pages of an upload are charged to the
//! sandbox's memory like files its own code writes, not to the broker's.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;

/// Exit status when the sandbox's disk is full.
pub const NO_SPACE: i32 = 28;

/// Entry point. Never returns.
pub fn run(cgroup_procs: &[PathBuf]) -> ! {
    let me = std::process::id().to_string();
    for p in cgroup_procs {
        if let Err(e) = std::fs::write(p, &me) {
            eprintln!("cellblock write: joining {}: {e}", p.display());
            std::process::exit(125);
        }
    }
    let code = match copy() {
        Ok(()) => 0,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
            ) =>
        {
            NO_SPACE
        }
        Err(e) => {
            eprintln!("cellblock write: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn copy() -> std::io::Result<()> {
    // Unbuffered: a File on a duplicate of fd 1, not the line-buffered Stdout.
    let mut out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let mut input = std::io::stdin().lock();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
    }
    out.sync_all()
}
