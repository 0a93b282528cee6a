"""cellblock's kernel launcher.

Runs ipykernel's IPKernelApp with one change: the iopub socket gets an
unlimited send high-water mark, so a flood of output is delivered in full
instead of being dropped silently above ipykernel's default of 1000 queued
messages. The broker drains iopub in its own task and caps what it keeps.

Launched as `python -m cellblock_kernel -f <connection file>`.
"""

import zmq
from ipykernel.kernelapp import IPKernelApp


class CellblockKernelApp(IPKernelApp):
    """IPKernelApp whose iopub never drops messages."""

    def _bind_socket(self, s, port):
        if s.type in (zmq.XPUB, zmq.PUB):
            s.setsockopt(zmq.SNDHWM, 0)
        return super()._bind_socket(s, port)


def main():
    CellblockKernelApp.launch_instance()


if __name__ == "__main__":
    main()
