"""cellblock's kernel launcher.

Runs ipykernel's IPKernelApp with one change: the iopub socket gets an
unlimited send high-water mark, so a flood of output is delivered in full
instead of being dropped silently above ipykernel's default of 1000 queued
messages. The broker drains iopub in its own task and caps what it keeps.

Launched as `python -I -m cellblock_kernel -f <connection file>`: isolated
mode, so nothing the sandbox wrote (a `cellblock_kernel.py` in the working
directory, a usercustomize in ~/.local) can replace this launcher. User code
then gets the usual paths back: the working directory and $PYTHONPATH.
"""

import os
import sys

import zmq
from ipykernel.kernelapp import IPKernelApp


class CellblockKernelApp(IPKernelApp):
    """IPKernelApp whose iopub never drops messages."""

    def _bind_socket(self, s, port):
        if s.type in (zmq.XPUB, zmq.PUB):
            s.setsockopt(zmq.SNDHWM, 0)
        return super()._bind_socket(s, port)


def main():
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[0:0] = [""] + extra
    CellblockKernelApp.launch_instance()


if __name__ == "__main__":
    main()
