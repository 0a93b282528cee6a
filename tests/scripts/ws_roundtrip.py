"""Times execute round trips over a Jupyter kernel websocket.

    python ws_roundtrip.py BASE [--token T] [--n 200] [--warmup 20]
                                [--print-n N] [--timeout S] [--deadline S]

Creates a kernel (`POST BASE/api/kernels {"name": "python3"}`), connects
`/api/kernels/{id}/channels` with tornado's websocket client in the legacy
JSON framing (no subprotocol offered), waits until `kernel_info` is answered,
then times, one after another:
- N round trips of `pass`: from writing the `execute_request` until both its
  `execute_reply` and its iopub `status: idle` arrived (either order);
- `--print-n` (default N, 0 to skip) round trips of `print('x')`: until its
  `stream` output added up to "x\\n" (ipykernel may send it in two
  messages), the reply and idle arrived.
Deletes the kernel, then prints one JSON object: n, median_ms, p95_ms, p99_ms,
mean_ms, print_median_ms, and what it saw on the wire (the message sequences
and how often each came, fields that differ from the request or from the
message's own header). The same code drives any server, so two servers'
figures compare fairly. Every wait is bounded (`--timeout` per round trip,
`--deadline` for the whole run), so it never hangs.

`--quickack` sets TCP_QUICKACK on the client's socket before every write and
after every read (Linux; the flag does not stick by itself), so the client
acknowledges the server's frames at once instead of after the delayed-ACK
timer (about 40 ms). A server that leaves Nagle's algorithm on (no
TCP_NODELAY) holds its second and later frames of a round trip until that
ACK; with the flag the figures show the server's own work instead.
"""
import argparse, asyncio, collections, datetime, json, os, signal, socket, statistics, sys, time, urllib.error, urllib.request, uuid
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

KEYS = ("header", "parent_header", "metadata", "content", "buffers", "channel", "msg_id", "msg_type")


class Failed(Exception):
    pass


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base")
    p.add_argument("--token", default=None)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--print-n", type=int, default=None, help="print('x') round trips (default: N; 0 skips)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for one round trip")
    p.add_argument("--deadline", type=float, default=900.0, help="seconds for the whole run")
    p.add_argument("--quickack", action="store_true", help="ACK the server's frames at once (TCP_QUICKACK)")
    a = p.parse_args()
    a.base = a.base.rstrip("/")
    if a.print_n is None:
        a.print_n = a.n
    if a.n < 1:
        p.error("--n must be at least 1")
    return a


def headers(args):
    h = {"Content-Type": "application/json"}
    if args.token:
        h["Authorization"] = f"token {args.token}"
    return h


def http(args, method, path, body=None, timeout=120):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(args.base + path, data=data, method=method, headers=headers(args))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raise Failed(f"{method} {path}: {e.code} {e.read()[:500]!r}") from None
    except OSError as e:  # refused, reset, timed out
        raise Failed(f"{method} {args.base}{path}: {e}") from None


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_date(s):
    try:
        return datetime.datetime.fromisoformat(str(s).replace("Z", "+00:00"))
    except ValueError:
        return s


def request(msg_type, content, session):
    h = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "bench", "session": session,
         "date": now_iso(), "version": "5.3"}
    return {"header": h, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell", "buffers": []}


def execute(code, session):
    return request("execute_request", {"code": code, "silent": False, "store_history": True,
                                       "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}, session)


class Wire:
    """Notes what differs from the protocol or from the request, per kind."""

    def __init__(self):
        self.notes = collections.Counter()
        self.sequences = {}
        self.reply_before_idle = collections.Counter()
        self.kernel_sessions = set()

    def note(self, what):
        self.notes[what] += 1

    def check(self, m, sent):
        kind = f"{m.get('channel', '?')}:{m.get('msg_type', '?')}"
        missing = [k for k in KEYS if k not in m]
        if missing:
            self.note(f"{kind}: missing top-level {', '.join(missing)}")
        h = m.get("header") or {}
        for k in ("msg_id", "msg_type"):
            if k in m and m[k] != h.get(k):
                self.note(f"{kind}: top-level {k} differs from header.{k}")
        for k in ("msg_id", "msg_type", "session", "username", "date", "version"):
            if not h.get(k):
                self.note(f"{kind}: header.{k} missing or empty")
        if h.get("session"):
            self.kernel_sessions.add(h["session"])
        parent = m.get("parent_header") or {}
        for k, v in sent["header"].items():
            if k not in parent:
                self.note(f"{kind}: parent_header.{k} dropped")
            elif k == "date" and parse_date(parent[k]) == parse_date(v):
                continue
            elif parent[k] != v:
                self.note(f"{kind}: parent_header.{k} is not the request's ({v!r} sent, {parent[k]!r} back)"
                          if k == "version" else f"{kind}: parent_header.{k} is not the request's")
        for k in parent:
            if k not in sent["header"]:
                self.note(f"{kind}: parent_header has {k}, which the request had not")

    def sequence(self, label, seq):
        self.sequences.setdefault(label, collections.Counter())[" > ".join(seq)] += 1


QUICKACK = False
LIVE = {}  # the kernel to delete if the deadline strikes


def quickack(ws):
    """Asks the kernel to ACK the next segments at once (with --quickack)."""
    if QUICKACK and ws.protocol is not None and ws.protocol.stream.socket is not None:
        ws.protocol.stream.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


async def send(ws, m):
    try:
        await ws.write_message(json.dumps(m))
    except WebSocketClosedError:
        raise Failed(f"the websocket is closed ({ws.close_code} {ws.close_reason!r})") from None


async def read(ws, deadline):
    left = deadline - time.monotonic()
    if left <= 0:
        raise Failed("timed out")
    try:
        raw = await asyncio.wait_for(ws.read_message(), left)
    except asyncio.TimeoutError:
        raise Failed("timed out") from None
    quickack(ws)
    if raw is None:
        raise Failed(f"the server closed the websocket ({ws.close_code} {ws.close_reason!r})")
    if isinstance(raw, bytes):
        raise Failed(f"a binary frame in the legacy JSON framing ({len(raw)} bytes)")
    return json.loads(raw)


async def round_trip(ws, m, args, wire, label, want_stream=None):
    """Sends `m`; returns seconds until reply + idle (+ the stream) arrived."""
    mid = m["header"]["msg_id"]
    deadline = time.monotonic() + args.timeout
    quickack(ws)
    t0 = time.perf_counter()
    await send(ws, m)
    replied = idle = False
    streamed = want_stream is None
    seq, reply, text = [], None, ""
    try:
        while not (replied and idle and streamed):
            x = await read(ws, deadline)
            if (x.get("parent_header") or {}).get("msg_id") != mid:
                continue
            t, ch = x.get("msg_type"), x.get("channel")
            seq.append(f"{ch}:{t}" + (f"({x['content'].get('execution_state')})" if t == "status" else ""))
            wire.check(x, m)
            if t == "execute_reply":
                if ch != "shell":
                    wire.note(f"execute_reply on {ch}, not shell")
                reply = x["content"]
                replied = True
                if label != "warmup":
                    wire.reply_before_idle[not idle] += 1
            elif t == "status" and x["content"].get("execution_state") == "idle":
                idle = True
            elif t == "stream" and want_stream is not None:
                # ipykernel may split one print() over several messages.
                text += x["content"].get("text", "")
                streamed = text == want_stream
                if not want_stream.startswith(text):
                    wire.note(f"unexpected stream text {text!r}")
    except Failed as e:
        raise Failed(f"{label} {mid}: {e}; saw {seq}") from None
    took = time.perf_counter() - t0
    if reply.get("status") != "ok":
        raise Failed(f"{label}: execute_reply status {reply.get('status')!r}: {reply}")
    wire.sequence(label, seq)
    return took, reply


async def wait_kernel_info(ws, args, session):
    """Asks kernel_info every 2 s until one is answered (at most 60 s)."""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        m = request("kernel_info_request", {}, session)
        await send(ws, m)
        step = min(time.monotonic() + 2, end)
        try:
            while True:
                x = await read(ws, step)
                if (x.get("parent_header") or {}).get("msg_id") == m["header"]["msg_id"] and x.get("msg_type") == "kernel_info_reply":
                    return x["content"]
        except Failed as e:
            if "timed out" not in str(e):
                raise
    raise Failed("no kernel_info_reply within 60 s")


def summary(v):
    ms = sorted(s * 1000.0 for s in v)
    pick = lambda q: ms[round((len(ms) - 1) * q)]
    return {"n": len(ms), "median_ms": statistics.median(ms), "p95_ms": pick(0.95), "p99_ms": pick(0.99),
            "mean_ms": statistics.fmean(ms), "min_ms": ms[0], "max_ms": ms[-1]}


async def run(args):
    session = uuid.uuid4().hex
    server = http(args, "GET", "/api", timeout=30)[1]
    st, k = http(args, "POST", "/api/kernels", {"name": "python3"})
    if st != 201 or "id" not in (k or {}):
        raise Failed(f"creating a kernel: {st} {k}")
    kid = LIVE["kernel"] = k["id"]
    ws = None
    wire = Wire()
    try:
        url = args.base.replace("http", "ws", 1) + f"/api/kernels/{kid}/channels?session_id={session}"
        ws = await asyncio.wait_for(websocket_connect(
            HTTPRequest(url, headers=headers(args), connect_timeout=30, request_timeout=30)), 40)
        info = await wait_kernel_info(ws, args, session)
        for _ in range(args.warmup):
            await round_trip(ws, execute("pass", session), args, wire, "warmup")
        times, counts = [], []
        for _ in range(args.n):
            took, reply = await round_trip(ws, execute("pass", session), args, wire, "pass")
            times.append(took)
            counts.append(reply.get("execution_count"))
        if any(b != a + 1 for a, b in zip(counts, counts[1:]) if isinstance(a, int) and isinstance(b, int)):
            wire.note("execution_count did not go up by one per execute")
        prints = []
        for _ in range(args.print_n):
            took, _ = await round_trip(ws, execute("print('x')", session), args, wire, "print", want_stream="x\n")
            prints.append(took)
    finally:
        if ws is not None:
            ws.close()
        try:
            http(args, "DELETE", f"/api/kernels/{kid}", timeout=60)
            LIVE.pop("kernel", None)
        except Failed as e:
            print(f"ws_roundtrip: deleting kernel {kid}: {e}", file=sys.stderr)
    out = summary(times)
    p = summary(prints) if prints else None
    out.update({
        "warmup": args.warmup,
        "quickack": args.quickack,
        "print_n": len(prints),
        "print_median_ms": p and p["median_ms"],
        "print_p95_ms": p and p["p95_ms"],
        "server": server,
        "kernel": {"implementation": info.get("implementation"),
                   "implementation_version": info.get("implementation_version"),
                   "protocol_version": info.get("protocol_version"),
                   "python": (info.get("language_info") or {}).get("version")},
        "reply_before_idle": wire.reply_before_idle[True],
        "idle_before_reply": wire.reply_before_idle[False],
        "sequences": {k: dict(v.most_common()) for k, v in wire.sequences.items() if k != "warmup"},
        "kernel_header_sessions": len(wire.kernel_sessions),
        "notes": dict(wire.notes.most_common()),
    })
    return out


def main():
    global QUICKACK
    args = parse_args()
    QUICKACK = args.quickack

    def expired(*_):
        print(f"ws_roundtrip: gave up after the {args.deadline:.0f} s deadline", file=sys.stderr)
        if "kernel" in LIVE:
            try:
                http(args, "DELETE", f"/api/kernels/{LIVE['kernel']}", timeout=10)
            except Failed as e:
                print(f"ws_roundtrip: deleting kernel {LIVE['kernel']}: {e}", file=sys.stderr)
        os._exit(3)

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(max(1, int(args.deadline)))
    try:
        out = asyncio.run(run(args))
    except Failed as e:
        print(f"ws_roundtrip: {e}", file=sys.stderr)
        sys.exit(1)
    signal.alarm(0)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
