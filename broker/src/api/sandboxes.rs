//! `/v1/sandboxes` handlers: thin, each validating input and delegating to
//! the sandbox [`Manager`](crate::sandbox::Manager).

use super::body::{JsonBody, OptionalJsonBody};
use super::error::ApiError;
use super::{detached, AppState};
use crate::sandbox::kernel::RESERVED_ENV;
use crate::sandbox::{CreateOptions, SandboxId};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cellblock_protocol::message::JsonMap;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Body of `POST /v1/sandboxes`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub image: Option<String>,
    pub idle_timeout_s: Option<u64>,
    pub env: Option<BTreeMap<String, String>>,
    pub metadata: Option<JsonMap>,
    pub limits: Option<LimitsRequest>,
}

/// `limits` in `POST /v1/sandboxes`; absent fields take the server's defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub disk_mb: Option<u64>,
}

fn bounded<T: PartialOrd + std::fmt::Display + Copy>(
    name: &str,
    value: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ApiError> {
    let v = value.unwrap_or(default);
    if v.partial_cmp(&min) != Some(std::cmp::Ordering::Less) && v <= max {
        Ok(v)
    } else {
        Err(ApiError::invalid(format!(
            "limits.{name} must be between {min} and {max}"
        )))
    }
}

pub(super) fn validate_limits(
    req: Option<LimitsRequest>,
    cfg: &crate::config::Config,
) -> Result<crate::config::SandboxLimits, ApiError> {
    let req = req.unwrap_or_default();
    let (d, m) = (cfg.default_limits, cfg.max_limits);
    Ok(crate::config::SandboxLimits {
        memory_mb: bounded("memory_mb", req.memory_mb, d.memory_mb, 64, m.memory_mb)?,
        cpus: bounded("cpus", req.cpus, d.cpus, 0.05, m.cpus)?,
        pids: bounded("pids", req.pids, d.pids, 16, m.pids)?,
        disk_mb: bounded("disk_mb", req.disk_mb, d.disk_mb, 8, m.disk_mb)?,
    })
}

const MAX_ENV_VARS: usize = 256;
const MAX_ENV_BYTES: usize = 64 * 1024;
const MAX_METADATA_BYTES: usize = 16 * 1024;

/// Checks an `image` a request names against the images served.
pub(super) fn check_image(state: &AppState, image: Option<&str>) -> Result<(), ApiError> {
    let image = image.unwrap_or("python");
    if image != state.manager.image().name {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_image",
            format!(
                "unknown image {image:?}; available: {}",
                state.manager.image().name
            ),
        ));
    }
    Ok(())
}

pub(super) fn parse_id(raw: &str) -> Result<SandboxId, ApiError> {
    uuid::Uuid::parse_str(raw).map(SandboxId).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "sandbox_not_found",
            format!("no sandbox with id {raw:?} (ids are UUIDs)"),
        )
    })
}

fn valid_env_key(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn validate_env(
    env: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    if env.len() > MAX_ENV_VARS {
        return Err(ApiError::invalid(format!(
            "env has more than {MAX_ENV_VARS} variables"
        )));
    }
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ENV_BYTES {
        return Err(ApiError::invalid(format!(
            "env is larger than {MAX_ENV_BYTES} bytes"
        )));
    }
    for (k, v) in &env {
        if !valid_env_key(k) {
            return Err(ApiError::invalid(format!(
                "env name {k:?} is not valid: use letters, digits and '_', not starting with a digit"
            )));
        }
        if RESERVED_ENV.contains(&k.as_str()) {
            return Err(ApiError::invalid(format!(
                "env name {k:?} is set by cellblock"
            )));
        }
        if v.contains('\0') {
            return Err(ApiError::invalid(format!(
                "env value of {k:?} contains a NUL byte"
            )));
        }
    }
    Ok(env)
}

/// `POST /v1/sandboxes`: 201 with the sandbox once its kernel answers.
pub async fn create(
    State(state): State<AppState>,
    OptionalJsonBody(req): OptionalJsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    let cfg = state.manager.config();
    check_image(&state, req.image.as_deref())?;
    let idle = match req.idle_timeout_s {
        None => cfg.default_idle_timeout,
        Some(0) => return Err(ApiError::invalid("idle_timeout_s must be at least 1")),
        Some(s) if Duration::from_secs(s) > cfg.max_idle_timeout => {
            return Err(ApiError::invalid(format!(
                "idle_timeout_s may be at most {}",
                cfg.max_idle_timeout.as_secs()
            )))
        }
        Some(s) => Duration::from_secs(s),
    };
    let metadata = req.metadata.unwrap_or_default();
    if serde_json::to_vec(&metadata).map_or(0, |v| v.len()) > MAX_METADATA_BYTES {
        return Err(ApiError::invalid(format!(
            "metadata is larger than {MAX_METADATA_BYTES} bytes"
        )));
    }
    let opts = CreateOptions {
        idle_timeout: idle,
        limits: Some(validate_limits(req.limits, cfg)?),
        env: validate_env(req.env.unwrap_or_default())?,
        metadata,
    };
    let manager = state.manager.clone();
    // Run to completion even if the client goes away, so no kernel is orphaned.
    let sandbox = detached(async move { manager.create(opts).await }).await?;
    let location = format!("/v1/sandboxes/{}", sandbox.id);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, location)],
        Json(sandbox.view()),
    )
        .into_response())
}

/// `GET /v1/sandboxes`.
pub async fn list(State(state): State<AppState>) -> Json<serde_json::Value> {
    let views: Vec<_> = state.manager.list().iter().map(|s| s.view()).collect();
    Json(serde_json::json!({ "sandboxes": views }))
}

/// `GET /v1/sandboxes/{id}`.
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let sandbox = state.manager.get(parse_id(&id)?)?;
    Ok(Json(sandbox.view()).into_response())
}

/// `DELETE /v1/sandboxes/{id}`: 204 once the kernel is gone.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let manager = state.manager.clone();
    detached(async move { manager.delete(id).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks a `timeout_s` against the server's ceiling.
pub(super) fn parse_timeout(
    t: Option<f64>,
    cfg: &crate::config::Config,
) -> Result<Duration, ApiError> {
    match t {
        None => Ok(cfg.default_timeout),
        Some(t) if t.is_nan() || t <= 0.0 || !t.is_finite() => Err(ApiError::invalid(
            "timeout_s must be a positive number of seconds",
        )),
        Some(t) if t > cfg.max_timeout.as_secs_f64() => Err(ApiError::invalid(format!(
            "timeout_s may be at most {}",
            cfg.max_timeout.as_secs()
        ))),
        Some(t) => Ok(Duration::from_secs_f64(t)),
    }
}

/// `POST /v1/sandboxes/{id}/interrupt`: SIGINT to the running cell.
pub async fn interrupt(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sandbox = state.manager.get(parse_id(&id)?)?;
    let running = sandbox.records().running().map(|r| r.id);
    let was_busy = sandbox.interrupt();
    Ok(Json(
        serde_json::json!({"id": sandbox.id, "interrupted": was_busy, "execution_id": running}),
    ))
}

/// `POST /v1/sandboxes/{id}/restart`: a fresh kernel; state is lost.
pub async fn restart(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let sandbox = state.manager.get(parse_id(&id)?)?;
    let s = sandbox.clone();
    detached(async move { s.restart().await }).await?;
    Ok(Json(sandbox.view()).into_response())
}

/// `cmd` of a command: a shell string or an argv array.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Cmd {
    Shell(String),
    Argv(Vec<String>),
}

/// Body of `POST /v1/sandboxes/{id}/commands`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    pub cmd: Cmd,
    pub timeout_s: Option<f64>,
    pub cwd: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub stdin: Option<String>,
}

/// Most output kept per stream of a command.
const MAX_COMMAND_OUTPUT: usize = 16 * 1024 * 1024;

/// `POST /v1/sandboxes/{id}/commands`: runs a command inside the sandbox.
pub async fn command(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CommandRequest>,
) -> Result<Response, ApiError> {
    let sandbox = state.manager.get(parse_id(&id)?)?;
    let timeout = parse_timeout(req.timeout_s, state.manager.config())?;
    let argv = match req.cmd {
        Cmd::Shell(s) if s.trim().is_empty() => return Err(ApiError::invalid("cmd is empty")),
        Cmd::Shell(s) => vec!["/bin/sh".to_owned(), "-c".to_owned(), s],
        Cmd::Argv(a) if a.is_empty() => return Err(ApiError::invalid("cmd is empty")),
        // /usr/bin/env looks the program up in the command's own PATH.
        Cmd::Argv(a) => ["/usr/bin/env".to_owned(), "--".to_owned()]
            .into_iter()
            .chain(a)
            .collect(),
    };
    let cwd = req.cwd.unwrap_or_default();
    if argv.iter().chain([&cwd]).any(|s| s.contains('\0')) {
        return Err(ApiError::invalid("cmd and cwd may not contain NUL bytes"));
    }
    let spec = crate::sandbox::commands::CommandSpec {
        argv,
        timeout,
        cwd,
        env: validate_env(req.env.unwrap_or_default())?,
        stdin: req.stdin.unwrap_or_default().into_bytes(),
        max_output: MAX_COMMAND_OUTPUT,
    };
    // The trace keeps the command, never env values or stdin contents.
    let request = serde_json::json!({
        "argv": spec.argv,
        "cwd": spec.cwd,
        "env_keys": spec.env.keys().collect::<Vec<_>>(),
        "stdin_bytes": spec.stdin.len(),
        "timeout_s": spec.timeout.as_secs_f64(),
    });
    let started = std::time::SystemTime::now();
    let s = sandbox.clone();
    let result = detached(async move { s.run_command(spec).await }).await?;
    let recorded = serde_json::to_value(&result).unwrap_or_default();
    sandbox.trace(|t| t.command_ran(&sandbox.id.to_string(), started, &request, &recorded));
    Ok(Json(result).into_response())
}
