"""Acceptance: AG2's JupyterCodeExecutor (`autogen.coding.jupyter`, from the
`ag2` package) pointed at cellblock as its Jupyter server runs code blocks
and gets their output; a failing block gives a non-zero exit code. No LLM,
no docker: the executor only talks REST (/api/kernels) and the websocket.

Usage: python ag2_executor.py CELLBLOCK_BASE [CELLBLOCK_TOKEN]
Prints "ok KERNEL_ID" and exits 0 on success; exits non-zero otherwise.
"""
import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

BASE = sys.argv[1].rstrip("/")
TOKEN = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None


def fail(why):
    print(f"FAILED: {why}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)


# A hard limit for the whole run, whatever blocks.
threading.Timer(300, fail, ["timed out after 300s"]).start()

# No LLM is involved: make sure nothing could reach one by accident.
for var in list(os.environ):
    if var.startswith(("OPENAI", "AZURE_OPENAI", "ANTHROPIC", "GEMINI", "GOOGLE_API")):
        del os.environ[var]

# Importing autogen.coding.jupyter probes for `jupyter kernelgateway` (only
# its LocalJupyterServer needs one) and warns when it is missing: quiet that.
import logging  # noqa: E402

logging.getLogger("autogen.coding.jupyter.import_utils").setLevel(logging.ERROR)

from autogen.coding import CodeBlock  # noqa: E402
from autogen.coding.jupyter import JupyterCodeExecutor, JupyterConnectionInfo  # noqa: E402


def sandbox_ids():
    req = urllib.request.Request(BASE + "/v1/sandboxes")
    if TOKEN:
        req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=30) as r:
        v = json.loads(r.read())
    items = v["sandboxes"] if isinstance(v, dict) else v
    return {s["id"] for s in items}


def main():
    url = urllib.parse.urlsplit(BASE)
    if url.scheme not in ("http", "https") or url.path not in ("", "/"):
        fail(f"CELLBLOCK_BASE must be http(s)://host:port, got {BASE}")
    info = JupyterConnectionInfo(host=url.hostname, use_https=url.scheme == "https",
                                 port=url.port, token=TOKEN)
    out_dir = tempfile.mkdtemp(prefix="cb-ag2-")
    executor = JupyterCodeExecutor(info, kernel_name="python3", timeout=60, output_dir=out_dir)
    kid = executor._kernel_id
    try:
        if kid not in sandbox_ids():
            fail(f"kernel {kid} is not among cellblock's sandboxes")

        r = executor.execute_code_blocks([
            CodeBlock(code="import os, socket\nprint('marker', socket.gethostname(), os.getcwd())",
                      language="python"),
            CodeBlock(code="total = sum(i * i for i in range(10))\nprint('total', total)\ntotal + 1",
                      language="python"),
        ])
        if r.exit_code != 0:
            fail(f"exit code {r.exit_code}: {r.output!r}")
        for want in ("marker sandbox /home/user", "total 285", "286"):
            if want not in r.output:
                fail(f"{want!r} not in output {r.output!r}")

        # State carries over between calls; an HTML display is saved to a file.
        r = executor.execute_code_blocks([CodeBlock(
            code="from IPython.display import display, HTML\ndisplay(HTML('<b>%d</b>' % total))",
            language="python")])
        if r.exit_code != 0 or len(r.output_files) != 1:
            fail(f"display: exit code {r.exit_code}, files {r.output_files}, output {r.output!r}")
        with open(r.output_files[0], encoding="utf-8") as f:
            html = f.read()
        if html != "<b>285</b>":
            fail(f"saved HTML is {html!r}")

        r = executor.execute_code_blocks([CodeBlock(code="print('before')\n1 / 0", language="python")])
        if r.exit_code == 0 or "ZeroDivisionError" not in r.output:
            fail(f"failing block: exit code {r.exit_code}, output {r.output!r}")
        r = executor.execute_code_blocks([CodeBlock(code="undefined_name", language="python")])
        if r.exit_code == 0 or "NameError" not in r.output:
            fail(f"failing block: exit code {r.exit_code}, output {r.output!r}")

        # Restart clears the state.
        executor.restart()
        r = executor.execute_code_blocks([CodeBlock(code="print(total)", language="python")])
        if r.exit_code == 0 or "NameError" not in r.output:
            fail(f"after restart: exit code {r.exit_code}, output {r.output!r}")
        r = executor.execute_code_blocks([CodeBlock(code="print('still', 7 * 6)", language="python")])
        if r.exit_code != 0 or "still 42" not in r.output:
            fail(f"after restart: exit code {r.exit_code}, output {r.output!r}")
    finally:
        try:
            executor._jupyter_kernel_client.stop()
            executor.stop()
        except Exception as e:  # reported below through the sandbox check
            print(f"stopping the executor: {type(e).__name__}: {e}", file=sys.stderr)
    deadline = time.monotonic() + 30
    while kid in sandbox_ids():
        if time.monotonic() > deadline:
            fail(f"kernel {kid} is still a cellblock sandbox after the executor stopped")
        time.sleep(0.2)
    print("ok", kid)


try:
    main()
except SystemExit:
    raise
except BaseException as e:  # noqa: BLE001
    import traceback

    traceback.print_exc()
    fail(f"{type(e).__name__}: {e}")
sys.stdout.flush()
os._exit(0)
