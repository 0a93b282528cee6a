"""Shared by the websocket test clients: the v1.kernel.websocket.jupyter.org
binary framing (a little-endian u64 count of offsets, the offsets, the
channel, then header, parent header, metadata, content and buffers), and
reading a request's messages until it is done."""
import json


def v1_encode(channel, m, buffers=()):
    parts = [json.dumps(m[k]).encode() for k in ("header", "parent_header", "metadata", "content")] + list(buffers)
    offsets = [8 * (1 + 2 + len(parts))]
    offsets.append(offsets[-1] + len(channel))
    for p in parts:
        offsets.append(offsets[-1] + len(p))
    head = len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return head + channel.encode() + b"".join(parts)


def v1_decode(raw):
    n = int.from_bytes(raw[:8], "little")
    offs = [int.from_bytes(raw[8 * (i + 1): 8 * (i + 2)], "little") for i in range(n)]
    parts = [raw[offs[i]: offs[i + 1]] for i in range(n - 1)]
    m = {k: json.loads(p) for k, p in zip(("header", "parent_header", "metadata", "content"), parts[1:5])}
    m["channel"] = parts[0].decode()
    m["msg_type"] = m["header"]["msg_type"]
    m["buffers"] = parts[5:]
    return m


async def gather_until_done(read, parent_id, out=None):
    """Awaits `read()` for messages, keeping in `out` those parented to
    `parent_id`, until its reply and its idle status both came (they arrive
    in either order)."""
    out = [] if out is None else out
    replied = idle = False
    while not (replied and idle):
        m = await read()
        if m["parent_header"].get("msg_id") != parent_id:
            continue
        out.append(m)
        replied |= m["msg_type"].endswith("_reply")
        idle |= m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
    return out
