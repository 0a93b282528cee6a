//! Executions as streams and records: SSE and NDJSON framing, re-attaching
//! after a disconnect, `wait: false`, interrupting and cancelling, `input()`
//! answered over HTTP, nbclient-style collapsing of the final outputs, floods
//! with head+tail caps, slow readers, the bounded queue and its order, every
//! way an execution ends (streams always close with `end`), and request
//! validation.

use cellblock_tests::Server;
use reqwest::header::{CONTENT_TYPE, LOCATION};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const SSE: &str = "text/event-stream";
const NDJSON: &str = "application/x-ndjson";
/// Longest wait for the next chunk of a stream.
const CHUNK_WAIT: Duration = Duration::from_secs(300);
/// Whole-request limit for long streams and floods (the harness's client
/// gives up after 120 s otherwise).
const LONG: Duration = Duration::from_secs(1200);

/// Events of an SSE or NDJSON response, parsed as the bytes arrive.
struct Events {
    resp: reqwest::Response,
    sse: bool,
    buf: Vec<u8>,
    ready: VecDeque<Value>,
    /// How far `buf` has been searched for a separator.
    scanned: usize,
    closed: bool,
}

impl Events {
    fn new(resp: reqwest::Response) -> Self {
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let sse = ct.starts_with(SSE);
        assert!(
            sse || ct.starts_with(NDJSON),
            "not a stream: content-type {ct:?}"
        );
        Self {
            resp,
            sse,
            buf: Vec::new(),
            ready: VecDeque::new(),
            scanned: 0,
            closed: false,
        }
    }

    /// The next event, or None once the server has closed the stream.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(v) = self.ready.pop_front() {
                return Some(v);
            }
            if self.closed {
                return None;
            }
            let chunk = tokio::time::timeout(CHUNK_WAIT, self.resp.chunk())
                .await
                .expect("no stream data within the wait")
                .expect("reading the stream");
            match chunk {
                Some(bytes) => {
                    self.buf.extend_from_slice(&bytes);
                    self.parse();
                }
                None => {
                    self.closed = true;
                    assert!(
                        self.buf.iter().all(u8::is_ascii_whitespace),
                        "the stream ended inside an event: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                }
            }
        }
    }

    /// Events until one satisfies `stop` (included).
    async fn until(&mut self, mut stop: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            let hit = stop(&e);
            out.push(e);
            if hit {
                return out;
            }
        }
        panic!(
            "the stream closed before the awaited event; got {} events, last {:?}",
            out.len(),
            out.last()
        );
    }

    /// Every event until the server closes the stream.
    async fn rest(mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }

    fn parse(&mut self) {
        let sep: &[u8] = if self.sse { b"\n\n" } else { b"\n" };
        let mut start = 0;
        // Bytes before `scanned` hold no separator: a big event arriving in
        // many chunks is not searched again from its beginning each time.
        while let Some(found) = find(&self.buf[self.scanned.max(start)..], sep) {
            let pos = self.scanned.max(start) + found;
            let frame = &self.buf[start..pos];
            let event = if self.sse {
                parse_sse(frame)
            } else if frame.is_empty() {
                None
            } else {
                Some(serde_json::from_slice(frame).unwrap_or_else(|e| {
                    panic!(
                        "an NDJSON line is not JSON ({e}): {:?}",
                        String::from_utf8_lossy(frame)
                    )
                }))
            };
            self.ready.extend(event);
            start = pos + sep.len();
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len().saturating_sub(sep.len() - 1);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One SSE block; None for comments (keep-alives). Checks that `id:` and
/// `event:` agree with the JSON's `seq` and `type`.
fn parse_sse(frame: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(frame).expect("SSE is UTF-8");
    let (mut id, mut kind, mut data) = (None, None, Vec::new());
    for line in text.split('\n') {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => kind = Some(value.to_owned()),
            "data" => data.push(value),
            other => panic!("unexpected SSE field {other:?} in {text:?}"),
        }
    }
    if data.is_empty() {
        assert!(
            id.is_none() && kind.is_none(),
            "an event without data: {text:?}"
        );
        return None;
    }
    let v: Value = serde_json::from_str(&data.join("\n")).expect("SSE data is JSON");
    let id: u64 = id.expect("SSE id").parse().expect("SSE id is a number");
    assert_eq!(Some(id), v["seq"].as_u64(), "id: and seq differ: {text}");
    assert_eq!(
        kind.as_deref(),
        v["type"].as_str(),
        "event: and type differ: {text}"
    );
    Some(v)
}

fn seq(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {e}"))
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The concatenated text of the `kind` (stdout/stderr) events.
fn text(events: &[Value], kind: &str) -> String {
    events
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["text"].as_str().unwrap())
        .collect()
}

/// Checks a stream read from the beginning: `start` first (for `eid`),
/// numbers 1, 2, 3, … with no gap, `files` just before `end`, `end` last.
/// Returns the end result.
fn check_whole(events: &[Value], eid: &str) -> Value {
    assert!(events.len() >= 3, "too few events: {events:?}");
    assert_eq!(events[0]["type"], "start", "{}", events[0]);
    assert_eq!(events[0]["execution_id"], eid, "{}", events[0]);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            seq(e),
            i as u64 + 1,
            "numbers are not contiguous at {i}: {e}"
        );
    }
    let k = kinds(events);
    let n = k.len();
    assert_eq!(k[n - 1], "end", "end is last: {k:?}");
    assert_eq!(k[n - 2], "files", "files comes right before end: {k:?}");
    for (name, count) in [("start", 1), ("files", 1), ("end", 1), ("gap", 0)] {
        assert_eq!(
            k.iter().filter(|t| **t == name).count(),
            count,
            "{name} events: {k:?}"
        );
    }
    let result = events[n - 1]["result"].clone();
    assert_eq!(result["execution_id"], eid, "{result}");
    for f in ["created", "modified", "deleted", "truncated"] {
        assert_eq!(
            events[n - 2][f],
            result["files"][f],
            "files event vs result"
        );
    }
    result
}

/// POSTs an execution with a streaming `Accept`; checks the status and
/// headers and returns the execution id and its events.
async fn submit_stream(s: &Server, id: &str, accept: &str, body: Value) -> (String, Events) {
    let resp = s
        .req(Method::POST, &format!("/v1/sandboxes/{id}/execute"))
        .header("accept", accept)
        .timeout(LONG)
        .json(&body)
        .send()
        .await
        .expect("execute request");
    let status = resp.status().as_u16();
    if status != 200 {
        panic!(
            "execute answered {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    let eid = resp
        .headers()
        .get("x-execution-id")
        .expect("x-execution-id header")
        .to_str()
        .unwrap()
        .to_owned();
    let location = resp.headers().get(LOCATION).expect("Location header");
    assert_eq!(
        location.to_str().unwrap(),
        format!("/v1/sandboxes/{id}/executions/{eid}")
    );
    (eid, Events::new(resp))
}

/// Re-attaches to an execution's events with a streaming `Accept`.
async fn attach(
    s: &Server,
    id: &str,
    eid: &str,
    accept: &str,
    after: Option<u64>,
    last_event_id: Option<u64>,
) -> Events {
    let mut path = format!("/v1/sandboxes/{id}/executions/{eid}");
    if let Some(a) = after {
        path.push_str(&format!("?after={a}"));
    }
    let mut rb = s
        .req(Method::GET, &path)
        .header("accept", accept)
        .timeout(LONG);
    if let Some(l) = last_event_id {
        rb = rb.header("last-event-id", l.to_string());
    }
    let resp = rb.send().await.expect("re-attach request");
    let status = resp.status().as_u16();
    if status != 200 {
        panic!(
            "re-attach answered {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    Events::new(resp)
}

/// Starts a cell that sleeps for two minutes, streamed as SSE, and reads
/// until its code runs.
async fn stream_busy(s: &Server, id: &str) -> (String, Events) {
    let (eid, mut events) = submit_stream(
        s,
        id,
        SSE,
        json!({"code": "import time\nprint('busy', flush=True)\ntime.sleep(120)"}),
    )
    .await;
    events.until(|e| e["type"] == "stdout").await;
    (eid, events)
}

/// Starts a cell that sleeps for a minute and waits until its code runs, so
/// what is submitted next is certainly queued behind it.
async fn start_busy(s: &Server, id: &str) -> String {
    let running = s
        .submit(
            id,
            json!({"code": "import time\nprint('busy', flush=True)\ntime.sleep(60)"}),
        )
        .await;
    s.execution_until(id, &running, Duration::from_secs(60), |v| {
        v["output"]["stdout"] == "busy\n"
    })
    .await;
    running
}

/// The list of a sandbox's executions, with a query string.
async fn list(s: &Server, id: &str, query: &str) -> Vec<Value> {
    let (status, v) = s
        .call(s.req(
            Method::GET,
            &format!("/v1/sandboxes/{id}/executions{query}"),
        ))
        .await;
    assert_eq!(status, 200, "{v}");
    v["executions"].as_array().expect("executions").clone()
}

/// POST …/executions/{eid}/{what} with a body.
async fn post_exec(s: &Server, id: &str, eid: &str, what: &str, body: Value) -> (u16, Value) {
    s.call(
        s.req(
            Method::POST,
            &format!("/v1/sandboxes/{id}/executions/{eid}/{what}"),
        )
        .json(&body),
    )
    .await
}

/// Non-streamed execution with a long whole-request limit.
async fn exec_long(s: &Server, id: &str, body: Value) -> Value {
    let (status, v) = s
        .call(
            s.req(Method::POST, &format!("/v1/sandboxes/{id}/execute"))
                .timeout(LONG)
                .json(&body),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Splits capped text into head, omission marker and tail.
fn split_marker(out: &str) -> (&str, &str, &str) {
    let start = out
        .find("\n[... cellblock omitted")
        .unwrap_or_else(|| panic!("no omission marker in {} bytes", out.len()));
    let end = start + out[start..].find("...]\n").expect("marker end") + "...]\n".len();
    (&out[..start], &out[start..end], &out[end..])
}

fn without(mut v: Value, keys: &[&str]) -> Value {
    for k in keys {
        v.as_object_mut().unwrap().remove(*k);
    }
    v
}

const TWO_PART: &str = "import time\n\
from IPython.display import display, HTML\n\
print('first', flush=True)\n\
time.sleep(3)\n\
print('second')\n\
display(HTML('<b>done</b>'))";

/// A two-part cell streamed with `accept`: checked while it runs, then its
/// framing, then its end result against the same cell run without streaming.
async fn stream_matches_json(accept: &str) {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let (eid, mut events) = submit_stream(&s, &id, accept, json!({"code": TWO_PART})).await;

    let mut seen = events.until(|e| e["type"] == "stdout").await;
    // The first line is out while the cell still sleeps: it was streamed.
    let v = s.execution(&id, &eid).await;
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["output"]["stdout"], "first\n", "output so far: {v}");
    assert!(v["result"].is_null(), "{v}");
    assert_eq!(seen.last().unwrap()["text"], "first\n");

    seen.extend(events.rest().await);
    let result = check_whole(&seen, &eid);
    assert_eq!(text(&seen, "stdout"), "first\nsecond\n");
    let displays: Vec<&Value> = seen
        .iter()
        .filter(|e| e["type"] == "display_data")
        .collect();
    assert_eq!(displays.len(), 1, "{:?}", kinds(&seen));
    assert_eq!(displays[0]["data"]["text/html"], "<b>done</b>");
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["stdout"], "first\nsecond\n", "{result}");
    assert_eq!(result["outputs"][0]["data"]["text/html"], "<b>done</b>");

    // The record keeps the same result.
    let v = s.execution(&id, &eid).await;
    assert_eq!(v["state"], "finished", "{v}");
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["result"], result, "the stored result is the streamed one");

    // The same cell without streaming gives the same result.
    let plain = s.exec(&id, TWO_PART).await;
    assert_ne!(plain["execution_id"], result["execution_id"]);
    let ignore = ["execution_id", "execution_count", "duration_ms"];
    assert_eq!(
        without(result.clone(), &ignore),
        without(plain.clone(), &ignore),
        "streamed and plain results differ"
    );
    assert_eq!(
        plain["execution_count"].as_i64().unwrap(),
        result["execution_count"].as_i64().unwrap() + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_live_and_ends_with_the_json_result() {
    stream_matches_json(SSE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_streams_live_and_ends_with_the_json_result() {
    stream_matches_json(NDJSON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_client_re_attaches_without_loss_or_duplicates() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let code = "import time\nfor i in range(60):\n    print(i, flush=True)\n    time.sleep(0.05)";
    let (eid, mut events) = submit_stream(&s, &id, NDJSON, json!({"code": code})).await;
    let first = events.until(|e| seq(e) >= 10).await;
    drop(events); // disconnect mid-execution

    // Re-attach over NDJSON after the last number seen, read a little, drop again.
    let last = seq(first.last().unwrap());
    let mut events = attach(&s, &id, &eid, NDJSON, Some(last), None).await;
    let second = events
        .until(|e| seq(e) >= last + 10 || e["type"] == "end")
        .await;
    drop(events);
    let done_early = second.last().unwrap()["type"] == "end";

    // And once more over SSE with Last-Event-ID, to the end.
    let last = seq(second.last().unwrap());
    let third = if done_early {
        Vec::new()
    } else {
        attach(&s, &id, &eid, SSE, None, Some(last))
            .await
            .rest()
            .await
    };
    assert!(
        second
            .first()
            .is_some_and(|e| seq(e) == seq(first.last().unwrap()) + 1),
        "the first re-attach starts right after the last event seen"
    );

    let all: Vec<Value> = first.into_iter().chain(second).chain(third).collect();
    let result = check_whole(&all, &eid);
    let want: String = (0..60).map(|i| format!("{i}\n")).collect();
    assert_eq!(text(&all, "stdout"), want);
    assert_eq!(result["stdout"], want.as_str(), "{result}");
    assert_eq!(result["status"], "ok", "{result}");

    // A replay from the start after the end gives the very same events.
    let replay = attach(&s, &id, &eid, SSE, Some(0), None).await.rest().await;
    assert_eq!(replay, all, "a replay differs from what was streamed");
    // Last-Event-ID alone resumes too, and after the end only `end` remains.
    let end_seq = seq(all.last().unwrap());
    let tail = attach(&s, &id, &eid, SSE, None, Some(end_seq - 1))
        .await
        .rest()
        .await;
    assert_eq!(kinds(&tail), ["end"]);
    assert_eq!(tail[0]["result"], result);
    // After the end nothing follows: 204, so an EventSource stops reconnecting.
    for accept in [NDJSON, SSE] {
        let resp = s
            .req(
                Method::GET,
                &format!("/v1/sandboxes/{id}/executions/{eid}?after={end_seq}"),
            )
            .header("accept", accept)
            .send()
            .await
            .expect("re-attach after the end");
        assert_eq!(resp.status().as_u16(), 204, "{accept}");
        assert!(resp.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_false_answers_202_and_the_result_is_polled() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let resp = s
        .req(Method::POST, &format!("/v1/sandboxes/{id}/execute"))
        .json(&json!({"code": "import time\ntime.sleep(1)\nprint('later')\n6 * 7", "wait": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let location = resp.headers()[LOCATION].to_str().unwrap().to_owned();
    let header_eid = resp.headers()["x-execution-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let v: Value = resp.json().await.unwrap();
    let eid = v["execution_id"].as_str().unwrap().to_owned();
    assert_eq!(eid, header_eid);
    assert_eq!(location, format!("/v1/sandboxes/{id}/executions/{eid}"));
    assert!(
        ["queued", "running"].contains(&v["state"].as_str().unwrap()),
        "{v}"
    );
    assert!(v["result"].is_null(), "{v}");

    let (status, polled) = s.call(s.req(Method::GET, &location)).await;
    assert_eq!(status, 200, "{polled}");
    assert_eq!(polled["execution_id"], eid.as_str());
    let v = s
        .execution_until(&id, &eid, Duration::from_secs(60), |v| {
            v["state"] == "finished"
        })
        .await;
    assert_eq!(v["status"], "ok", "{v}");
    assert!(
        v["code"].as_str().unwrap().contains("print('later')"),
        "{v}"
    );
    let r = &v["result"];
    assert_eq!(r["execution_id"], eid.as_str());
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["stdout"], "later\n", "{r}");
    assert_eq!(r["outputs"][0]["type"], "execute_result", "{r}");
    assert_eq!(r["outputs"][0]["data"]["text/plain"], "42", "{r}");
    assert_eq!(v["execution_count"], r["execution_count"]);
    assert!(
        v["finished_at"].is_string() && v["started_at"].is_string(),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupting_an_execution_keeps_the_kernel_state() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let eid = s
        .submit(
            &id,
            json!({"code": "import time\nx = 41\nprint('ready', flush=True)\ntime.sleep(60)"}),
        )
        .await;
    let mut events = attach(&s, &id, &eid, NDJSON, Some(0), None).await;
    let mut seen = events
        .until(|e| e["type"] == "stdout" && e["text"] == "ready\n")
        .await;
    let (status, v) = post_exec(&s, &id, &eid, "interrupt", json!({})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["execution_id"], eid.as_str());
    assert_eq!(v["cancelled"], false, "{v}");
    assert_eq!(v["interrupted"], true, "{v}");
    seen.extend(events.rest().await);
    let r = check_whole(&seen, &eid);
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["error"]["ename"], "KeyboardInterrupt", "{r}");
    assert_eq!(r["state_lost"], false, "{r}");
    assert_eq!(r["kernel_restarted"], false, "{r}");
    assert!(
        r["duration_ms"].as_u64().unwrap() < 50_000,
        "it did not sleep on: {r}"
    );
    assert!(
        seen.iter().any(|e| e["type"] == "error"),
        "{:?}",
        kinds(&seen)
    );
    let r = s.exec(&id, "print(x + 1)").await;
    assert_eq!(r["stdout"], "42\n", "{r}");

    // The sandbox-level interrupt reaches the running cell too.
    let (eid, mut events) = submit_stream(
        &s,
        &id,
        SSE,
        json!({"code": "import time\nprint('again', flush=True)\ntime.sleep(60)"}),
    )
    .await;
    events.until(|e| e["type"] == "stdout").await;
    let (status, v) = s
        .call(s.req(Method::POST, &format!("/v1/sandboxes/{id}/interrupt")))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["interrupted"], true, "{v}");
    assert_eq!(v["execution_id"], eid.as_str(), "{v}");
    let rest = events.rest().await;
    let r = &rest.last().unwrap()["result"];
    assert_eq!(r["error"]["ename"], "KeyboardInterrupt", "{r}");
    assert_eq!(r["state_lost"], false, "{r}");
    let r = s.exec(&id, "print(x)").await;
    assert_eq!(r["stdout"], "41\n", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_execution_is_cancelled_and_never_runs() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let running = start_busy(&s, &id).await;
    let queued = s
        .submit(
            &id,
            json!({"code": "ran = True\nopen('ran.txt', 'w').write('yes')\nprint('ran')"}),
        )
        .await;
    let v = s.execution(&id, &queued).await;
    assert_eq!(v["state"], "queued", "{v}");
    assert!(v["started_at"].is_null(), "{v}");

    let (status, v) = post_exec(&s, &id, &queued, "interrupt", json!({})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["cancelled"], true, "{v}");
    assert_eq!(v["interrupted"], false, "{v}");
    let v = s
        .execution_until(&id, &queued, Duration::from_secs(30), |v| {
            v["state"] == "finished"
        })
        .await;
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(v["result"]["status"], "cancelled", "{v}");
    assert!(v["started_at"].is_null(), "it never started: {v}");
    assert!(v["result"]["execution_count"].is_null(), "{v}");
    // Its events: no start, just the end.
    let events = attach(&s, &id, &queued, NDJSON, None, None)
        .await
        .rest()
        .await;
    assert_eq!(kinds(&events), ["end"], "{events:?}");
    assert_eq!(events[0]["result"]["status"], "cancelled");
    // The running cell was not disturbed by the cancel.
    assert_eq!(s.execution(&id, &running).await["state"], "running");

    // End the running one; the cancelled one still has not run.
    let (status, v) = post_exec(&s, &id, &running, "interrupt", json!({})).await;
    assert_eq!((status, &v["interrupted"]), (200, &json!(true)), "{v}");
    let v = s
        .execution_until(&id, &running, Duration::from_secs(30), |v| {
            v["state"] == "finished"
        })
        .await;
    assert_eq!(v["result"]["error"]["ename"], "KeyboardInterrupt", "{v}");
    let r = s
        .exec(
            &id,
            "import os\nprint('ran' in globals(), os.path.exists('ran.txt'))",
        )
        .await;
    assert_eq!(r["stdout"], "False False\n", "the cancelled cell ran: {r}");

    // Interrupting a finished execution (either kind) is a conflict.
    for eid in [&running, &queued] {
        let (status, v) = post_exec(&s, &id, eid, "interrupt", json!({})).await;
        assert_eq!(status, 409, "{v}");
        assert_eq!(v["error"]["code"], "execution_finished", "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_is_answered_over_http() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    // The pause keeps the second prompt away while a stray answer is tried.
    let code = "name = input('Name? ')\n\
                import getpass, time\n\
                time.sleep(2)\n\
                pw = getpass.getpass('Password: ')\n\
                print('got', name, pw)";
    let (eid, mut events) = submit_stream(&s, &id, SSE, json!({"code": code})).await;
    let mut seen = events.until(|e| e["type"] == "input_request").await;
    let req = seen.last().unwrap().clone();
    assert_eq!(req["prompt"], "Name? ", "{req}");
    assert_eq!(req["password"], false, "{req}");
    let v = s.execution(&id, &eid).await;
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["input_request"]["prompt"], "Name? ", "{v}");
    let (status, v) = post_exec(&s, &id, &eid, "input", json!({"value": "Ada"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["accepted"], true, "{v}");
    // One answer per request: a second one before the next prompt is refused.
    let (status, v) = post_exec(&s, &id, &eid, "input", json!({"value": "again"})).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "not_waiting_for_input", "{v}");

    seen.extend(events.until(|e| e["type"] == "input_request").await);
    let req = seen.last().unwrap().clone();
    assert_eq!(req["prompt"], "Password: ", "{req}");
    assert_eq!(req["password"], true, "{req}");
    let (status, v) = post_exec(&s, &id, &eid, "input", json!({"value": "s3cret"})).await;
    assert_eq!(status, 200, "{v}");
    seen.extend(events.rest().await);
    let r = check_whole(&seen, &eid);
    assert_eq!(r["status"], "ok", "{r}");
    assert!(
        r["stdout"].as_str().unwrap().contains("got Ada s3cret\n"),
        "{r}"
    );
    assert_eq!(s.execution(&id, &eid).await["input_request"], Value::Null);

    // Answering a finished execution is a conflict.
    let (status, v) = post_exec(&s, &id, &eid, "input", json!({"value": "late"})).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "not_waiting_for_input", "{v}");

    // Nobody answers: the input() is ended and the kernel keeps its state.
    s.exec(&id, "kept = 7").await;
    let r = s
        .exec_with(
            &id,
            json!({"code": "v = input('? ')\nprint('not reached')", "input_timeout_s": 1}),
        )
        .await;
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["error"]["ename"], "InputTimeout", "{r}");
    assert_eq!(r["state_lost"], false, "{r}");
    assert_eq!(r["stdout"], "", "{r}");
    let r = s.exec(&id, "print(kept, name)").await;
    assert_eq!(r["stdout"], "7 Ada\n", "{r}");

    // Without stdin, input() raises at once and nothing is asked.
    let (eid, events) = submit_stream(
        &s,
        &id,
        NDJSON,
        json!({"code": "input('never asked')", "allow_stdin": false}),
    )
    .await;
    let events = events.rest().await;
    let r = check_whole(&events, &eid);
    assert!(
        !kinds(&events).contains(&"input_request"),
        "{:?}",
        kinds(&events)
    );
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["error"]["ename"], "StdinNotImplementedError", "{r}");
    assert!(
        r["duration_ms"].as_u64().unwrap() < 10_000,
        "it waited: {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_updates_collapse_to_their_final_state() {
    let s = Server::start();
    let id = s.create(json!({})).await;

    // 300 updates of one display: one output with the last value.
    let code = "from IPython.display import display\n\
                h = display('v0', display_id=True)\n\
                for i in range(1, 301):\n    h.update(f'v{i}')";
    let (eid, events) = submit_stream(&s, &id, NDJSON, json!({"code": code})).await;
    let events = events.rest().await;
    let r = check_whole(&events, &eid);
    let updates: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "update_display_data")
        .collect();
    assert_eq!(updates.len(), 300, "every update is streamed");
    assert_eq!(updates[299]["data"]["text/plain"], "'v300'");
    let display_id = updates[0]["display_id"].as_str().expect("display_id");
    assert!(updates.iter().all(|u| u["display_id"] == display_id));
    let outs = r["outputs"].as_array().unwrap();
    assert_eq!(outs.len(), 1, "{r}");
    assert_eq!(outs[0]["data"]["text/plain"], "'v300'", "{r}");
    assert_eq!(outs[0]["display_id"], display_id, "{r}");

    // clear_output(wait=True) before each print: only the last line is left.
    let code = "from IPython.display import clear_output\n\
                for i in range(100):\n    clear_output(wait=True)\n    print(f'step {i}', flush=True)";
    let (eid, events) = submit_stream(&s, &id, NDJSON, json!({"code": code})).await;
    let events = events.rest().await;
    let r = check_whole(&events, &eid);
    let clears = events
        .iter()
        .filter(|e| e["type"] == "clear_output")
        .inspect(|e| assert_eq!(e["wait"], true, "{e}"))
        .count();
    assert_eq!(clears, 100);
    assert!(text(&events, "stdout").contains("step 0\n"));
    assert_eq!(r["stdout"], "step 99\n", "{r}");
    assert_eq!(r["truncated"], false, "{r}");

    // A tqdm bar ends as one line at 100%.
    let code = "from tqdm import tqdm\nimport time\n\
                for i in tqdm(range(200), mininterval=0, miniters=1):\n    time.sleep(0.002)";
    let (eid, events) = submit_stream(&s, &id, NDJSON, json!({"code": code})).await;
    let events = events.rest().await;
    let r = check_whole(&events, &eid);
    assert_eq!(r["status"], "ok", "{r}");
    let streamed = text(&events, "stderr");
    assert!(
        streamed.matches('\r').count() >= 20,
        "the bar was redrawn many times: {streamed:?}"
    );
    let stderr = r["stderr"].as_str().unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr:?}");
    assert!(
        lines[0].contains("100%") && lines[0].contains("200/200"),
        "{stderr:?}"
    );
    assert!(!lines[0].contains('\r'), "{stderr:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_lines_arrive_whole_streamed_or_not() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let code = "for i in range(100000):\n    print(i, flush=True)";
    let want: String = (0..100_000).map(|i| format!("{i}\n")).collect();

    let r = exec_long(&s, &id, json!({"code": code, "timeout_s": 600})).await;
    assert_eq!(r["status"], "ok", "{}", r["error"]);
    assert_eq!(r["truncated"], false);
    let out = r["stdout"].as_str().unwrap();
    assert!(
        out == want,
        "non-streamed: lost or reordered output: {} bytes of {}",
        out.len(),
        want.len()
    );

    let (eid, events) = submit_stream(&s, &id, SSE, json!({"code": code, "timeout_s": 600})).await;
    let events = events.rest().await;
    let r = check_whole(&events, &eid); // also: no gap, contiguous numbers
    assert_eq!(r["status"], "ok", "{}", r["error"]);
    let streamed = text(&events, "stdout");
    assert!(
        streamed == want,
        "streamed: lost or reordered output: {} bytes of {}",
        streamed.len(),
        want.len()
    );
    assert!(r["stdout"] == want.as_str(), "streamed end result differs");
}

fn vm_hwm_kb(pid: i32) -> u64 {
    let kib = cellblock_tests::proc_status_kib(pid, "VmHWM");
    assert!(kib > 0, "no VmHWM for the broker");
    kib
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_flood_keeps_head_and_tail_in_bounded_memory() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    s.exec(&id, "print('warm')").await;
    let before = vm_hwm_kb(s.pid());
    let started = Instant::now();
    let code =
        "s = 'x' * 999\nprint('HEAD')\nfor i in range(1_000_000):\n    print(s)\nprint('TAIL')";
    let r = exec_long(&s, &id, json!({"code": code, "timeout_s": 900})).await;
    let after = vm_hwm_kb(s.pid());
    eprintln!(
        "1 GB flood: {:.1} s, broker VmHWM {} -> {} MiB",
        started.elapsed().as_secs_f64(),
        before / 1024,
        after / 1024
    );
    assert_eq!(r["status"], "ok", "{}", r["error"]);
    assert_eq!(r["truncated"], true);
    let out = r["stdout"].as_str().unwrap();
    assert!(out.len() <= 8 << 20, "{} bytes kept", out.len());
    let (head, marker, tail) = split_marker(out);
    assert!(
        head.starts_with("HEAD\nxxxx"),
        "head: {:?}",
        &head[..head.len().min(20)]
    );
    assert!(
        tail.ends_with("xxx\nTAIL\n"),
        "tail: {:?}",
        &tail[tail.len().saturating_sub(20)..]
    );
    assert!(
        head.len() > 3 << 20 && tail.len() > 3 << 20,
        "head {} tail {}",
        head.len(),
        tail.len()
    );
    let dropped = r["dropped"]["stdout_bytes"].as_u64().unwrap();
    let total = "HEAD\n".len() + 1_000_000 * 1000 + "TAIL\n".len();
    assert_eq!(
        dropped + (head.len() + tail.len()) as u64,
        total as u64,
        "kept + dropped must be all that was printed ({marker:?})"
    );
    assert!(marker.contains(&dropped.to_string()), "{marker:?}");
    assert!(
        after.saturating_sub(before) < 100 * 1024,
        "the broker grew by {} MiB",
        (after - before) / 1024
    );
    let r = s.exec(&id, "print(1)").await;
    assert_eq!(r["stdout"], "1\n", "{r}");
    assert_eq!(r["truncated"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_the_list_shows_it() {
    let s = Server::start_with(&["--max-queue", "1"]);
    let id = s.create(json!({})).await;
    let running = start_busy(&s, &id).await;
    let queued = s.submit(&id, json!({"code": "print('b')"})).await;
    let path = format!("/v1/sandboxes/{id}/execute");
    for (accept, body) in [
        ("application/json", json!({"code": "print('c')"})),
        (
            "application/json",
            json!({"code": "print('c')", "wait": false}),
        ),
        (SSE, json!({"code": "print('c')"})),
        (NDJSON, json!({"code": "print('c')"})),
    ] {
        let (status, v) = s
            .call(
                s.req(Method::POST, &path)
                    .header("accept", accept)
                    .json(&body),
            )
            .await;
        assert_eq!(status, 429, "{accept} {body}: {v}");
        assert_eq!(v["error"]["code"], "queue_full", "{v}");
    }

    let all = list(&s, &id, "").await;
    assert_eq!(all.len(), 2, "the refused ones leave no record: {all:?}");
    assert_eq!(all[0]["execution_id"], running.as_str());
    assert_eq!(all[0]["state"], "running", "{all:?}");
    assert!(all[0]["code"].as_str().unwrap().contains("time.sleep(60)"));
    assert_eq!(all[1]["execution_id"], queued.as_str());
    assert_eq!(all[1]["state"], "queued", "{all:?}");
    assert!(all[1]["status"].is_null(), "{}", all[1]);
    for e in &all {
        assert!(e["created_at"].is_string(), "{e}");
        assert!(e.get("result").is_none(), "lists carry no results: {e}");
    }
    let q = list(&s, &id, "?state=queued").await;
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["execution_id"], queued.as_str());
    let r = list(&s, &id, "?state=running").await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["execution_id"], running.as_str());
    assert!(list(&s, &id, "?state=finished").await.is_empty());
    let newest = list(&s, &id, "?limit=1").await;
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0]["execution_id"], queued.as_str());

    // Once the running one ends, the queued one runs and there is room again.
    let (status, _) = post_exec(&s, &id, &running, "interrupt", json!({})).await;
    assert_eq!(status, 200);
    let v = s
        .execution_until(&id, &queued, Duration::from_secs(60), |v| {
            v["state"] == "finished"
        })
        .await;
    assert_eq!(v["result"]["stdout"], "b\n", "{v}");
    let r = s.exec(&id, "print('c')").await;
    assert_eq!(r["stdout"], "c\n", "{r}");
    let f = list(&s, &id, "?state=finished").await;
    assert_eq!(f.len(), 3, "{f:?}");
    assert!(f.iter().all(|e| e["finished_at"].is_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_execution_requests_are_refused_clearly() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let eid = s.exec(&id, "print(1)").await["execution_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = format!("/v1/sandboxes/{id}/executions");

    let unknown = uuid::Uuid::new_v4().to_string();
    for e in [unknown.as_str(), "not-a-uuid"] {
        let (status, v) = s.call(s.req(Method::GET, &format!("{base}/{e}"))).await;
        assert_eq!(status, 404, "{e}: {v}");
        assert_eq!(v["error"]["code"], "execution_not_found", "{v}");
        for what in ["interrupt", "input"] {
            let (status, v) = post_exec(&s, &id, e, what, json!({"value": "x"})).await;
            assert_eq!(status, 404, "{what} {e}: {v}");
            assert_eq!(v["error"]["code"], "execution_not_found", "{v}");
        }
    }
    // An execution id of another sandbox is not found here.
    let other = s.create(json!({})).await;
    let (status, v) = s
        .call(s.req(
            Method::GET,
            &format!("/v1/sandboxes/{other}/executions/{eid}"),
        ))
        .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"]["code"], "execution_not_found", "{v}");

    let (status, v) = s
        .call(
            s.req(Method::GET, &format!("{base}/{eid}?after=abc"))
                .header("accept", NDJSON),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_query", "{v}");
    let (status, v) = s
        .call(
            s.req(Method::GET, &format!("{base}/{eid}"))
                .header("accept", SSE)
                .header("last-event-id", "abc"),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_header", "{v}");
    let (status, v) = s
        .call(s.req(Method::GET, &format!("{base}?state=bogus")))
        .await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = s
        .call(s.req(Method::GET, &format!("{base}?limit=-1")))
        .await;
    assert_eq!(status, 400, "{v}");

    let exec_path = format!("/v1/sandboxes/{id}/execute");
    for body in [
        json!({"code": "1", "output_limits": {"stdout_bytes": 0}}),
        json!({"code": "1", "output_limits": {"stdout_bytes": 8 * 1024 * 1024 + 1}}),
        json!({"code": "1", "output_limits": {"stderr_bytes": 0}}),
        json!({"code": "1", "output_limits": {"outputs": 1001}}),
        json!({"code": "1", "output_limits": {"rich_bytes": 64 * 1024 * 1024 + 1}}),
        json!({"code": "1", "output_limits": {"stdout_kb": 10}}),
        json!({"code": "1", "stream": true}),
        json!({"code": "1", "input_timeout_s": 0}),
        json!({"code": "1", "wait": "no"}),
        json!({"timeout_s": 1}),
    ] {
        let (status, v) = s.call(s.req(Method::POST, &exec_path).json(&body)).await;
        assert_eq!(status, 422, "{body}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{body}: {v}");
    }
    // Limits at the maximum are fine.
    let r = s
        .exec_with(
            &id,
            json!({"code": "print(2)", "output_limits": {"stdout_bytes": 8 * 1024 * 1024, "outputs": 1000}}),
        )
        .await;
    assert_eq!(r["stdout"], "2\n", "{r}");

    for body in [
        json!({}),
        json!({"value": 5}),
        json!({"value": "x", "extra": 1}),
    ] {
        let (status, v) = post_exec(&s, &id, &eid, "input", body.clone()).await;
        assert_eq!(status, 422, "{body}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{body}: {v}");
    }
    // No refused request left a record behind.
    assert_eq!(list(&s, &id, "").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_output_limits_keep_head_and_tail() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    // 500 lines of 10 bytes on each stream; only stdout is limited.
    let code = "import sys\n\
                for i in range(500):\n    print(f'L{i:08d}')\n    print(f'E{i:08d}', file=sys.stderr)";
    let r = s
        .exec_with(
            &id,
            json!({"code": code, "output_limits": {"stdout_bytes": 1000}}),
        )
        .await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["truncated"], true, "{r}");
    let out = r["stdout"].as_str().unwrap();
    assert!(out.len() <= 1000, "{} bytes", out.len());
    let (head, marker, tail) = split_marker(out);
    assert!(head.starts_with("L00000000\nL00000001\n"), "{out}");
    assert!(tail.ends_with("L00000498\nL00000499\n"), "{out}");
    assert!(marker.contains("omitted"), "{marker}");
    let dropped = r["dropped"]["stdout_bytes"].as_u64().unwrap();
    assert_eq!(dropped + (head.len() + tail.len()) as u64, 5000, "{r}");
    assert_eq!(r["dropped"]["stderr_bytes"], 0, "{r}");
    let want_err: String = (0..500).map(|i| format!("E{i:08}\n")).collect();
    assert_eq!(
        r["stderr"],
        want_err.as_str(),
        "stderr keeps the server's cap"
    );

    // The next execution has the server's limits again.
    let r = s
        .exec(&id, "for i in range(500):\n    print(f'L{i:08d}')")
        .await;
    assert_eq!(r["truncated"], false, "{r}");
    assert_eq!(r["stdout"].as_str().unwrap().len(), 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_right_after_the_start_is_not_lost() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    s.exec(&id, "print('warm')").await;
    // Interrupt as soon as the execution is reported running, the way a
    // client that stops a cell at once does.
    for trial in 0..3 {
        let eid = s
            .submit(
                &id,
                json!({"code": "import time\ntime.sleep(20)\nprint('slept')"}),
            )
            .await;
        s.execution_until(&id, &eid, Duration::from_secs(30), |v| {
            v["state"] != "queued"
        })
        .await;
        let (status, v) = post_exec(&s, &id, &eid, "interrupt", json!({})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["interrupted"], true, "{v}");
        let v = s
            .execution_until(&id, &eid, Duration::from_secs(60), |v| {
                v["state"] == "finished"
            })
            .await;
        let r = &v["result"];
        assert_ne!(
            r["status"], "ok",
            "trial {trial}: answered interrupted: true, yet the cell ran to its end: {r}"
        );
        assert_eq!(
            r["error"]["ename"], "KeyboardInterrupt",
            "trial {trial}: {r}"
        );
        assert_eq!(r["stdout"], "", "trial {trial}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_a_gap_then_the_rest() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    // About 100 MB: far more than the event log keeps (8 MiB).
    let code = "s = 'y' * 999\nprint('HEAD', flush=True)\nfor i in range(100_000):\n    print(s)\nprint('TAIL')";
    let (eid, mut events) = submit_stream(&s, &id, NDJSON, json!({"code": code})).await;
    let mut seen = events.until(|e| e["type"] == "stdout").await;
    // Stop reading until the execution is over.
    s.execution_until(&id, &eid, Duration::from_secs(300), |v| {
        v["state"] == "finished"
    })
    .await;
    seen.extend(events.rest().await);
    let k = kinds(&seen);
    let gaps: Vec<&Value> = seen.iter().filter(|e| e["type"] == "gap").collect();
    assert!(!gaps.is_empty(), "no gap for a reader far behind: {k:?}");
    // Numbers stay consistent: a gap covers exactly what is missing.
    for w in seen.windows(2) {
        if w[1]["type"] == "gap" {
            assert_eq!(w[1]["from"].as_u64().unwrap(), seq(&w[0]) + 1, "{}", w[1]);
            assert_eq!(w[1]["to"].as_u64().unwrap(), seq(&w[1]), "{}", w[1]);
        } else {
            assert_eq!(seq(&w[1]), seq(&w[0]) + 1, "{} after {}", w[1], w[0]);
        }
    }
    assert_eq!(k[0], "start");
    assert_eq!(k[k.len() - 2..], ["files", "end"]);
    assert!(text(&seen, "stdout").ends_with("yyy\nTAIL\n"));
    // The end result is complete whatever the reader missed.
    let r = &seen.last().unwrap()["result"];
    assert_eq!(r["status"], "ok", "{}", r["error"]);
    let out = r["stdout"].as_str().unwrap();
    assert!(out.starts_with("HEAD\nyyy") && out.ends_with("yyy\nTAIL\n"));
    let dropped = r["dropped"]["stdout_bytes"].as_u64().unwrap();
    let (head, _, tail) = split_marker(out);
    assert_eq!(
        dropped + (head.len() + tail.len()) as u64,
        (5 + 100_000 * 1000 + 5) as u64
    );
    // A replay from the start now begins with the gap.
    let replay = attach(&s, &id, &eid, SSE, Some(0), None).await.rest().await;
    assert_eq!(replay[0]["type"], "gap", "{}", replay[0]);
    assert_eq!(replay[0]["from"], 1);
    assert_eq!(replay.last().unwrap(), seen.last().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_does_not_stop_the_execution() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let gave_up = s
        .req(Method::POST, &format!("/v1/sandboxes/{id}/execute"))
        .timeout(Duration::from_secs(1))
        .json(&json!({"code": "import time\ntime.sleep(3)\nopen('done.txt', 'w').write('1')\nprint('done')"}))
        .send()
        .await;
    assert!(gave_up.is_err(), "the request should have timed out");
    let all = list(&s, &id, "").await;
    assert_eq!(all.len(), 1, "{all:?}");
    let eid = all[0]["execution_id"].as_str().unwrap().to_owned();
    let v = s
        .execution_until(&id, &eid, Duration::from_secs(60), |v| {
            v["state"] == "finished"
        })
        .await;
    assert_eq!(v["result"]["stdout"], "done\n", "{v}");
    assert_eq!(
        v["result"]["files"]["created"][0]["path"], "done.txt",
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_sandbox_ends_its_streams() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let (running, a) = stream_busy(&s, &id).await;
    let queued = s.submit(&id, json!({"code": "print('never')"})).await;
    let b = attach(&s, &id, &queued, NDJSON, None, None).await;
    assert_eq!(s.delete(&id).await, 204);
    let a = tokio::time::timeout(Duration::from_secs(60), a.rest())
        .await
        .expect("the running execution's stream did not end");
    let b = tokio::time::timeout(Duration::from_secs(60), b.rest())
        .await
        .expect("the queued execution's stream did not end");
    let ra = &a.last().expect("events")["result"];
    assert_eq!(ra["execution_id"], running.as_str());
    assert_ne!(ra["status"], "ok", "{ra}");
    assert_eq!(ra["error"]["ename"], "SandboxDeleted", "{ra}");
    assert_eq!(kinds(&b).last(), Some(&"end"));
    let rb = &b.last().unwrap()["result"];
    assert_eq!(rb["error"]["ename"], "SandboxDeleted", "{rb}");
    assert_eq!(rb["stdout"], "", "{rb}");
    // After the deletion the execution is still readable, from the trace.
    let (status, v) = s
        .call(s.req(
            Method::GET,
            &format!("/v1/sandboxes/{id}/executions/{running}"),
        ))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["error"]["ename"], "SandboxDeleted", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_ends_attached_streams() {
    let mut s = Server::start();
    let id = s.create(json!({})).await;
    let (_, events) = stream_busy(&s, &id).await;
    let reader = tokio::spawn(events.rest());
    let exit = tokio::task::block_in_place(|| s.terminate(Duration::from_secs(30)));
    assert!(
        exit.is_some(),
        "an attached stream kept the server from exiting"
    );
    let rest = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the stream did not end")
        .expect("reader task");
    assert_eq!(kinds(&rest).last(), Some(&"end"), "{rest:?}");
    let r = &rest.last().unwrap()["result"];
    assert_eq!(r["error"]["ename"], "SandboxDeleted", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_crashes_end_the_stream_too() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let (eid, events) = submit_stream(
        &s,
        &id,
        SSE,
        json!({"code": "import time\nprint('t', flush=True)\ntime.sleep(30)", "timeout_s": 1}),
    )
    .await;
    let events = events.rest().await;
    let r = check_whole(&events, &eid);
    assert_eq!(r["status"], "timeout", "{r}");
    assert_eq!(r["stdout"], "t\n", "{r}");

    let (eid, events) = submit_stream(
        &s,
        &id,
        NDJSON,
        // The pause lets the line leave the kernel: os._exit does not wait for
        // ZeroMQ to send what is queued.
        json!({"code": "import os, time\nprint('c', flush=True)\ntime.sleep(0.5)\nos._exit(1)"}),
    )
    .await;
    let events = events.rest().await;
    let r = check_whole(&events, &eid);
    assert_eq!(r["status"], "crashed", "{r}");
    assert_eq!(r["state_lost"], true, "{r}");
    assert_eq!(text(&events, "stdout"), "c\n");
    assert_eq!(r["stdout"], "c\n", "{r}");
    let r = s.exec(&id, "print('alive')").await;
    assert_eq!(r["stdout"], "alive\n", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_executions_run_in_submission_order() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    s.exec(&id, "order = []").await;
    for round in 0..5 {
        let mut eids = Vec::new();
        for i in 0..15 {
            let code = format!("order.append({i})");
            eids.push(s.submit(&id, json!({ "code": code })).await);
        }
        let last = eids.last().unwrap().clone();
        s.execution_until(&id, &last, Duration::from_secs(60), |v| {
            v["state"] == "finished"
        })
        .await;
        let r = s.exec(&id, "print(order); order.clear()").await;
        let want = format!("{:?}\n", (0..15).collect::<Vec<_>>());
        let mut counts = Vec::new();
        for eid in &eids {
            let v = s.execution(&id, eid).await;
            counts.push(v["execution_count"].as_i64().unwrap_or(-1));
        }
        assert_eq!(
            r["stdout"], want.as_str(),
            "round {round}: executions ran out of submission order (execution counts in submission order: {counts:?})"
        );
    }
}
