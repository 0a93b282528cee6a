//! Reading traces over HTTP: a sandbox's session as a notebook
//! (`GET /v1/sandboxes/{id}/notebook`) and as the full JSON trace
//! (`GET /v1/sandboxes/{id}/trace`). Both work during the sandbox's life and
//! after its deletion, until the trace retention ends.

use super::error::ApiError;
use super::sandboxes::parse_id;
use super::AppState;
use crate::sandbox::SandboxId;
use crate::trace::{notebook, Store, StoredExecution, TraceError};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// Runs a store read on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    state: &AppState,
    read: impl FnOnce(&Store) -> Result<T, TraceError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.manager.store().clone();
    let internal = |e: String| {
        tracing::error!(error = %e, "reading the trace");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "reading the trace failed",
        )
    };
    tokio::task::spawn_blocking(move || read(&store))
        .await
        .map_err(|e| internal(e.to_string()))?
        .map_err(|e| internal(e.to_string()))
}

/// A sandbox's stored record and executions; 404 if the trace has none.
pub(super) async fn stored(
    state: &AppState,
    id: SandboxId,
) -> Result<(Value, Vec<StoredExecution>), ApiError> {
    let sid = id.to_string();
    let found = blocking(state, move |s| {
        let Some(sandbox) = s.sandbox(&sid)? else {
            return Ok(None);
        };
        Ok(Some((sandbox, s.executions(&sid)?)))
    })
    .await?;
    found.ok_or_else(|| no_sandbox(id))
}

/// 404 for a sandbox neither live nor in the trace.
pub(super) fn no_sandbox(id: SandboxId) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "sandbox_not_found",
        format!("no sandbox with id {id}, live or in the trace"),
    )
}

/// `GET /v1/sandboxes/{id}/notebook`: the session as nbformat 4.5.
pub async fn notebook(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (sandbox, execs) = stored(&state, id).await?;
    let nb = notebook::export(&sandbox, &execs);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ipynb+json".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"cellblock-{}.ipynb\"", id.0.simple()),
            ),
        ],
        Json(nb),
    )
        .into_response())
}

/// `GET /v1/sandboxes/{id}/trace`: everything recorded: the sandbox, every
/// execution with its code, timings and result, and every command.
pub async fn trace(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (sandbox, execs) = stored(&state, id).await?;
    let sid = id.to_string();
    let commands = blocking(&state, move |s| s.commands(&sid)).await?;
    let sid = id.to_string();
    let executions: Vec<Value> = execs
        .iter()
        .map(|e| {
            let mut v = e.view(&sid, true);
            v["outputs"] = json!(e.result.as_ref().map(notebook::cell_outputs));
            v
        })
        .collect();
    Ok(Json(json!({
        "sandbox": sandbox,
        "executions": executions,
        "commands": commands,
    }))
    .into_response())
}
