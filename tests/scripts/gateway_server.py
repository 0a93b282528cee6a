"""Acceptance: a real `jupyter server --gateway-url=CELLBLOCK_BASE` driven
through its own REST API and kernel websocket. Starts a kernel, executes
(stream and display outputs), interrupts a sleep, restarts (state cleared)
and deletes, checking on cellblock's side that the kernel is a sandbox.

Usage: python gateway_server.py CELLBLOCK_BASE [CELLBLOCK_TOKEN]
Prints "ok KERNEL_ID" and exits 0 on success; exits non-zero otherwise.
"""
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

from tornado.websocket import websocket_connect

CB = sys.argv[1].rstrip("/")
CB_TOKEN = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None
JS_TOKEN = uuid.uuid4().hex
STEP = ["setup"]  # what was being done, for the failure message


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def http(url, method="GET", body=None, token=None, timeout=60):
    """(status, parsed JSON body or None); HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        status = e.code
    try:
        return status, (json.loads(raw) if raw else None)
    except ValueError:
        return status, raw.decode(errors="replace")


def cb_sandbox_ids():
    st, v = http(CB + "/v1/sandboxes", token=CB_TOKEN)
    check(st == 200, f"cellblock GET /v1/sandboxes: {st} {v}")
    items = v["sandboxes"] if isinstance(v, dict) else v
    return {s["id"] for s in items}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def msg(msg_type, content, channel="shell", session="gw-s1"):
    h = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": session,
         "username": "t", "version": "5.3", "date": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())}
    return {"header": h, "parent_header": {}, "metadata": {}, "content": content,
            "channel": channel, "buffers": []}


def execute(code):
    return msg("execute_request", {"code": code, "silent": False, "store_history": True,
                                   "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})


async def read(ws, limit):
    raw = await asyncio.wait_for(ws.read_message(), limit)
    check(raw is not None, f"websocket closed ({ws.close_code} {ws.close_reason})")
    if isinstance(raw, bytes):
        raw = raw.decode()
    return json.loads(raw)


async def collect(ws, parent_id, limit=60):
    """Messages parented to a request until both its reply and idle came."""
    out = []
    replied = idle = False
    deadline = time.monotonic() + limit
    while not (replied and idle):
        left = deadline - time.monotonic()
        check(left > 0, f"no reply+idle for {parent_id} within {limit}s; got {out}")
        m = await read(ws, left)
        if m.get("parent_header", {}).get("msg_id") != parent_id:
            continue
        out.append(m)
        replied |= m["msg_type"].endswith("_reply")
        idle |= m["msg_type"] == "status" and m["content"].get("execution_state") == "idle"
    return out


async def run(ws, code, limit=60):
    m = execute(code)
    await ws.write_message(json.dumps(m))
    return await collect(ws, m["header"]["msg_id"], limit)


def stream_text(got):
    return "".join(x["content"]["text"] for x in got if x["msg_type"] == "stream")


def reply_status(got):
    return [x["content"]["status"] for x in got if x["msg_type"] == "execute_reply"]


def errors(got):
    return [x["content"]["ename"] for x in got if x["msg_type"] == "error"]


async def connect(js, kid):
    url = js.replace("http", "ws", 1) + f"/api/kernels/{kid}/channels?session_id=gw-s1&token={JS_TOKEN}"
    return await asyncio.wait_for(websocket_connect(url), 30)


async def scenario(js):
    # jupyter_server sees the gateway's kernelspecs
    STEP[0] = "kernelspecs"
    st, v = http(js + "/api/kernelspecs", token=JS_TOKEN)
    check(st == 200 and "python3" in v.get("kernelspecs", {}), f"GET /api/kernelspecs: {st} {v}")

    STEP[0] = "start kernel"
    st, k = http(js + "/api/kernels", "POST", {"name": "python3"}, token=JS_TOKEN, timeout=120)
    check(st == 201 and k and "id" in k, f"POST /api/kernels on jupyter server: {st} {k}")
    kid = k["id"]
    check(kid in cb_sandbox_ids(), f"kernel {kid} is not among cellblock's sandboxes")
    st, v = http(js + "/api/kernels", token=JS_TOKEN)
    check(st == 200 and kid in [x["id"] for x in v], f"GET /api/kernels: {st} {v}")

    STEP[0] = "websocket connect"
    ws = await connect(js, kid)

    STEP[0] = "kernel_info"
    m = msg("kernel_info_request", {})
    await ws.write_message(json.dumps(m))
    got = await collect(ws, m["header"]["msg_id"])
    infos = [x["content"] for x in got if x["msg_type"] == "kernel_info_reply"]
    check(len(infos) == 1 and infos[0]["language_info"]["name"] == "python", f"kernel_info: {got}")

    STEP[0] = "execute (stream)"
    got = await run(ws, "import os, socket\nprint(socket.gethostname(), os.getcwd())\nprint(6 * 7)")
    check(reply_status(got) == ["ok"], f"execute_reply: {got}")
    check(stream_text(got) == "sandbox /home/user\n42\n", f"stream output: {stream_text(got)!r} in {got}")
    kinds = {(x.get("channel"), x["msg_type"]) for x in got}
    check(("iopub", "execute_input") in kinds and ("shell", "execute_reply") in kinds, f"channels: {kinds}")

    STEP[0] = "execute (display_data)"
    got = await run(ws, "from IPython.display import display, HTML\ndisplay(HTML('<b>x</b>'))")
    check(reply_status(got) == ["ok"], f"execute_reply: {got}")
    disp = [x["content"]["data"] for x in got if x["msg_type"] == "display_data"]
    check(len(disp) == 1 and disp[0].get("text/html") == "<b>x</b>", f"display_data: {got}")

    STEP[0] = "execute (execute_result)"
    got = await run(ws, "x = 41\nx + 1")
    res = [x["content"]["data"] for x in got if x["msg_type"] == "execute_result"]
    check(res == [{"text/plain": "42"}], f"execute_result: {got}")

    STEP[0] = "execute (matplotlib png)"
    got = await run(ws, "import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
                        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()", limit=120)
    check(reply_status(got) == ["ok"], f"execute_reply: {got}")
    pngs = [x["content"]["data"]["image/png"] for x in got
            if x["msg_type"] == "display_data" and "image/png" in x["content"]["data"]]
    check(len(pngs) == 1 and pngs[0].startswith("iVBORw0KGgo"), f"png display_data: {got}")

    STEP[0] = "interrupt"
    m = execute("import time\nprint('sleeping', flush=True)\ntime.sleep(30)\nprint('woke')")
    await ws.write_message(json.dumps(m))
    pid = m["header"]["msg_id"]
    got = []
    while not any(x["msg_type"] == "stream" for x in got):
        x = await read(ws, 30)
        if x.get("parent_header", {}).get("msg_id") == pid:
            got.append(x)
    t0 = time.monotonic()
    st, v = http(js + f"/api/kernels/{kid}/interrupt", "POST", token=JS_TOKEN)
    check(st == 204, f"POST /api/kernels/{kid}/interrupt on jupyter server: {st} {v}")
    got += await collect(ws, pid, 25)
    check(time.monotonic() - t0 < 20, "interrupt took too long")
    check(errors(got) == ["KeyboardInterrupt"], f"interrupt errors: {got}")
    check(reply_status(got) == ["error"], f"interrupt reply: {got}")
    check("woke" not in stream_text(got), f"sleep was not interrupted: {got}")
    got = await run(ws, "print(x)")
    check(stream_text(got) == "41\n", f"state after interrupt: {got}")

    STEP[0] = "restart"
    st, v = http(js + f"/api/kernels/{kid}/restart", "POST", token=JS_TOKEN, timeout=120)
    check(st == 200 and v and v.get("id") == kid, f"POST /api/kernels/{kid}/restart on jupyter server: {st} {v}")
    # The websocket opened before the restart keeps working.
    got = await run(ws, "print(x)", limit=60)
    check(errors(got) == ["NameError"], f"x survived the restart: {got}")
    got = await run(ws, "import socket\nprint(socket.gethostname())")
    check(stream_text(got) == "sandbox\n", f"after restart: {got}")
    check(kid in cb_sandbox_ids(), f"kernel {kid} gone from cellblock after restart")
    ws.close()

    STEP[0] = "delete"
    st, v = http(js + f"/api/kernels/{kid}", "DELETE", token=JS_TOKEN, timeout=120)
    check(st == 204, f"DELETE /api/kernels/{kid} on jupyter server: {st} {v}")
    deadline = time.monotonic() + 30
    while kid in cb_sandbox_ids():
        check(time.monotonic() < deadline, f"kernel {kid} still a cellblock sandbox after delete")
        time.sleep(0.2)
    st, v = http(js + f"/api/kernels/{kid}", token=JS_TOKEN)
    check(st == 404, f"GET deleted kernel on jupyter server: {st} {v}")
    return kid


def main():
    tmp = tempfile.mkdtemp(prefix="cb-jupyter-server-")
    root = os.path.join(tmp, "root")
    os.makedirs(root)
    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
        env[var] = os.path.join(tmp, sub)
        os.makedirs(env[var])
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    for var in ("JUPYTER_GATEWAY_URL", "JUPYTER_GATEWAY_AUTH_TOKEN", "JUPYTER_TOKEN"):
        env.pop(var, None)
    port = free_port()
    js = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}",
           "--ip=127.0.0.1", "--ServerApp.port_retries=0", "--allow-root", f"--ServerApp.root_dir={root}",
           f"--IdentityProvider.token={JS_TOKEN}", f"--gateway-url={CB}",
           "--GatewayClient.request_timeout=120", "--GatewayClient.connect_timeout=60"]
    if CB_TOKEN:
        cmd.append(f"--GatewayClient.auth_token={CB_TOKEN}")
    log_path = os.path.join(tmp, "jupyter-server.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    code = 1
    try:
        STEP[0] = "jupyter server start"
        deadline = time.monotonic() + 90
        while True:
            check(proc.poll() is None, f"jupyter server exited with {proc.returncode}")
            check(time.monotonic() < deadline, "jupyter server did not become ready in 90s")
            try:
                st, v = http(js + "/api", token=JS_TOKEN, timeout=5)
                if st == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        # Its own auth is on: no token, no kernels.
        st, _ = http(js + "/api/kernels")
        check(st == 403, f"jupyter server answered without its token: {st}")
        kid = asyncio.run(asyncio.wait_for(scenario(js), 480))
        print("ok", kid)
        code = 0
    except Exception as e:  # noqa: BLE001 (reported with the step and the server's log)
        print(f"FAILED at step '{STEP[0]}': {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        if code != 0:
            with open(log_path, "rb") as f:
                sys.stderr.write("---- jupyter server log ----\n")
                sys.stderr.write(f.read().decode(errors="replace")[-20000:])
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
