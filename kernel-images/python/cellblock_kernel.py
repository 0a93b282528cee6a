"""cellblock's kernel launcher.

Runs ipykernel's IPKernelApp with two changes to how output leaves it:
- the iopub socket gets an unlimited send high-water mark, so a flood of
  output is delivered in full instead of being dropped silently above
  ipykernel's default of 1000 queued messages;
- stdout/stderr are flushed at least every CHUNK characters, and one huge
  write is sent in CHUNK pieces. Without this, a busy kernel batches tens of
  MB into one `stream` message (its timer flush runs late under load), which
  the broker must hold whole, and above the broker's per-message cap it
  would be rejected. Flushing from the writing thread waits for the IO
  thread, so a flood is paced by how fast the broker drains iopub.

The broker drains iopub in its own task and caps what it keeps.

Launched as `python -I -m cellblock_kernel -f <connection file>`: isolated
mode, so nothing the sandbox wrote (a `cellblock_kernel.py` in the working
directory, a usercustomize in ~/.local) can replace this launcher. User code
then gets the usual paths back: the working directory and $PYTHONPATH.
"""

import os
import sys

import zmq
from ipykernel import iostream
from ipykernel.kernelapp import IPKernelApp

CHUNK = 1 << 20

_write = iostream.OutStream.write


def _paced_write(self, string):
    """OutStream.write in pieces of at most CHUNK, flushing every CHUNK."""
    if not isinstance(string, str):
        return _write(self, string)  # raises ipykernel's TypeError
    for i in range(0, len(string), CHUNK) or [0]:
        part = string[i : i + CHUNK]
        _write(self, part)
        pending = getattr(self, "_cellblock_pending", 0) + len(part)
        if pending >= CHUNK and self._is_master_process():
            pending = 0
            self.flush()
        self._cellblock_pending = pending
    return len(string)


iostream.OutStream.write = _paced_write


class CellblockKernelApp(IPKernelApp):
    """IPKernelApp whose iopub never drops messages."""

    def _bind_socket(self, s, port):
        if s.type in (zmq.XPUB, zmq.PUB):
            s.setsockopt(zmq.SNDHWM, 0)
        return super()._bind_socket(s, port)


def preload():
    """Imports the modules named in CELLBLOCK_PRELOAD (the broker's
    --preload), from the image only: before the user's paths are added.
    The variable is removed, so user code does not see it."""
    import importlib

    for name in filter(None, os.environ.pop("CELLBLOCK_PRELOAD", "").split(",")):
        try:
            importlib.import_module(name)
        except Exception as e:  # a missing module must not stop the kernel
            print(f"cellblock: preloading {name} failed: {e!r}", file=sys.stderr)


def main():
    preload()
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[0:0] = [""] + extra
    CellblockKernelApp.launch_instance()


if __name__ == "__main__":
    main()
