"""Drives /api/kernels/{id}/channels with tornado's websocket client, the one
jupyter_server's gateway client uses: kernel_info, execute, interrupt and
restart over REST while connected, input(), malformed frames. Asserts.
"""
import asyncio, json, sys, uuid, urllib.request
from tornado.websocket import websocket_connect
from jupyter_frames import gather_until_done, v1_decode, v1_encode
BASE = sys.argv[1]
def post(path, body=None):
    req = urllib.request.Request(BASE + path, data=json.dumps(body or {}).encode(), method="POST")
    with urllib.request.urlopen(req) as r:
        return r.status, (json.loads(r.read() or b"null"))
def msg(msg_type, content, channel="shell", session="s1"):
    h = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": session, "username": "t", "version": "5.3", "date": 1.5}
    return {"header": h, "parent_header": {}, "metadata": {}, "content": content, "channel": channel, "buffers": {}}
async def collect(ws, parent_id, limit=20):
    """Messages parented to a request until both its reply and idle came."""
    async def read():
        return json.loads(await asyncio.wait_for(ws.read_message(), limit))
    return await gather_until_done(read, parent_id)
async def main():
    st, k = post("/api/kernels", {"name": "python3"})
    kid = k["id"]
    ws_url = BASE.replace("http", "ws") + f"/api/kernels/{kid}/channels?session_id=s1"
    ws = await websocket_connect(ws_url)
    m = msg("kernel_info_request", {}); await ws.write_message(json.dumps(m))
    got = await collect(ws, m["header"]["msg_id"])
    assert [x["content"]["language_info"]["name"] for x in got if x["msg_type"] == "kernel_info_reply"] == ["python"], got
    assert any(x["msg_type"] == "status" and x["channel"] == "iopub" for x in got), got
    m = msg("execute_request", {"code": "x = 5\nprint('hi', x)", "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
    m.pop("channel")  # no channel: shell
    await ws.write_message(json.dumps(m))
    got = await collect(ws, m["header"]["msg_id"])
    kinds = [(x["channel"], x["msg_type"]) for x in got]
    assert ("iopub", "execute_input") in kinds and ("shell", "execute_reply") in kinds, kinds
    assert [x["content"]["text"] for x in got if x["msg_type"] == "stream"] == ["hi 5\n"], got
    assert all(x["parent_header"]["msg_id"] == m["header"]["msg_id"] for x in got)
    # interrupt over REST while a websocket execution runs
    m = msg("execute_request", {"code": "import time\nprint('go', flush=True)\ntime.sleep(30)", "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
    await ws.write_message(json.dumps(m))
    while True:
        x = json.loads(await ws.read_message())
        if x["msg_type"] == "stream": break
    assert post(f"/api/kernels/{kid}/interrupt")[0] == 204
    got = await collect(ws, m["header"]["msg_id"])
    assert [x["content"]["ename"] for x in got if x["msg_type"] == "error"] == ["KeyboardInterrupt"], got
    assert [x["content"]["status"] for x in got if x["msg_type"] == "execute_reply"] == ["error"], got
    # input
    m = msg("execute_request", {"code": "print('got', input('name? '))", "allow_stdin": True, "silent": False, "store_history": True, "user_expressions": {}, "stop_on_error": True})
    await ws.write_message(json.dumps(m))
    while True:
        x = json.loads(await ws.read_message())
        if x["msg_type"] == "input_request":
            assert x["channel"] == "stdin" and x["content"]["prompt"] == "name? ", x
            break
    await ws.write_message(json.dumps(msg("input_reply", {"value": "bob"}, channel="stdin")))
    got = await collect(ws, m["header"]["msg_id"])
    assert [x["content"]["text"] for x in got if x["msg_type"] == "stream"] == ["got bob\n"], got
    # restart over REST with the websocket open
    assert post(f"/api/kernels/{kid}/restart")[0] == 200
    m = msg("execute_request", {"code": "print('x' in globals())", "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
    await ws.write_message(json.dumps(m))
    got = await collect(ws, m["header"]["msg_id"])
    assert [x["content"]["text"] for x in got if x["msg_type"] == "stream"] == ["False\n"], got
    # malformed frame closes with a reason; the kernel lives on
    await ws.write_message("{not json")
    r = await ws.read_message()
    assert r is None and ws.close_code == 1008 and "not JSON" in ws.close_reason, (r, ws.close_code, ws.close_reason)
    ws2 = await websocket_connect(ws_url)
    await ws2.write_message(json.dumps(msg("x", {}, channel="nope")))
    r = await ws2.read_message()
    assert r is None and ws2.close_code == 1008 and "unknown channel" in ws2.close_reason, (r, ws2.close_reason)
    ws3 = await websocket_connect(ws_url)
    m = msg("execute_request", {"code": "print(1+1)", "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
    await ws3.write_message(json.dumps(m))
    got = await collect(ws3, m["header"]["msg_id"])
    assert [x["content"]["text"] for x in got if x["msg_type"] == "stream"] == ["2\n"], got
    # The v1 binary subprotocol, when the client offers it.
    V1 = "v1.kernel.websocket.jupyter.org"
    wv = await websocket_connect(ws_url, subprotocols=[V1])
    assert wv.selected_subprotocol == V1, wv.selected_subprotocol
    m = msg("execute_request", {"code": "print('v1', 6 * 7)", "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
    await wv.write_message(v1_encode("shell", m), binary=True)
    got = []
    replied = idle = False
    while not (replied and idle):
        raw = await asyncio.wait_for(wv.read_message(), 20)
        assert isinstance(raw, bytes), raw
        d = v1_decode(raw)
        channel, header, parent, content = d["channel"], d["header"], d["parent_header"], d["content"]
        if parent.get("msg_id") != m["header"]["msg_id"]:
            continue
        got.append((channel, header["msg_type"], content))
        replied |= header["msg_type"] == "execute_reply"
        idle |= header["msg_type"] == "status" and content["execution_state"] == "idle"
    assert [c["text"] for _, t, c in got if t == "stream"] == ["v1 42\n"], got
    assert ("shell", "execute_reply") in [(ch, t) for ch, t, _ in got], got
    # A bad offset table closes that connection with a reason.
    bad = bytearray(v1_encode("shell", m))
    bad[16:24] = (10**9).to_bytes(8, "little")
    await wv.write_message(bytes(bad), binary=True)
    r = await wv.read_message()
    assert r is None and wv.close_code == 1008 and "bad v1 frame" in wv.close_reason, (r, wv.close_code, wv.close_reason)
    print("ok", kid)
asyncio.run(main())
