//! Replaying notebooks in fresh sandboxes: `POST /v1/notebooks/execute`
//! (a client's `.ipynb`) and `POST /v1/sandboxes/{id}/replay` (a recorded
//! session). Every code cell runs in order in a new sandbox; each cell's
//! outputs are compared with the recorded ones after normalisation
//! ([`crate::trace::replay`]). The sandbox is deleted afterwards unless
//! `keep: true`, whatever happens, also if the client goes away.

use super::body::{ApiQuery, JsonBody, OptionalJsonBody};
use super::error::ApiError;
use super::sandboxes::{check_image, parse_id, parse_timeout, validate_limits, LimitsRequest};
use super::traces::stored;
use super::{detached, AppState};
use crate::sandbox::execute::ExecuteOptions;
use crate::sandbox::{CreateOptions, Manager, Sandbox, SandboxError};
use crate::trace::notebook;
use crate::trace::replay::{code_cells, differences, CodeCell};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Replay options, in a wrapper body or in the query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayOptions {
    pub image: Option<String>,
    pub limits: Option<LimitsRequest>,
    /// Per cell.
    pub timeout_s: Option<f64>,
    /// Stop at the first cell that raises (default: keep going).
    pub stop_on_error: Option<bool>,
    /// Keep the replay sandbox instead of deleting it.
    pub keep: Option<bool>,
}

/// `POST /v1/notebooks/execute` body when options come with the notebook.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped {
    notebook: Value,
    image: Option<String>,
    limits: Option<LimitsRequest>,
    timeout_s: Option<f64>,
    stop_on_error: Option<bool>,
    keep: Option<bool>,
}

/// Query options of `POST /v1/notebooks/execute` with a bare notebook body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    pub timeout_s: Option<f64>,
    pub stop_on_error: Option<bool>,
    pub keep: Option<bool>,
}

fn invalid_notebook(msg: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_notebook",
        msg.to_string(),
    )
}

/// `POST /v1/notebooks/execute`: the body is a notebook (options in the
/// query), or `{"notebook": {...}, "image", "limits", "timeout_s",
/// "stop_on_error", "keep"}`.
pub async fn execute_notebook(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ReplayQuery>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    let (nb, opts) = if body.get("notebook").is_some() && body.get("nbformat").is_none() {
        let w: Wrapped =
            serde_json::from_value(body).map_err(|e| ApiError::invalid(e.to_string()))?;
        // Options in the body win; the query fills in the rest.
        (
            w.notebook,
            ReplayOptions {
                image: w.image,
                limits: w.limits,
                timeout_s: w.timeout_s.or(q.timeout_s),
                stop_on_error: w.stop_on_error.or(q.stop_on_error),
                keep: w.keep.or(q.keep),
            },
        )
    } else {
        (
            body,
            ReplayOptions {
                timeout_s: q.timeout_s,
                stop_on_error: q.stop_on_error,
                keep: q.keep,
                ..ReplayOptions::default()
            },
        )
    };
    replay(&state, nb, opts, None).await.map(Json)
}

/// `POST /v1/sandboxes/{id}/replay`: replays a recorded session (live or
/// deleted) in a fresh sandbox.
pub async fn replay_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(opts): OptionalJsonBody<ReplayOptions>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let (sandbox, execs) = stored(&state, id).await?;
    let nb = notebook::export(&sandbox, &execs);
    replay(&state, nb, opts, Some(id.to_string()))
        .await
        .map(Json)
}

/// `value[key]` as an object, made one if it is missing or something else.
/// (`value` is an object: notebooks and cells are checked before a replay.)
fn object_at<'a>(value: &'a mut Value, key: &str) -> &'a mut serde_json::Map<String, Value> {
    if !value.is_object() {
        *value = json!({});
    }
    let slot = value
        .as_object_mut()
        .expect("made an object above")
        .entry(key)
        .or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut().expect("made an object above")
}

struct Plan {
    cells: Vec<CodeCell>,
    notebook: Value,
    create: CreateOptions,
    timeout: Duration,
    stop_on_error: bool,
    keep: bool,
    replay_of: Option<String>,
}

async fn replay(
    state: &AppState,
    notebook: Value,
    opts: ReplayOptions,
    replay_of: Option<String>,
) -> Result<Value, ApiError> {
    let cells = code_cells(&notebook).map_err(invalid_notebook)?;
    let cfg = state.manager.config();
    check_image(state, opts.image.as_deref())?;
    let timeout = parse_timeout(opts.timeout_s, cfg)?;
    let mut metadata = serde_json::Map::new();
    metadata.insert("replay_of".into(), json!(replay_of));
    let plan = Plan {
        cells,
        notebook,
        create: CreateOptions {
            idle_timeout: cfg.default_idle_timeout,
            limits: Some(validate_limits(opts.limits, cfg)?),
            env: Default::default(),
            metadata,
        },
        timeout,
        stop_on_error: opts.stop_on_error.unwrap_or(false),
        keep: opts.keep.unwrap_or(false),
        replay_of,
    };
    let manager = state.manager.clone();
    detached(async move { run(manager, plan).await }).await
}

async fn run(manager: Arc<Manager>, plan: Plan) -> Result<Value, SandboxError> {
    let sandbox = manager.create(plan.create.clone()).await?;
    let outcome = replay_cells(&manager, &sandbox, &plan).await;
    if !plan.keep || outcome.is_err() {
        if let Err(e) = manager.delete(sandbox.id).await {
            tracing::warn!(sandbox_id = %sandbox.id, error = %e, "deleting a replay sandbox");
        }
    }
    outcome
}

async fn replay_cells(
    manager: &Manager,
    sandbox: &Arc<Sandbox>,
    plan: &Plan,
) -> Result<Value, SandboxError> {
    let sid = sandbox.id.to_string();
    let mut nb = plan.notebook.clone();
    let mut reports = Vec::new();
    let (mut identical, mut changed, mut errors, mut skipped) = (0, 0, 0, 0);
    let mut stopped = false;
    for cell in &plan.cells {
        let target = &mut nb["cells"][cell.index];
        if stopped {
            skipped += 1;
            target["outputs"] = json!([]);
            target["execution_count"] = Value::Null;
            // Nothing ran: no timings or status of the recording remain.
            let meta = object_at(target, "metadata");
            meta.remove("execution");
            meta.remove("cellblock");
            reports.push(json!({"index": cell.index, "cell_id": cell.id, "result": "skipped"}));
            continue;
        }
        let opts = ExecuteOptions {
            code: cell.source.clone(),
            timeout: plan.timeout,
            allow_stdin: false,
            input_timeout: Duration::from_secs(1),
            limits: manager.config().output_limits,
            mirror: None,
            silent: false,
            store_history: true,
        };
        let (record, handle) = sandbox.submit(opts)?;
        let raw = handle.await.ok();
        let result: Value = raw
            .as_deref()
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .unwrap_or(Value::Null);
        let eid = record.id.0.to_string();
        let store = manager.store().clone();
        let (s, e) = (sid.clone(), eid.clone());
        let stored = tokio::task::spawn_blocking(move || store.execution(&s, &e))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let outputs = stored
            .as_ref()
            .and_then(|e| e.result.as_ref())
            .map(notebook::cell_outputs)
            .unwrap_or_default();
        let diffs = differences(&cell.outputs, &outputs);
        let status = result["status"].as_str().unwrap_or("error").to_owned();
        if status != "ok" {
            errors += 1;
            stopped = plan.stop_on_error;
        }
        if diffs.is_empty() {
            identical += 1;
        } else {
            changed += 1;
        }
        target["outputs"] = json!(outputs);
        target["execution_count"] = result["execution_count"].clone();
        // The cell now describes this run, not the recorded one.
        let meta = object_at(target, "metadata");
        let timing = stored.as_ref().map_or_else(|| json!({}), notebook::timing);
        meta.insert("execution".into(), timing);
        meta.insert(
            "cellblock".into(),
            json!({"execution_id": eid, "status": status, "duration_ms": result["duration_ms"]}),
        );
        reports.push(json!({
            "index": cell.index,
            "cell_id": cell.id,
            "execution_id": eid,
            "status": status,
            "result": if diffs.is_empty() { "identical" } else { "changed" },
            "differences": diffs,
            "error": result["error"],
        }));
    }
    // Every cell needs an id in nbformat 4.5: fill in unique ones.
    if let Some(cells) = nb["cells"].as_array_mut() {
        let mut taken: std::collections::HashSet<String> = cells
            .iter()
            .filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect();
        for (i, c) in cells.iter_mut().enumerate() {
            if c.get("id").and_then(Value::as_str).is_none() {
                let mut id = format!("cell-{i}");
                let mut n = 1;
                while taken.contains(&id) {
                    id = format!("cell-{i}-{n}");
                    n += 1;
                }
                taken.insert(id.clone());
                c["id"] = json!(id);
            }
        }
    }
    nb["nbformat_minor"] = json!(nb["nbformat_minor"].as_u64().unwrap_or(5).max(5));
    object_at(&mut nb, "metadata").insert(
        "cellblock".into(),
        json!({
            "sandbox_id": sid,
            "replay_of": plan.replay_of,
            "image": sandbox.image.name,
            "image_version": sandbox.image.version,
        }),
    );
    Ok(json!({
        "sandbox_id": sid,
        "replay_of": plan.replay_of,
        "kept": plan.keep,
        "summary": {
            "cells": plan.cells.len(),
            "identical": identical,
            "changed": changed,
            "errors": errors,
            "skipped": skipped,
        },
        "cells": reports,
        "notebook": nb,
    }))
}
