"""A websocket client that sends requests and then never reads: a cell that
floods output, then a kernel_info_request. The server must not let it hold
the kernel: an execution over /v1 in the same sandbox still runs, and the
kernel can still be deleted. Asserts.

A raw socket client (tornado's would read and buffer everything), with a
small receive buffer so the server's writes stall quickly.

Usage: kernel_websocket_stall.py BASE
"""
import base64, json, os, socket, sys, time, urllib.request, uuid

BASE = sys.argv[1]
HOST, PORT = BASE.removeprefix("http://").split(":")


def call(method, path, body=None, timeout=300):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
        return r.status, (json.loads(raw) if raw else None)


def frame(text):
    """One masked text frame, as a client must send."""
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def msg(msg_type, content):
    h = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": "stall", "username": "t", "version": "5.3"}
    return {"header": h, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell"}


st, k = call("POST", "/api/kernels", {"name": "python3"})
kid = k["id"]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect((HOST, int(PORT)))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(
    f"GET /api/kernels/{kid}/channels?session_id=stall HTTP/1.1\r\nHost: {HOST}\r\n"
    f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
    f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
)
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
assert head.startswith(b"HTTP/1.1 101"), head
flood = "for i in range(20000):\n    print('x' * 2000, flush=True)"
s.sendall(frame(json.dumps(msg("execute_request", {"code": flood, "silent": False, "store_history": True,
                                                    "user_expressions": {}, "allow_stdin": False}))))
s.sendall(frame(json.dumps(msg("kernel_info_request", {}))))
# ... and never read again. The same sandbox over /v1: it runs once the
# stalled client is let go.
t0 = time.monotonic()
st, r = call("POST", f"/v1/sandboxes/{kid}/execute", {"code": "print(6 * 7)", "timeout_s": 300})
assert st == 200 and r["stdout"] == "42\n", r
waited = time.monotonic() - t0
st, _ = call("DELETE", f"/api/kernels/{kid}", timeout=60)
assert st == 204, st
s.close()
print(f"ok {kid} waited {waited:.1f}s")
