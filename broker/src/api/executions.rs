//! Executions over HTTP: submitting code, streaming its events, re-attaching,
//! listing, interrupting or cancelling, and answering `input()`.
//!
//! One request can be answered three ways, chosen by `Accept`:
//! - `application/json` (the default): the complete result when it ends;
//! - `text/event-stream`: Server-Sent Events, `id:` the sequence number and
//!   `event:` the type, so a browser `EventSource` resumes by itself through
//!   `Last-Event-ID`;
//! - `application/x-ndjson`: one JSON event per line.
//!
//! `"wait": false` answers 202 at once. Whatever the client does, the
//! execution runs to its end; `GET …/executions/{eid}` (with `?after=SEQ` or
//! `Last-Event-ID` when streaming) picks it up again.

use super::body::{ApiQuery, JsonBody};
use super::error::ApiError;
use super::sandboxes::{parse_id, parse_timeout};
use super::AppState;
use crate::sandbox::execute::ExecuteOptions;
use crate::sandbox::record::{CancelOutcome, ExecutionRecord, State};
use crate::sandbox::{ExecutionId, Sandbox};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cellblock_protocol::outputs::OutputLimits;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Body of `POST /v1/sandboxes/{id}/execute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    pub code: String,
    pub timeout_s: Option<f64>,
    /// `false`: answer 202 with the execution id at once.
    pub wait: Option<bool>,
    /// `false`: `input()` raises at once instead of asking.
    pub allow_stdin: Option<bool>,
    pub input_timeout_s: Option<f64>,
    pub output_limits: Option<OutputLimitsRequest>,
}

/// Per-request output caps; each at most the server's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputLimitsRequest {
    pub stdout_bytes: Option<usize>,
    pub stderr_bytes: Option<usize>,
    pub outputs: Option<usize>,
    pub rich_bytes: Option<usize>,
}

fn output_limits(
    req: Option<OutputLimitsRequest>,
    max: OutputLimits,
) -> Result<OutputLimits, ApiError> {
    let req = req.unwrap_or_default();
    let pick = |name: &str, v: Option<usize>, max: usize| match v {
        None => Ok(max),
        Some(v) if (1..=max).contains(&v) => Ok(v),
        Some(_) => Err(ApiError::invalid(format!(
            "output_limits.{name} must be between 1 and {max}"
        ))),
    };
    Ok(OutputLimits {
        stdout_bytes: pick("stdout_bytes", req.stdout_bytes, max.stdout_bytes)?,
        stderr_bytes: pick("stderr_bytes", req.stderr_bytes, max.stderr_bytes)?,
        outputs: pick("outputs", req.outputs, max.outputs)?,
        rich_bytes: pick("rich_bytes", req.rich_bytes, max.rich_bytes)?,
    })
}

/// How a response is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Json,
    Sse,
    Ndjson,
}

fn mode(headers: &HeaderMap) -> Mode {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase();
    if accept.contains("text/event-stream") {
        Mode::Sse
    } else if [
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
    ]
    .iter()
    .any(|t| accept.contains(t))
    {
        Mode::Ndjson
    } else {
        Mode::Json
    }
}

fn location(sandbox: &Sandbox, record: &ExecutionRecord) -> String {
    format!("/v1/sandboxes/{}/executions/{}", sandbox.id, record.id.0)
}

fn with_headers(mut resp: Response, sandbox: &Sandbox, record: &ExecutionRecord) -> Response {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location(sandbox, record)) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&record.id.0.to_string()) {
        h.insert("x-execution-id", v);
    }
    resp
}

/// `POST /v1/sandboxes/{id}/execute`.
pub async fn execute(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ExecuteRequest>,
) -> Result<Response, ApiError> {
    let sandbox = state.manager.get(parse_id(&id)?)?;
    let cfg = state.manager.config();
    let timeout = parse_timeout(req.timeout_s, cfg)?;
    let input_timeout = match req.input_timeout_s {
        None => cfg.default_input_timeout.min(timeout),
        Some(t) => parse_timeout(Some(t), cfg)
            .map_err(|_| ApiError::invalid("input_timeout_s must be a positive number of seconds, at most the server's largest timeout"))?,
    };
    let opts = ExecuteOptions {
        code: req.code,
        timeout,
        allow_stdin: req.allow_stdin.unwrap_or(true),
        input_timeout,
        limits: output_limits(req.output_limits, cfg.output_limits)?,
        mirror: None,
        silent: false,
        store_history: true,
    };
    let (record, handle) = sandbox.submit(opts)?;
    if !req.wait.unwrap_or(true) {
        let resp = (StatusCode::ACCEPTED, Json(record.view(false))).into_response();
        return Ok(with_headers(resp, &sandbox, &record));
    }
    let resp = match mode(&headers) {
        Mode::Json => {
            // If the client goes away this future is dropped; the task runs on.
            let raw = handle.await.map_err(|e| {
                tracing::error!(error = %e, "execution task failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            })?;
            json_bytes(StatusCode::OK, Bytes::from_owner(RawJson(raw)))
        }
        m => stream(record.clone(), 0, m),
    };
    Ok(with_headers(resp, &sandbox, &record))
}

/// A stored result served without a copy.
struct RawJson(Arc<serde_json::value::RawValue>);

impl AsRef<[u8]> for RawJson {
    fn as_ref(&self) -> &[u8] {
        self.0.get().as_bytes()
    }
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Largest chunk written to a stream at once.
const CHUNK_BYTES: usize = 256 * 1024;
/// How often an idle SSE stream gets a comment, so proxies keep it open.
const KEEPALIVE: Duration = Duration::from_secs(15);

fn frame(mode: Mode, seq: u64, kind: &str, json: &[u8], out: &mut Vec<u8>) {
    if mode == Mode::Sse {
        out.extend_from_slice(format!("id: {seq}\nevent: {kind}\ndata: ").as_bytes());
        out.extend_from_slice(json);
        out.extend_from_slice(b"\n\n");
    } else {
        out.extend_from_slice(json);
        out.push(b'\n');
    }
}

/// A streaming response of the record's events numbered above `after`,
/// ending after `end`.
fn stream(record: Arc<ExecutionRecord>, after: u64, mode: Mode) -> Response {
    let rx = record.watch();
    let events = futures_util::stream::unfold(Some((record, rx, after)), move |st| async move {
        let (record, mut rx, after) = st?;
        loop {
            rx.borrow_and_update();
            let batch = record.read(after, CHUNK_BYTES);
            let mut buf = Vec::new();
            let mut last = after;
            if let Some((from, to)) = batch.gap {
                let gap = serde_json::json!({
                    "seq": to, "type": "gap", "from": from, "to": to,
                    "message": "these events were dropped to bound memory; the end result is complete",
                });
                frame(mode, to, "gap", gap.to_string().as_bytes(), &mut buf);
                last = to;
            }
            for e in &batch.events {
                frame(mode, e.seq, e.kind, &e.json, &mut buf);
                last = e.seq;
            }
            if !buf.is_empty() {
                let next = (!batch.done).then_some((record, rx, last));
                return Some((Ok::<_, Infallible>(Bytes::from(buf)), next));
            }
            if batch.done {
                return None;
            }
            match tokio::time::timeout(KEEPALIVE, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                Err(_) if mode == Mode::Sse => {
                    let ping = Bytes::from_static(b": keep-alive\n\n");
                    return Some((Ok(ping), Some((record, rx, after))));
                }
                Err(_) => {}
            }
        }
    });
    let content_type = match mode {
        Mode::Sse => "text/event-stream",
        _ => "application/x-ndjson",
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(events),
    )
        .into_response()
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Queued => "queued",
        State::Running => "running",
        State::Finished => "finished",
    }
}

fn parse_eid(raw: &str) -> Result<ExecutionId, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map(ExecutionId)
        .map_err(|_| not_found(raw))
}

fn not_found(raw: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "execution_not_found",
        format!("no execution with id {raw:?} in this sandbox"),
    )
}

fn lookup(
    state: &AppState,
    id: &str,
    eid: &str,
) -> Result<(Arc<Sandbox>, Arc<ExecutionRecord>), ApiError> {
    let sandbox = state.manager.get(parse_id(id)?)?;
    let record = sandbox
        .records()
        .get(parse_eid(eid)?)
        .ok_or_else(|| not_found(eid))?;
    Ok((sandbox, record))
}

/// Query of `GET …/executions/{eid}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// Stream the events numbered above this one.
    pub after: Option<u64>,
}

/// `GET /v1/sandboxes/{id}/executions/{eid}`: the state and result (so far),
/// or with a streaming `Accept`, the events after `?after=` / `Last-Event-ID`.
/// Executions of deleted sandboxes (and evicted ones) come from the trace.
pub async fn get_one(
    AxState(state): AxState<AppState>,
    Path((id, eid)): Path<(String, String)>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    let sid = parse_id(&id)?;
    let live = match state.manager.get(sid) {
        Ok(sandbox) => Some(sandbox.records().get(parse_eid(&eid)?)),
        Err(_) => None,
    };
    let record = match live {
        Some(Some(record)) if !record.is_evicted() => record,
        Some(None) => return Err(not_found(&eid)),
        _ => {
            let (s, e) = (sid.to_string(), parse_eid(&eid)?.0.to_string());
            let found = super::traces::blocking(&state, move |store| {
                Ok(match store.sandbox(&s)? {
                    Some(_) => Some(store.execution(&s, &e)?),
                    None => None,
                })
            })
            .await?;
            let e = found
                .ok_or_else(|| super::traces::no_sandbox(sid))?
                .ok_or_else(|| not_found(&eid))?;
            return Ok(Json(e.view(&id, true)).into_response());
        }
    };
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_header",
                        "Last-Event-ID must be an event's sequence number",
                    )
                })
        })
        .transpose()?;
    match mode(&headers) {
        Mode::Json => Ok(Json(record.view(true)).into_response()),
        m => {
            let after = q.after.or(last_event_id).unwrap_or(0);
            let rest = record.read(after, 1);
            if rest.done && rest.events.is_empty() && rest.gap.is_none() {
                // Nothing follows: 204 also stops a browser EventSource from
                // reconnecting forever.
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            Ok(stream(record, after, m))
        }
    }
}

/// Query of `GET …/executions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<State>,
    /// The newest this many (default 1000).
    pub limit: Option<usize>,
}

/// `GET /v1/sandboxes/{id}/executions`: queued, running and finished, oldest first.
pub async fn list(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(1000);
    let sid = parse_id(&id)?;
    let sandbox = match state.manager.get(sid) {
        Ok(s) => s,
        Err(_) => {
            // A deleted sandbox: its trace (summaries, without results).
            let s = sid.to_string();
            let execs = super::traces::blocking(&state, move |store| {
                Ok(match store.sandbox(&s)? {
                    Some(_) => Some(store.execution_summaries(&s)?),
                    None => None,
                })
            })
            .await?
            .ok_or_else(|| super::traces::no_sandbox(sid))?;
            let views: Vec<_> = execs
                .iter()
                .filter(|e| q.state.is_none_or(|s| e.state == state_name(s)))
                .map(|e| e.view(&id, false))
                .collect();
            let views = &views[views.len().saturating_sub(limit)..];
            return Ok(Json(serde_json::json!({ "executions": views })).into_response());
        }
    };
    let records: Vec<Arc<ExecutionRecord>> = sandbox
        .records()
        .all()
        .filter(|r| q.state.is_none_or(|s| r.state() == s))
        .cloned()
        .collect();
    let views: Vec<_> = records[records.len().saturating_sub(limit)..]
        .iter()
        .map(|r| r.view(false))
        .collect();
    Ok(Json(serde_json::json!({ "executions": views })).into_response())
}

/// `POST /v1/sandboxes/{id}/executions/{eid}/interrupt`: interrupts it if it
/// runs, cancels it if it waits in the queue.
pub async fn interrupt(
    AxState(state): AxState<AppState>,
    Path((id, eid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (sandbox, record) = lookup(&state, &id, &eid)?;
    let (cancelled, interrupted) = match record.cancel() {
        CancelOutcome::Cancelled => (true, false),
        CancelOutcome::Running => (false, sandbox.interrupt_execution(&record)),
        CancelOutcome::Finished => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "execution_finished",
                "the execution has already ended",
            ))
        }
    };
    Ok(Json(serde_json::json!({
        "execution_id": record.id,
        "cancelled": cancelled,
        "interrupted": interrupted,
    }))
    .into_response())
}

/// Body of `POST …/executions/{eid}/input`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputBody {
    pub value: String,
}

/// `POST /v1/sandboxes/{id}/executions/{eid}/input`: answers a pending `input()`.
pub async fn input(
    AxState(state): AxState<AppState>,
    Path((id, eid)): Path<(String, String)>,
    JsonBody(body): JsonBody<InputBody>,
) -> Result<Response, ApiError> {
    let (_, record) = lookup(&state, &id, &eid)?;
    record.answer(body.value).map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_waiting_for_input",
            format!("{e}; answer after an input_request event"),
        )
    })?;
    Ok(Json(serde_json::json!({"execution_id": record.id, "accepted": true})).into_response())
}
