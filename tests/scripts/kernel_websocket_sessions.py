"""Kernel websocket sessions and binary buffers, with tornado's websocket
client: a connection dropped mid-cell and reopened with the same session_id
gets the rest (nothing lost, nothing twice); `connections` in the kernel
model; a newer connection with the same session_id replaces the older;
comm messages with binary buffers both ways, in the legacy binary framing
and in v1; an oversized frame closes that connection only. Asserts.

Usage: kernel_websocket_sessions.py BASE MAX_BODY_BYTES
"""
import asyncio, json, struct, sys, time, uuid, urllib.request
from tornado.websocket import websocket_connect
from jupyter_frames import gather_until_done, v1_decode, v1_encode

BASE, MAX_BODY = sys.argv[1], int(sys.argv[2])
V1 = "v1.kernel.websocket.jupyter.org"


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
        return r.status, (json.loads(raw) if raw else None)


def msg(msg_type, content, channel="shell"):
    h = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": "t", "username": "t", "version": "5.3"}
    return {"header": h, "parent_header": {}, "metadata": {}, "content": content, "channel": channel, "buffers": []}


def execute(code):
    return msg("execute_request", {"code": code, "silent": False, "store_history": True,
                                   "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})


def legacy_encode(m, buffers):
    """jupyter_server's serialize_binary_message."""
    m = dict(m)
    m.pop("buffers", None)
    parts = [json.dumps(m).encode()] + list(buffers)
    offsets = [4 * (len(parts) + 1)]
    for p in parts[:-1]:
        offsets.append(offsets[-1] + len(p))
    return struct.pack("!" + "I" * (len(parts) + 1), len(parts), *offsets) + b"".join(parts)


def legacy_decode(raw):
    """jupyter_server's deserialize_binary_message."""
    n = struct.unpack("!i", raw[:4])[0]
    offsets = list(struct.unpack("!" + "I" * n, raw[4: 4 * (n + 1)])) + [None]
    parts = [raw[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    m = json.loads(parts[0])
    m["buffers"] = parts[1:]
    return m


async def read(ws, v1=False, limit=20):
    raw = await asyncio.wait_for(ws.read_message(), limit)
    assert raw is not None, ("closed", ws.close_code, ws.close_reason)
    if v1:
        return v1_decode(raw)
    return legacy_decode(raw) if isinstance(raw, bytes) else json.loads(raw)


async def until_done(ws, parent_id, out, v1=False):
    """Reads into `out` the messages parented to `parent_id` until its reply
    and idle both came."""
    return await gather_until_done(lambda: read(ws, v1), parent_id, out)


def connections(kid):
    return call("GET", f"/api/kernels/{kid}")[1]["connections"]


async def wait_connections(kid, want):
    for _ in range(100):
        if connections(kid) == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"connections stayed {connections(kid)}, wanted {want}")


ECHO = """
import comm
def _echo(c, open_msg):
    c.send({"opened": len(open_msg["buffers"])}, buffers=[bytes(b)[::-1] for b in open_msg["buffers"]])
    @c.on_msg
    def _on(m):
        c.send({"got": m["content"]["data"]}, buffers=[bytes(b).upper() for b in m["buffers"]])
comm.get_comm_manager().register_target("echo", _echo)
print("registered")
"""


async def main():
    st, k = call("POST", "/api/kernels", {"name": "python3"})
    assert st == 201, st
    kid = k["id"]
    assert k["connections"] == 0, k
    url = BASE.replace("http", "ws") + f"/api/kernels/{kid}/channels?session_id="

    # 1. Drop the connection mid-cell; reconnect with the same session id.
    ws = await websocket_connect(url + "sess-a")
    await wait_connections(kid, 1)
    m = execute("import time\nfor i in range(6):\n    print('line', i, flush=True)\n    time.sleep(0.3)")
    pid = m["header"]["msg_id"]
    await ws.write_message(json.dumps(m))
    first = []
    while not any(x["msg_type"] == "stream" for x in first):
        x = await read(ws)
        if x["parent_header"].get("msg_id") == pid:
            first.append(x)
    ws.close()
    await wait_connections(kid, 0)
    await asyncio.sleep(2.5)  # the cell finishes while nobody is connected
    ws = await websocket_connect(url + "sess-a")
    rest = await until_done(ws, pid, [])
    text = "".join(x["content"]["text"] for x in first + rest if x["msg_type"] == "stream")
    assert text == "".join(f"line {i}\n" for i in range(6)), (text, first, rest)
    ids = [x["header"]["msg_id"] for x in first + rest]
    assert len(ids) == len(set(ids)), "a message came twice"
    assert [x["content"]["status"] for x in rest if x["msg_type"] == "execute_reply"] == ["ok"], rest

    # 2. A second connection with the same session id replaces the first.
    ws2 = await websocket_connect(url + "sess-a")
    r = await asyncio.wait_for(ws.read_message(), 10)
    assert r is None and ws.close_code == 1000 and "replaced" in ws.close_reason, (r, ws.close_code, ws.close_reason)
    other = await websocket_connect(url + "sess-b")
    await wait_connections(kid, 2)
    other.close()
    await wait_connections(kid, 1)

    # 3. Comms with binary buffers, legacy framing: binary frames both ways.
    m = execute(ECHO)
    await ws2.write_message(json.dumps(m))
    got = await until_done(ws2, m["header"]["msg_id"], [])
    assert [x["content"]["text"] for x in got if x["msg_type"] == "stream"] == ["registered\n"], got
    comm_id = uuid.uuid4().hex
    m = msg("comm_open", {"comm_id": comm_id, "target_name": "echo", "data": {}})
    await ws2.write_message(legacy_encode(m, [b"abc", b"\x00\x01\xff"]), binary=True)
    got = await until_done_no_reply(ws2, m["header"]["msg_id"])
    sent = [x for x in got if x["msg_type"] == "comm_msg"]
    assert len(sent) == 1, got
    assert sent[0]["content"]["data"] == {"opened": 2}, sent
    assert [bytes(b) for b in sent[0]["buffers"]] == [b"cba", b"\xff\x01\x00"], sent
    # The next message to the comm needs no reply: the kernel's idle ends it,
    # and an execution right after is not held up.
    m = msg("comm_msg", {"comm_id": comm_id, "data": {"n": 1}})
    await ws2.write_message(legacy_encode(m, [b"xyz"]), binary=True)
    got = await until_done_no_reply(ws2, m["header"]["msg_id"])
    sent = [x for x in got if x["msg_type"] == "comm_msg"]
    assert [bytes(b) for b in sent[0]["buffers"]] == [b"XYZ"] and sent[0]["content"]["data"] == {"got": {"n": 1}}, got
    t0 = time.monotonic()
    m = execute("print('after comm')")
    await ws2.write_message(json.dumps(m))
    got = await until_done(ws2, m["header"]["msg_id"], [])
    assert time.monotonic() - t0 < 10, "an execution waited behind a comm message"

    # 4. The same in the v1 framing: buffers are the parts after content.
    wv = await websocket_connect(url + "sess-v1", subprotocols=[V1])
    assert wv.selected_subprotocol == V1
    m = msg("comm_msg", {"comm_id": comm_id, "data": {"n": 2}})
    await wv.write_message(v1_encode("shell", m, [b"v1buf"]), binary=True)
    got = await until_done_no_reply(wv, m["header"]["msg_id"], v1=True)
    sent = [x for x in got if x["msg_type"] == "comm_msg"]
    assert [bytes(b) for b in sent[0]["buffers"]] == [b"V1BUF"], got
    assert sent[0]["channel"] == "iopub", sent

    # 5. A frame over the limit closes that connection only.
    await ws2.write_message("x" * (MAX_BODY + 1024))
    r = await asyncio.wait_for(ws2.read_message(), 20)
    assert r is None and ws2.close_code in (1009, 1006), (r, ws2.close_code, ws2.close_reason)
    m = execute("print('still', 7)")
    await wv.write_message(v1_encode("shell", m), binary=True)
    got = await until_done(wv, m["header"]["msg_id"], [], v1=True)
    assert [x["content"]["text"] for x in got if x["msg_type"] == "stream"] == ["still 7\n"], got

    # 6. Deleting the kernel closes its connections.
    assert call("DELETE", f"/api/kernels/{kid}")[0] == 204
    r = await asyncio.wait_for(wv.read_message(), 10)
    assert r is None and wv.close_code == 1000, (r, wv.close_code, wv.close_reason)
    print("ok", kid)


async def until_done_no_reply(ws, parent_id, v1=False):
    """Messages parented to a request that has no reply, until idle."""
    out = []
    while True:
        m = await read(ws, v1)
        if m["parent_header"].get("msg_id") != parent_id:
            continue
        out.append(m)
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            return out


asyncio.run(asyncio.wait_for(main(), 120))
