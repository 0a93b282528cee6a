"""cellblock's zygote: a fork server for kernels.

Started by the broker as `python -I -B -m cellblock_zygote LIB HOME PRELOAD MPLDIR`,
as host root, with a SOCK_SEQPACKET socket to the broker on fd 0 and the
environment a kernel starts with. It closes every other inherited fd, sets
HOME to its own empty directory (so import-time code writes nothing to a
real home) and MPLCONFIGDIR to the image's font cache, imports the modules
in PRELOAD (comma-separated: the data stack) and ipykernel once, freezes the garbage collector so those pages
stay shared, tells the broker `ready`, and then serves one request at a
time:

    broker -> zygote   b"<jail spec path>"   + [kernel's stderr, go pipe]
    zygote -> broker   b"pid <n>"            (the child, its own process group)
                       b"error <text>"

The child waits for a byte on the go pipe before it does anything: the
broker sends it once it has accepted the pid, and closes the pipe instead
if it gave up on the reply, so a fork the broker does not know about exits.

The zygote never runs user code and never reads a spec: it only forks. The
child (single-threaded: fork copies only the calling thread; a library's own
threads, like OpenBLAS's pool, are stopped by its fork handlers) reads the spec,
and calls `cellblock_zygote_enter` of LIB (the cellblock-isolation crate, built
as a shared library), which runs the same namespace/cgroup/root/uid/Landlock/
seccomp chain as `cellblock __jail` and returns only in the confined kernel
process. That process takes the sandbox's environment, reseeds its random
number generators, and runs the launcher (`cellblock_kernel.main`). No zmq
context or thread exists before that point: ipykernel makes them in the
child.
"""

import ctypes
import gc
import importlib
import json
import os
import signal
import socket
import sys
import traceback

MAX_REQUEST = 4096


def _preload(stack):
    """Imports the data stack and what a kernel imports while it starts
    (debugpy through ipykernel.debugger alone is 150 ms). Returns the
    variables those imports set (pydevd sets one), which a kernel that
    imported them itself would have too."""
    before = dict(os.environ)
    names = [n for n in stack.split(",") if n]
    # The launcher itself: ipykernel's app, zmq and the paced output.
    names[0:0] = [
        "cellblock_kernel",
        "ipykernel.ipkernel",
        "ipykernel.zmqshell",
        "ipykernel.debugger",
        "IPython.core.interactiveshell",
        "IPython.core.completerlib",
        "IPython.core.debugger",
        "IPython.extensions.storemagic",
        "jupyter_client.session",
        "tornado.platform.asyncio",
    ]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # an image without pandas still forks
            print(f"cellblock zygote: preloading {name} failed: {e!r}", file=sys.stderr)
    return {k: v for k, v in os.environ.items() if before.get(k) != v}


def _reap(_signum=None, _frame=None):
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _serve(ctl):
    """Answers fork requests until the broker goes away. Returns only in a
    forked child, with what it needs to become a kernel."""
    signal.signal(signal.SIGCHLD, _reap)
    ctl.send(b"ready")
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, MAX_REQUEST, 2)
        except OSError as e:
            print(f"cellblock zygote: reading a request: {e!r}", file=sys.stderr)
            return None
        if not msg:
            return None  # the broker closed its end
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            ctl.send(b"error a request needs two fds (stderr, go)")
            continue
        err_fd, go_fd = fds
        spec_path = os.fsdecode(msg)
        try:
            pid = os.fork()
        except OSError as e:
            os.close(err_fd)
            os.close(go_fd)
            ctl.send(f"error fork: {e}".encode())
            continue
        if pid == 0:
            ctl.close()
            return spec_path, err_fd, go_fd
        os.close(err_fd)
        os.close(go_fd)
        try:
            os.setpgid(pid, pid)  # also done by the child: whichever runs first
        except OSError:
            pass
        ctl.send(f"pid {pid}".encode())


def _enter(lib, spec_path, err_fd, go_fd):
    """In the forked child: its own process group, the broker's go, stdio,
    the jail. Returns the spec in the confined kernel process; any other
    process of the chain exits inside the call."""
    try:
        os.setpgid(0, 0)
        go = os.read(go_fd, 1)
        os.close(go_fd)
        if go != b"g":
            os._exit(0)  # the broker gave up on this fork
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err_fd, 2)
        for fd in {null, err_fd} - {0, 1, 2}:
            os.close(fd)
        with open(spec_path, "rb") as f:
            spec = json.load(f)
        enter = lib.cellblock_zygote_enter
        enter.argtypes = [ctypes.c_char_p]
        enter.restype = ctypes.c_int
        rc = enter(os.fsencode(spec_path))
        if rc != 0:
            os._exit(rc)
        return spec
    except BaseException:
        traceback.print_exc()
        os._exit(125)


def _become_kernel(spec, preload_env):
    """Inside the sandbox: the kernel's environment, signals and argv, fresh
    random state, then the launcher."""
    os.environ.clear()
    os.environ.update(preload_env)
    os.environ.update(dict(spec["env"]))
    sys.dont_write_bytecode = False  # the zygote's -B is not the kernel's
    mpl = sys.modules.get("matplotlib")
    if mpl is not None:
        # Memoized in the zygote (its own dirs): asked again, they follow
        # this kernel's MPLCONFIGDIR.
        for fn in (mpl.get_configdir, mpl.get_cachedir):
            _forget(fn)
    for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import random

    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()
    import cellblock_kernel

    argv = spec["argv"]
    at = argv.index("cellblock_kernel") if "cellblock_kernel" in argv else len(argv)
    sys.argv = [cellblock_kernel.__file__] + argv[at + 1 :]
    # The frozen objects stay frozen: collecting them would write to every
    # shared page and copy it into this kernel.
    cellblock_kernel.main()


def _forget(fn):
    """Resets a matplotlib `_logged_cached` function, so its next call
    computes its value again."""
    cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
    if "called" in cells:
        cells["called"].cell_contents = False


def main():
    lib_path, home, stack, mpl_dir = sys.argv[1:5]
    # Nothing the broker inherited reaches the kernels: fds past the socket
    # are closed before anything here opens one.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    lib = ctypes.CDLL(lib_path)
    ctl = socket.socket(fileno=0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Set here, not in the environment the zygote was started with: that
    # one is what a forked kernel's /proc/self/environ shows.
    os.environ["HOME"] = home
    os.environ["MPLCONFIGDIR"] = mpl_dir
    preload_env = _preload(stack)
    gc.collect()
    gc.freeze()
    job = _serve(ctl)
    if job is None:
        return
    spec = _enter(lib, *job)
    _become_kernel(spec, preload_env)


if __name__ == "__main__":
    main()
