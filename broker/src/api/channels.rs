//! The Jupyter kernel websocket, `/api/kernels/{id}/channels`, in the legacy
//! JSON framing (`{"header", "parent_header", "metadata", "content",
//! "buffers", "channel", "msg_id", "msg_type"}` per text frame) or the v1
//! binary framing.
//!
//! The client speaks to the kernel as it would to any Jupyter kernel, but
//! through cellblock:
//! - `execute_request` becomes a cellblock execution (the sandbox's FIFO,
//!   limits, timeouts and trace); every raw message of it (iopub,
//!   `input_request`, `execute_reply`) is sent back with the client's own
//!   request as `parent_header`; `input_reply` answers the waiting `input()`;
//! - `interrupt_request` interrupts the running cell; `shutdown_request` is
//!   answered (with `restart: true` the kernel restarts), the kernel is only
//!   shut down through `DELETE /api/kernels/{id}`;
//! - anything else on shell or control is forwarded in order with executions,
//!   and its replies come back re-parented the same way.
//!
//! Tolerated as DESIGN §5 says: no `channel` (shell), a float or missing
//! `date`, `buffers: {}`. A frame that is not JSON, names an unknown channel
//! or is larger than the body limit closes that connection with a reason
//! (close code 1008 or 1009); the kernel and other connections live on.
//! With the `v1.kernel.websocket.jupyter.org` subprotocol (chosen when the
//! client offers it) frames are binary: an offset table, the channel, then
//! the four message parts; every offset is checked before it is used.
//!
//! Binary buffers (ipywidgets, comms) pass both ways: in the v1 framing
//! they are the parts after the content; in the legacy framing a message
//! with buffers is a binary frame in jupyter_server's layout (big-endian u32
//! count and offsets, the JSON message, the buffers).
//!
//! A connection belongs to a session (`?session_id=`): messages that arrive
//! while it is disconnected are kept and replayed when it reconnects; see
//! [`super::kernel_sessions`].

use super::gateway::{kernel, GwError};
use super::kernel_sessions::{Attached, MAX_SESSIONS};
use super::AppState;
use crate::sandbox::execute::ExecuteOptions;
use crate::sandbox::record::{Mirror, Mirrored, State as ExecState};
use crate::sandbox::Sandbox;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message as Ws, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use cellblock_protocol::message::{Channel, Content, Header, Message};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// `GET /api/kernels/{id}/channels?session_id=…`: upgrades to the kernel
/// websocket.
pub async fn channels(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Result<Response, GwError> {
    let sandbox = kernel(&state, &id)?;
    let max = state.manager.config().max_body_bytes;
    // Without a session id there is nothing to reconnect to: a fresh one.
    let session_id = query
        .get("session_id")
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .cloned()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    Ok(ws
        .protocols([V1])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| serve(socket, state, sandbox, session_id)))
}

/// Why a connection is closed.
struct Refusal(u16, String);

fn channel_of(name: Option<&str>) -> Result<Channel, Refusal> {
    Ok(match name.unwrap_or("shell") {
        "shell" => Channel::Shell,
        "control" => Channel::Control,
        "stdin" => Channel::Stdin,
        other => return Err(Refusal(1008, format!("unknown channel {other:?}"))),
    })
}

fn channel_name(c: Channel) -> &'static str {
    match c {
        Channel::Shell => "shell",
        Channel::Control => "control",
        Channel::Stdin => "stdin",
        Channel::Iopub => "iopub",
    }
}

/// The binary subprotocol Jupyter clients offer.
const V1: &str = "v1.kernel.websocket.jupyter.org";

/// A kernel message as a websocket frame, parented to `parent`: legacy JSON
/// text (binary, with jupyter_server's offsets, when it has buffers), or
/// with `v1`, the binary framing.
fn frame(v1: bool, parent: &Value, channel: Channel, msg: &Message) -> Ws {
    if v1 {
        let mut parts = vec![
            serde_json::to_vec(&msg.header).unwrap_or_default(),
            serde_json::to_vec(parent).unwrap_or_default(),
            serde_json::to_vec(&msg.metadata).unwrap_or_default(),
            msg.content.to_json_bytes(),
        ];
        parts.extend(msg.buffers.iter().map(|b| b.to_vec()));
        return Ws::Binary(v1_encode(channel_name(channel), &parts).into());
    }
    let text = json!({
        "header": msg.header,
        "msg_id": msg.header.msg_id,
        "msg_type": msg.header.msg_type,
        "parent_header": parent,
        "metadata": msg.metadata,
        "content": msg.content.to_value(),
        "buffers": [],
        "channel": channel_name(channel),
    })
    .to_string();
    if msg.buffers.is_empty() {
        return Ws::Text(text.into());
    }
    Ws::Binary(legacy_binary_encode(text.as_bytes(), &msg.buffers).into())
}

/// jupyter_server's legacy binary message: a big-endian u32 count of parts,
/// then each part's start (u32, from the frame's start), then the JSON
/// message and its buffers.
fn legacy_binary_encode(json: &[u8], buffers: &[Bytes]) -> Vec<u8> {
    let count = buffers.len() + 1;
    let mut starts = vec![4 * (count + 1)];
    starts.push(starts[0] + json.len());
    for b in &buffers[..buffers.len() - 1] {
        let last = starts[starts.len() - 1];
        starts.push(last + b.len());
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(count as u32).to_be_bytes());
    for s in &starts {
        out.extend_from_slice(&(*s as u32).to_be_bytes());
    }
    out.extend_from_slice(json);
    for b in buffers {
        out.extend_from_slice(b);
    }
    out
}

/// Reads a legacy binary message: the JSON message and its buffers; every
/// offset is checked.
fn legacy_binary_decode(frame: &[u8]) -> Result<Incoming, Refusal> {
    let bad = |why: &str| Refusal(1008, format!("bad binary frame: {why}"));
    let read = |b: &[u8]| u64::from(u32::from_be_bytes(b.try_into().unwrap_or_default()));
    let mut starts = offset_table(frame, 4, read, 1, "the message and at most 1023 buffers")
        .map_err(|why| bad(&why))?;
    starts.push(frame.len());
    let v = serde_json::from_slice(&frame[starts[0]..starts[1]])
        .map_err(|e| bad(&format!("the message is not JSON: {e}")))?;
    let buffers = starts[1..]
        .windows(2)
        .map(|w| Bytes::copy_from_slice(&frame[w[0]..w[1]]))
        .collect();
    Ok(Incoming { v, buffers })
}

/// Reads the offset table at the start of a binary frame: a count, then
/// that many offsets, each `width` bytes (`read` decodes one). The count
/// must be at least `min` (and at most 1024); the first offset must be the
/// table's end, and they must not decrease or pass the frame's end.
fn offset_table(
    frame: &[u8],
    width: usize,
    read: impl Fn(&[u8]) -> u64,
    min: usize,
    needs: &str,
) -> Result<Vec<usize>, String> {
    let word = |i: usize| -> Result<usize, String> {
        let b = frame
            .get(width * i..width * (i + 1))
            .ok_or("truncated offset table")?;
        usize::try_from(read(b)).map_err(|_| "offset out of range".to_owned())
    };
    let count = word(0)?;
    if !(min..=1024).contains(&count) {
        return Err(format!("it needs {needs}"));
    }
    let offsets = (1..=count).map(word).collect::<Result<Vec<_>, _>>()?;
    if offsets[0] != width * (count + 1)
        || offsets.windows(2).any(|w| w[0] > w[1])
        || offsets[count - 1] > frame.len()
    {
        return Err("offsets out of order or past the end".into());
    }
    Ok(offsets)
}

/// A message from the client: the legacy JSON shape and its buffers.
struct Incoming {
    v: Value,
    buffers: Vec<Bytes>,
}

/// The v1 framing: a little-endian u64 count of offsets, the offsets (u64,
/// from the frame's start: the channel's start, then the end of the channel
/// and of each part), the channel name, then header, parent header,
/// metadata, content and buffers.
fn v1_encode(channel: &str, parts: &[Vec<u8>]) -> Vec<u8> {
    let count = parts.len() + 2;
    let mut offsets = Vec::with_capacity(count);
    offsets.push(8 * (count + 1));
    offsets.push(offsets[0] + channel.len());
    for p in parts {
        let last = offsets[offsets.len() - 1];
        offsets.push(last + p.len());
    }
    let mut out = Vec::with_capacity(offsets[count - 1]);
    out.extend_from_slice(&(count as u64).to_le_bytes());
    for o in &offsets {
        out.extend_from_slice(&(*o as u64).to_le_bytes());
    }
    out.extend_from_slice(channel.as_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// Reads a v1 frame into the legacy message shape and its buffers; every
/// offset is checked.
fn v1_decode(frame: &[u8]) -> Result<Incoming, Refusal> {
    let bad = |why: &str| Refusal(1008, format!("bad v1 frame: {why}"));
    let read = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    let offsets = offset_table(frame, 8, read, 6, "a channel and the four message parts")
        .map_err(|why| bad(&why))?;
    let count = offsets.len();
    let part = |i: usize| &frame[offsets[i]..offsets[i + 1]];
    let json = |i: usize, what: &str| -> Result<Value, Refusal> {
        serde_json::from_slice(part(i)).map_err(|e| bad(&format!("{what} is not JSON: {e}")))
    };
    let channel = std::str::from_utf8(part(0)).map_err(|_| bad("the channel is not UTF-8"))?;
    let v = json!({
        "channel": channel,
        "header": json(1, "header")?,
        "parent_header": json(2, "parent_header")?,
        "metadata": json(3, "metadata")?,
        "content": json(4, "content")?,
    });
    let buffers = (5..count - 1)
        .map(|i| Bytes::copy_from_slice(part(i)))
        .collect();
    Ok(Incoming { v, buffers })
}

/// Largest client header kept verbatim as its replies' `parent_header`.
const MAX_TAG_BYTES: usize = 4096;
/// How long a close frame may take to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long one frame may take to reach a client that stopped reading.
const SEND_STALL: Duration = Duration::from_secs(30);

async fn close(socket: &mut WebSocket, code: u16, reason: String) {
    let frame = Ws::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(CLOSE_WAIT, socket.send(frame)).await;
}

/// Sends one message; gives up when the connection is replaced or the
/// client has not taken the frame within [`SEND_STALL`], so a client that
/// stops reading cannot hold its session (and through it the kernel's
/// mirrors) for longer. `Err` carries why the connection ends.
async fn send_bounded(
    socket: &mut WebSocket,
    v1: bool,
    (parent, channel, msg): &Mirrored,
    replaced: &tokio_util::sync::CancellationToken,
) -> Result<(), Option<Refusal>> {
    let send = socket.send(frame(v1, parent, *channel, msg));
    tokio::select! {
        sent = tokio::time::timeout(SEND_STALL, send) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(None),
            Err(_) => Err(Some(Refusal(1008, "the client has not read for 30 s".into()))),
        },
        () = replaced.cancelled() => Err(Some(Refusal(
            1000,
            "replaced by a newer connection with this session_id".into(),
        ))),
    }
}

async fn serve(mut socket: WebSocket, state: AppState, sandbox: Arc<Sandbox>, session_id: String) {
    let v1 = socket
        .protocol()
        .is_some_and(|p| p.as_bytes() == V1.as_bytes());
    let hub = state.kernel_sessions.clone();
    let Some(mut attached) = hub.attach(sandbox.id, &session_id) else {
        let reason = format!("this kernel already has {MAX_SESSIONS} connected sessions");
        close(&mut socket, 1013, reason).await;
        return;
    };
    let connected = sandbox.connected();
    let why = converse(&mut socket, v1, &state, &sandbox, &mut attached).await;
    drop(connected);
    if let Some(Refusal(code, reason)) = why {
        tracing::info!(sandbox_id = %sandbox.id, %reason, "closing a kernel websocket");
        close(&mut socket, code, reason).await;
    }
    hub.detach(sandbox.id, &session_id, attached);
    if sandbox.is_deleted() {
        // Culled or deleted through /v1: nothing to reconnect to.
        hub.forget_kernel(sandbox.id);
    }
}

/// Runs one connection: the backlog first, then messages both ways, until
/// either side ends it. Returns why the server closes it, if it does.
async fn converse(
    socket: &mut WebSocket,
    v1: bool,
    state: &AppState,
    sandbox: &Arc<Sandbox>,
    attached: &mut Attached,
) -> Option<Refusal> {
    let backlog = std::mem::take(&mut attached.backlog);
    let mut backlog = backlog.into_iter();
    while let Some(item) = backlog.next() {
        if let Err(why) = send_bounded(socket, v1, &item, &attached.replaced).await {
            // Not delivered: kept for the next connection.
            attached.backlog = std::iter::once(item).chain(backlog).collect();
            return why;
        }
    }
    let mut deleted = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let parsed = match incoming {
                    Some(Ok(Ws::Text(text))) if !v1 => serde_json::from_str::<Value>(text.as_str())
                        .map(|v| Incoming { v, buffers: Vec::new() })
                        .map_err(|e| Refusal(1008, format!("not JSON: {e}"))),
                    Some(Ok(Ws::Binary(bytes))) if v1 => v1_decode(&bytes),
                    Some(Ok(Ws::Binary(bytes))) => legacy_binary_decode(&bytes),
                    Some(Ok(Ws::Text(_))) => Err(Refusal(1003, "this connection uses the v1 binary framing".into())),
                    Some(Ok(Ws::Close(_))) => {
                        // Sends the close frame tungstenite queued in answer.
                        let flush = futures_util::SinkExt::flush(socket);
                        let _ = tokio::time::timeout(CLOSE_WAIT, flush).await;
                        return None;
                    }
                    None => return None,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => Err(Refusal(1009, e.to_string())),
                };
                let handled = match parsed {
                    Ok(m) => handle(m, state, sandbox, &attached.queue).await,
                    Err(r) => Err(r),
                };
                if let Err(r) = handled {
                    return Some(r);
                }
            }
            Some(item) = attached.rx.recv() => {
                if let Err(why) = send_bounded(socket, v1, &item, &attached.replaced).await {
                    // Not delivered: kept for the next connection.
                    attached.backlog.push(item);
                    return why;
                }
            }
            () = attached.replaced.cancelled() => {
                let why = if sandbox.is_deleted() { "the kernel was shut down" } else { "replaced by a newer connection with this session_id" };
                return Some(Refusal(1000, why.into()));
            }
            _ = deleted.tick() => {
                if sandbox.is_deleted() {
                    return Some(Refusal(1000, "the kernel was shut down".into()));
                }
            }
        }
    }
}

/// Reads the header leniently: a missing `date`, a float `date`, missing
/// optional fields are all fine; `msg_id` and `msg_type` are required.
fn header_of(v: &Value) -> Result<Header, Refusal> {
    let bad = |what: &str| Refusal(1008, format!("the message has no {what}"));
    let msg_id = v["header"]["msg_id"]
        .as_str()
        .or_else(|| v["msg_id"].as_str())
        .ok_or_else(|| bad("header.msg_id"))?;
    let msg_type = v["header"]["msg_type"]
        .as_str()
        .or_else(|| v["msg_type"].as_str())
        .ok_or_else(|| bad("header.msg_type"))?;
    if msg_id.len() > 256 || msg_type.len() > 256 {
        return Err(Refusal(
            1008,
            "msg_id and msg_type are at most 256 bytes".into(),
        ));
    }
    let mut h = Header::new(msg_type, "", "");
    h.msg_id = msg_id.to_owned();
    let short = |key: &str| -> String {
        let s = v["header"][key].as_str().unwrap_or_default();
        s.chars().take(256).collect()
    };
    h.session = short("session");
    h.username = short("username");
    Ok(h)
}

/// A reply the bridge makes itself.
fn reply(msg_type: &str, content: Value) -> Message {
    let content =
        Content::decode(msg_type, content.to_string().as_bytes()).unwrap_or(Content::Unknown {
            msg_type: msg_type.to_owned(),
            content,
        });
    Message::new(content, "", "kernel")
}

async fn handle(
    Incoming { v, buffers }: Incoming,
    state: &AppState,
    sandbox: &Arc<Sandbox>,
    tx: &mpsc::Sender<Mirrored>,
) -> Result<(), Refusal> {
    if !v.is_object() {
        return Err(Refusal(1008, "a message must be a JSON object".into()));
    }
    let channel = channel_of(v["channel"].as_str())?;
    let header = header_of(&v)?;
    // Replies name the client's own header as their parent, verbatim when
    // it is of a sane size (it is copied into every reply and kept in
    // backlogs); otherwise the fields that matter.
    let tag = match &v["header"] {
        h @ Value::Object(o)
            if o.get("msg_id").is_some_and(Value::is_string)
                && serde_json::to_vec(h).map_or(usize::MAX, |b| b.len()) <= MAX_TAG_BYTES =>
        {
            h.clone()
        }
        _ => serde_json::to_value(&header).unwrap_or_default(),
    };
    let content = v.get("content").cloned().unwrap_or_else(|| json!({}));
    let mirror = Mirror {
        tx: tx.clone(),
        tag: tag.clone(),
    };
    // Replies the bridge makes go through the session's queue (drained by
    // its pump, not by this loop); when it is full the reply is dropped
    // rather than queued without bound.
    let answer = |m: Message| {
        if tx.try_send((tag.clone(), channel, m)).is_err() {
            tracing::debug!(sandbox_id = %sandbox.id, "session queue full: a bridge reply dropped");
        }
    };
    match (channel, header.msg_type.as_str()) {
        (Channel::Shell, "execute_request") => {
            let code = content["code"].as_str().unwrap_or_default().to_owned();
            let cfg = state.manager.config();
            let opts = ExecuteOptions {
                code,
                // A Jupyter client sets no timeout: the server's largest.
                timeout: cfg.max_timeout,
                allow_stdin: content["allow_stdin"].as_bool().unwrap_or(false),
                input_timeout: cfg.max_timeout,
                limits: cfg.output_limits,
                mirror: Some(mirror),
                silent: content["silent"].as_bool().unwrap_or(false),
                store_history: content["store_history"].as_bool().unwrap_or(true),
            };
            if let Err(e) = sandbox.submit(opts) {
                let r = json!({"status": "error", "ename": "CellblockError", "evalue": e.to_string(), "traceback": [], "execution_count": null});
                answer(reply("execute_reply", r));
            }
        }
        (Channel::Stdin, "input_reply") => {
            let value = content["value"].as_str().unwrap_or_default().to_owned();
            let waiting = sandbox.records().running();
            if let Some(r) = waiting.filter(|r| r.state() == ExecState::Running) {
                let _ = r.answer(value);
            }
        }
        (_, "interrupt_request") => {
            sandbox.interrupt();
            answer(reply("interrupt_reply", json!({"status": "ok"})));
        }
        (_, "shutdown_request") => {
            let restart = content["restart"].as_bool().unwrap_or(false);
            let r = reply(
                "shutdown_reply",
                json!({"status": "ok", "restart": restart}),
            );
            if !restart {
                answer(r);
                return Ok(());
            }
            // A restart waits for the kernel: it takes one of the sandbox's
            // places for waiting requests; without one it is answered as is.
            let Some(pending) = sandbox.try_pending() else {
                answer(r);
                return Ok(());
            };
            let (s, tx, tag) = (sandbox.clone(), tx.clone(), tag.clone());
            tokio::spawn(async move {
                let _ = s.restart().await;
                drop(pending);
                let _ = tx.try_send((tag, channel, r));
            });
        }
        (Channel::Stdin, _) => {}
        (_, msg_type) => {
            let content = Content::decode(msg_type, content.to_string().as_bytes())
                .map_err(|e| Refusal(1008, format!("bad content for {msg_type}: {e}")))?;
            sandbox.forward_request(channel, content, buffers, mirror);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_frames_round_trip_and_bad_tables_are_refused() {
        let parts = [
            br#"{"msg_id":"a","msg_type":"kernel_info_request"}"#.to_vec(),
            b"{}".to_vec(),
            b"{}".to_vec(),
            b"{}".to_vec(),
        ];
        let f = v1_encode("shell", &parts);
        let v = v1_decode(&f).map_err(|r| r.1).unwrap().v;
        assert_eq!(v["channel"], "shell");
        assert_eq!(v["header"]["msg_type"], "kernel_info_request");
        for bad in [
            vec![],
            f[..20].to_vec(),
            {
                let mut g = f.clone();
                g[0] = 200;
                g
            },
            {
                let mut g = f.clone();
                g[16] = 255; // the channel's end past the frame
                g[17] = 255;
                g
            },
        ] {
            assert!(v1_decode(&bad).is_err());
        }
    }

    #[test]
    fn legacy_binary_frames_round_trip_and_bad_tables_are_refused() {
        let buffers = [Bytes::from_static(b"abc"), Bytes::from_static(b"")];
        let f = legacy_binary_encode(br#"{"channel":"shell"}"#, &buffers);
        let m = legacy_binary_decode(&f).map_err(|r| r.1).unwrap();
        assert_eq!(m.v["channel"], "shell");
        assert_eq!(m.buffers, buffers);
        for bad in [
            vec![],
            vec![0, 0, 0, 0],
            f[..6].to_vec(),
            {
                let mut g = f.clone();
                g[7] = 200; // the message's start past the table's end
                g
            },
            {
                let mut g = f.clone();
                g[8] = 255; // a buffer's start past the frame
                g
            },
        ] {
            assert!(legacy_binary_decode(&bad).is_err());
        }
    }
}
