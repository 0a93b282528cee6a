// Acceptance test with the real JupyterLab client library: `@jupyterlab/services`
// from npm, run in Node with `ws`, against a cellblock server.
//
//   node jlab_services.mjs BASE_URL [TOKEN]
//
// Starts a `python3` kernel through KernelManager, checks the websocket
// negotiated the `v1.kernel.websocket.jupyter.org` subprotocol (binary frames),
// that code runs in a cellblock sandbox, that a matplotlib chart arrives as
// `image/png`, that errors come back as errors, that every message carries the
// kernel's session, that the kernel is a cellblock sandbox, and shuts it down.
// Prints one JSON line and exits 0, or says which check failed (deleting the
// kernel) and exits 1. Never runs longer than TIMEOUT_MS.
//
// Node resolves `@jupyterlab/services` and `ws` next to this file, so it is run
// from a directory holding the node_modules that `npm ci` made from
// tests/node/package-lock.json (./scripts/test.sh: target/test-node).

import services from '@jupyterlab/services';
import WebSocket from 'ws';

const { KernelManager, ServerConnection } = services;

const TIMEOUT_MS = 90_000;
const V1 = 'v1.kernel.websocket.jupyter.org';
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

// stdout carries only the summary line: the library's console.debug/log
// chatter ("Starting WebSocket: …") goes to stderr.
console.log = console.debug = console.info = (...args) => console.error(...args);

/** A failed check: `main` stops there. */
class CheckFailed extends Error {}

function check(cond, why) {
  if (!cond) {
    throw new CheckFailed(why);
  }
}

// The kernel started, so a failure can still shut it down.
let kernelId = null;
let failing = false;

/** Says why, deletes the kernel if there is one (best effort), exits 1. */
async function fail(why) {
  if (failing) {
    return;
  }
  failing = true;
  process.stderr.write(`jlab_services: FAILED: ${why}\n`);
  if (kernelId) {
    await fetch(`${BASE.replace(/\/$/, '')}/api/kernels/${kernelId}`, {
      method: 'DELETE',
      headers: TOKEN ? { Authorization: `token ${TOKEN}` } : {},
      signal: AbortSignal.timeout(5000)
    }).catch(() => {});
  }
  process.exit(1);
}

const [BASE, TOKEN = ''] = process.argv.slice(2);
if (!BASE) {
  process.stderr.write('usage: node jlab_services.mjs BASE_URL [TOKEN]\n');
  process.exit(2);
}

// Anything the library throws outside a promise we await (a message that does
// not validate is thrown from the websocket's onmessage) is a failure too.
process.on('uncaughtException', e => fail(`uncaught exception: ${e?.stack ?? e}`));
process.on('unhandledRejection', e => fail(`unhandled rejection: ${e?.stack ?? e}`));
// Not unref'd: should the library stall with nothing left to wait on, this
// timer still keeps the process up to report it instead of exiting quietly.
setTimeout(() => fail(`timed out after ${TIMEOUT_MS / 1000} s`), TIMEOUT_MS);

// What happened on every websocket the library opened.
const sockets = [];

/** The `ws` client, recording the offered and negotiated subprotocols and
 * the kind of each frame received. */
class RecordingWebSocket extends WebSocket {
  constructor(url, protocols, options) {
    super(url, protocols, options);
    const rec = {
      url: String(url).replace(/token=[^&]*/, 'token=…'),
      offered: protocols === undefined ? [] : [].concat(protocols),
      protocol: null,
      binary: 0,
      text: 0,
      closed: null
    };
    sockets.push(rec);
    this.on('open', () => {
      rec.protocol = this.protocol;
    });
    this.on('message', (_data, isBinary) => {
      if (isBinary) {
        rec.binary += 1;
      } else {
        rec.text += 1;
      }
    });
    this.on('close', (code, reason) => {
      rec.closed = { code, reason: reason.toString() };
    });
  }
}

const serverSettings = ServerConnection.makeSettings({
  baseUrl: BASE,
  wsUrl: BASE.replace(/^http/, 'ws'),
  token: TOKEN,
  appendToken: true,
  WebSocket: RecordingWebSocket,
  fetch: globalThis.fetch,
  Request: globalThis.Request,
  Headers: globalThis.Headers
});

/** GET a path of the server as JSON, with the token if there is one. */
async function getJson(path) {
  const headers = TOKEN ? { Authorization: `token ${TOKEN}` } : {};
  const r = await fetch(BASE.replace(/\/$/, '') + path, { headers });
  const body = await r.text();
  check(r.ok, `GET ${path}: ${r.status} ${body}`);
  return JSON.parse(body);
}

/** Runs `code`; returns the iopub messages of the request and its reply. */
async function run(kernel, code) {
  const iopub = [];
  const future = kernel.requestExecute({ code, stop_on_error: false });
  future.onIOPub = msg => {
    iopub.push(msg);
  };
  const reply = await future.done;
  future.dispose();
  check(reply, `no execute_reply for ${JSON.stringify(code)}`);
  return { iopub, reply };
}

const brief = msgs =>
  JSON.stringify(msgs.map(m => [m.header.msg_type, m.content]), null, 0).slice(0, 2000);

async function main() {
  const manager = new KernelManager({ serverSettings, standby: 'never' });
  await manager.ready;

  const kernel = await manager.startNew({ name: 'python3' });
  kernelId = kernel.id;
  // Every message the library received: [msg_type, header.session].
  const received = [];
  kernel.anyMessage.connect((_, { msg, direction }) => {
    if (direction === 'recv') {
      received.push([msg.header.msg_type, msg.header.session]);
    }
  });
  check(/^[0-9a-f-]{36}$/.test(kernelId), `kernel id ${kernelId} is not a UUID`);

  // The connection: kernel_info answered over the negotiated protocol.
  const info = await kernel.info;
  check(kernel.connectionStatus === 'connected', `connection status ${kernel.connectionStatus}`);
  check(info.language_info?.name === 'python', `kernel_info: ${JSON.stringify(info)}`);
  check(sockets.length >= 1, 'the library opened no websocket');
  const ws = sockets[0];
  check(
    ws.offered.includes(V1),
    `the client did not offer ${V1}; offered ${JSON.stringify(ws.offered)}`
  );
  check(ws.protocol === V1, `negotiated subprotocol ${JSON.stringify(ws.protocol)}, want ${V1}`);

  // It is a cellblock sandbox: hostname `sandbox`, cwd /home/user.
  let r = await run(kernel, 'import socket, os; print(socket.gethostname(), os.getcwd())');
  check(r.reply.content.status === 'ok', `hostname cell: ${JSON.stringify(r.reply.content)}`);
  const out = r.iopub
    .filter(m => m.header.msg_type === 'stream' && m.content.name === 'stdout')
    .map(m => m.content.text)
    .join('');
  check(out === 'sandbox /home/user\n', `hostname cell printed ${JSON.stringify(out)}: ${brief(r.iopub)}`);
  check(
    r.iopub.some(m => m.header.msg_type === 'status' && m.content.execution_state === 'idle'),
    `no idle status for the hostname cell: ${brief(r.iopub)}`
  );

  // A chart arrives as display_data with image/png.
  r = await run(kernel, 'import matplotlib.pyplot as plt; plt.plot([1,2,3]); plt.show()');
  check(r.reply.content.status === 'ok', `chart cell: ${JSON.stringify(r.reply.content)}`);
  const pngs = r.iopub
    .filter(m => m.header.msg_type === 'display_data')
    .map(m => m.content.data?.['image/png'])
    .filter(p => p !== undefined);
  check(pngs.length === 1, `want one display_data with image/png, got: ${brief(r.iopub)}`);
  check(typeof pngs[0] === 'string', `image/png is not a base64 string: ${typeof pngs[0]}`);
  const png = Buffer.from(pngs[0], 'base64');
  check(
    png.length > 1000 && png.subarray(0, 8).equals(PNG_SIGNATURE),
    `image/png does not decode to a PNG (${png.length} bytes, starts ${png.subarray(0, 8).toString('hex')})`
  );

  // An exception: error on iopub and an error reply.
  r = await run(kernel, '1/0');
  check(
    r.reply.content.status === 'error' && r.reply.content.ename === 'ZeroDivisionError',
    `1/0 replied ${JSON.stringify(r.reply.content)}`
  );
  check(
    r.iopub.some(m => m.header.msg_type === 'error' && m.content.ename === 'ZeroDivisionError'),
    `no iopub error for 1/0: ${brief(r.iopub)}`
  );

  // The kernel is a cellblock sandbox.
  const listed = await getJson('/v1/sandboxes');
  check(
    (listed.sandboxes ?? []).some(s => s.id === kernelId),
    `kernel ${kernelId} not in /v1/sandboxes: ${JSON.stringify(listed)}`
  );

  // Every message carries the kernel's session (the kernel_info_reply's):
  // KernelConnection takes each message's header.session as the kernel
  // session and drops comm_open/comm_msg whose session differs from it
  // (_assertCurrentMessage), so one reply with another session loses
  // widget messages.
  const session = received.find(([t]) => t === 'kernel_info_reply')?.[1];
  check(session, `no kernel_info_reply among ${JSON.stringify(received.map(([t]) => t))}`);
  const strays = received.filter(([, s]) => s !== session);
  check(
    strays.length === 0,
    `messages without the kernel's session ${JSON.stringify(session)}: ${JSON.stringify(strays)}`
  );

  // Every frame the server sent on the v1 socket was binary.
  check(ws.binary > 0 && ws.text === 0, `frames received: ${ws.binary} binary, ${ws.text} text`);
  check(sockets.length === 1, `the library reconnected: ${JSON.stringify(sockets)}`);

  // Shut down: DELETE /api/kernels/{id}; it is gone from both APIs.
  await kernel.shutdown();
  const kernels = await getJson('/api/kernels');
  check(!kernels.some(k => k.id === kernelId), `kernel still listed after shutdown: ${JSON.stringify(kernels)}`);
  const after = await getJson('/v1/sandboxes');
  check(
    !(after.sandboxes ?? []).some(s => s.id === kernelId),
    `sandbox still listed after shutdown: ${JSON.stringify(after)}`
  );
  manager.dispose();

  return {
    ok: true,
    kernel_id: kernelId,
    offered: ws.offered,
    protocol: ws.protocol,
    messages: received.length,
    binary_frames: ws.binary,
    text_frames: ws.text,
    stdout: out.trim(),
    png_bytes: png.length,
    error: 'ZeroDivisionError'
  };
}

main().then(
  summary => {
    process.stdout.write(JSON.stringify(summary) + '\n');
    process.exit(0);
  },
  e => fail(e instanceof CheckFailed ? e.message : `${e?.stack ?? e}`)
);
