//! The Jupyter kernels REST API (`/api`), as Jupyter Kernel Gateway and
//! jupyter_server serve it, so Jupyter clients can use cellblock unchanged.
//!
//! A kernel *is* a cellblock sandbox: the kernel id is the sandbox id, with
//! the same isolation, limits, idle culling and traces; it shows in
//! `GET /v1/sandboxes` too. There is one kernelspec per image; `python3`
//! (the default) is the python image.
//!
//! Errors have Jupyter's shape, `{"reason", "message"}`. Auth is the `/v1`
//! key, as `Authorization: token K`, `Authorization: Bearer K` or `?token=K`.
//!
//! The websocket, `/api/kernels/{id}/channels`, is in [`super::channels`].

use super::sandboxes::validate_env;
use super::{check_key, AppState};
use crate::sandbox::{CreateOptions, Sandbox, SandboxError, SandboxId};
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// The kernelspec name that maps to the python image.
pub const DEFAULT_SPEC: &str = "python3";

/// An error in Jupyter's shape.
pub struct GwError(pub StatusCode, pub String);

impl IntoResponse for GwError {
    fn into_response(self) -> Response {
        let reason = self.0.canonical_reason().unwrap_or("Error");
        (self.0, Json(json!({"reason": reason, "message": self.1}))).into_response()
    }
}

impl From<SandboxError> for GwError {
    fn from(e: SandboxError) -> Self {
        let api: super::error::ApiError = e.into();
        GwError(api.status, api.message)
    }
}

fn not_found(what: &str) -> GwError {
    GwError(StatusCode::NOT_FOUND, what.to_owned())
}

/// `/api` auth, with Jupyter's error shape.
pub async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check_key(&state, &req) {
        Ok(()) => next.run(req).await,
        Err(why) => GwError(StatusCode::FORBIDDEN, why.message().to_owned()).into_response(),
    }
}

/// Unknown `/api` paths.
pub async fn fallback() -> GwError {
    not_found("no such endpoint")
}

/// `GET /api`.
pub async fn info() -> Json<Value> {
    Json(json!({"version": "2.14.0", "cellblock": env!("CARGO_PKG_VERSION")}))
}

/// The kernelspec's resource files: ipykernel's logos, from the image.
const RESOURCES: [(&str, &str); 3] = [
    ("logo-32x32", "logo-32x32.png"),
    ("logo-64x64", "logo-64x64.png"),
    ("logo-svg", "logo-svg.svg"),
];

/// Where ipykernel keeps its logos in the image's venv.
fn resource_dir(state: &AppState) -> std::path::PathBuf {
    let image = state.manager.image();
    let minor: Vec<&str> = image.python_version.split('.').take(2).collect();
    image.dir.join(format!(
        "venv/lib/python{}/site-packages/ipykernel/resources",
        minor.join(".")
    ))
}

fn spec_of(state: &AppState) -> Value {
    let image = state.manager.image();
    let dir = resource_dir(state);
    let resources: serde_json::Map<String, Value> = RESOURCES
        .iter()
        .filter(|(_, file)| dir.join(file).is_file())
        .map(|(key, file)| {
            (
                (*key).to_owned(),
                json!(format!("/kernelspecs/{DEFAULT_SPEC}/{file}")),
            )
        })
        .collect();
    json!({
        "name": DEFAULT_SPEC,
        "spec": {
            "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (cellblock)",
            "language": "python",
            "interrupt_mode": "signal",
            "env": {},
            "metadata": {
                "cellblock": {"image": image.name, "image_version": image.version},
            },
        },
        "resources": resources,
    })
}

/// The image a kernelspec name stands for.
fn image_for<'a>(state: &'a AppState, name: &str) -> Option<&'a str> {
    let image = &state.manager.image().name;
    (name == DEFAULT_SPEC || name == image).then_some(image.as_str())
}

/// `GET /api/kernelspecs`.
pub async fn kernelspecs(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "default": DEFAULT_SPEC,
        "kernelspecs": { DEFAULT_SPEC: spec_of(&state) },
    }))
}

/// `GET /api/kernelspecs/{name}`.
pub async fn kernelspec(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, GwError> {
    image_for(&state, &name)
        .map(|_| Json(spec_of(&state)))
        .ok_or_else(|| not_found(&format!("no such kernel spec: {name}")))
}

/// `GET /kernelspecs/{name}/{file}`: the kernelspec's logos. Only the
/// names in [`RESOURCES`] are served, read from the image (never a path
/// the client chose).
pub async fn kernelspec_resource(
    State(state): State<AppState>,
    Path((name, file)): Path<(String, String)>,
) -> Result<Response, GwError> {
    let missing = || not_found(&format!("kernel spec {name} has no resource {file}"));
    if image_for(&state, &name).is_none() {
        return Err(missing());
    }
    let known = RESOURCES
        .iter()
        .find(|(_, f)| *f == file)
        .ok_or_else(missing)?;
    let bytes = tokio::fs::read(resource_dir(&state).join(known.1))
        .await
        .map_err(|_| missing())?;
    let mime = if file.ends_with(".svg") {
        "image/svg+xml"
    } else {
        "image/png"
    };
    Ok((
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        bytes,
    )
        .into_response())
}

/// Jupyter's kernel model of a sandbox.
fn model(state: &AppState, s: &Sandbox) -> Value {
    let v = s.view();
    json!({
        "id": s.id,
        "name": DEFAULT_SPEC,
        "last_activity": v.last_activity,
        "execution_state": if v.pending_executions > 0 { "busy" } else { "idle" },
        "connections": state.kernel_sessions.connections(s.id),
    })
}

fn kernel_id(raw: &str) -> Result<SandboxId, GwError> {
    uuid::Uuid::parse_str(raw)
        .map(SandboxId)
        .map_err(|_| not_found(&format!("kernel does not exist: {raw}")))
}

pub(super) fn kernel(state: &AppState, raw: &str) -> Result<Arc<Sandbox>, GwError> {
    let id = kernel_id(raw)?;
    state
        .manager
        .get(id)
        .map_err(|_| not_found(&format!("kernel does not exist: {raw}")))
}

/// `GET /api/kernels`.
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(Value::Array(
        state
            .manager
            .list()
            .iter()
            .map(|s| model(&state, s))
            .collect(),
    ))
}

/// Body of `POST /api/kernels`.
#[derive(Debug, Default, Deserialize)]
pub struct StartKernel {
    pub name: Option<String>,
    pub env: Option<BTreeMap<String, Value>>,
    // jupyter_server sends `path`; it has no meaning here.
    #[allow(dead_code)]
    pub path: Option<Value>,
}

/// `POST /api/kernels`: 201 with the model and `Location`.
pub async fn start(State(state): State<AppState>, body: Bytes) -> Result<Response, GwError> {
    let req: StartKernel = if body.iter().all(u8::is_ascii_whitespace) {
        StartKernel::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| GwError(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))?
    };
    let name = req.name.unwrap_or_else(|| DEFAULT_SPEC.to_owned());
    if image_for(&state, &name).is_none() {
        return Err(not_found(&format!("no such kernel spec: {name}")));
    }
    // As Kernel Gateway: only KERNEL_* variables reach the kernel, and
    // KERNEL_WORKING_DIR is ignored (the kernel always starts in its home).
    let env: BTreeMap<String, String> = req
        .env
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with("KERNEL_") && k != "KERNEL_WORKING_DIR")
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect();
    let env = validate_env(env).map_err(|e| GwError(StatusCode::BAD_REQUEST, e.message))?;
    let cfg = state.manager.config();
    let opts = CreateOptions {
        idle_timeout: cfg.default_idle_timeout,
        limits: Some(cfg.default_limits),
        env,
        metadata: serde_json::Map::from_iter([("created_by".to_owned(), json!("api/kernels"))]),
    };
    let manager = state.manager.clone();
    let sandbox = tokio::spawn(async move { manager.create(opts).await })
        .await
        .map_err(|e| GwError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/kernels/{}", sandbox.id))],
        Json(model(&state, &sandbox)),
    )
        .into_response())
}

/// `GET /api/kernels/{id}`.
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, GwError> {
    let k = kernel(&state, &id)?;
    Ok(Json(model(&state, &k)))
}

/// `DELETE /api/kernels/{id}`: 204.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, GwError> {
    let s = kernel(&state, &id)?;
    state.sessions.forget_kernel(s.id);
    let manager = state.manager.clone();
    let id = s.id;
    tokio::spawn(async move { manager.delete(id).await })
        .await
        .map_err(|e| GwError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    // After the delete, so its websockets close saying the kernel is gone.
    state.kernel_sessions.forget_kernel(id);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/kernels/{id}/interrupt`: 204.
pub async fn interrupt(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, GwError> {
    kernel(&state, &id)?.interrupt();
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/kernels/{id}/restart`: 200 with the model; state is lost.
pub async fn restart(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, GwError> {
    let s = kernel(&state, &id)?;
    let r = s.clone();
    tokio::spawn(async move { r.restart().await })
        .await
        .map_err(|e| GwError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(model(&state, &s)))
}

/// Jupyter sessions: a path (a notebook) bound to a kernel. Kept in memory;
/// the minimal model jupyter_server clients expect.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Value>>);

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Value>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the sessions of a deleted kernel.
    pub fn forget_kernel(&self, id: SandboxId) {
        let id = id.to_string();
        self.lock().retain(|_, s| s["kernel"]["id"] != id.as_str());
    }
}

fn session_view(state: &AppState, s: &Value) -> Option<Value> {
    let kid = s["kernel"]["id"].as_str()?;
    let k = kernel(state, kid).ok()?;
    let mut s = s.clone();
    s["kernel"] = model(state, &k);
    Some(s)
}

/// `GET /api/sessions`.
pub async fn sessions(State(state): State<AppState>) -> Json<Value> {
    let all: Vec<Value> = state.sessions.lock().values().cloned().collect();
    Json(Value::Array(
        all.iter().filter_map(|s| session_view(&state, s)).collect(),
    ))
}

/// Body of `POST /api/sessions`.
#[derive(Debug, Deserialize)]
pub struct StartSession {
    pub path: Option<String>,
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub kernel: Option<SessionKernel>,
}

/// The kernel part of `POST /api/sessions`.
#[derive(Debug, Deserialize)]
pub struct SessionKernel {
    pub id: Option<String>,
    pub name: Option<String>,
}

/// `POST /api/sessions`: binds a path to a kernel (an existing one, or a new one).
pub async fn start_session(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, GwError> {
    let req: StartSession = serde_json::from_slice(&body)
        .map_err(|e| GwError(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))?;
    let kernel_model = match req.kernel.as_ref().and_then(|k| k.id.as_deref()) {
        Some(id) => {
            let k = kernel(&state, id)?;
            model(&state, &k)
        }
        None => {
            let name = req.kernel.as_ref().and_then(|k| k.name.clone());
            let body = Bytes::from(json!({ "name": name }).to_string());
            let resp = start(State(state.clone()), body).await?;
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .map_err(|e| GwError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| GwError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        }
    };
    let id = uuid::Uuid::new_v4().to_string();
    let session = json!({
        "id": id,
        "path": req.path.clone().unwrap_or_default(),
        "name": req.name.clone().unwrap_or_default(),
        "type": req.kind.clone().unwrap_or_else(|| "notebook".into()),
        "kernel": kernel_model,
        "notebook": {"path": req.path.unwrap_or_default(), "name": req.name.unwrap_or_default()},
    });
    state.sessions.lock().insert(id.clone(), session.clone());
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/sessions/{id}"))],
        Json(session),
    )
        .into_response())
}

/// `GET /api/sessions/{id}`.
pub async fn get_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, GwError> {
    let s = state.sessions.lock().get(&id).cloned();
    s.and_then(|s| session_view(&state, &s))
        .map(Json)
        .ok_or_else(|| not_found(&format!("session not found: {id}")))
}

/// `DELETE /api/sessions/{id}`: 204; the kernel is shut down with it.
pub async fn delete_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, GwError> {
    let s = state
        .sessions
        .lock()
        .remove(&id)
        .ok_or_else(|| not_found(&format!("session not found: {id}")))?;
    if let Some(kid) = s["kernel"]["id"].as_str() {
        if let Ok(k) = kernel(&state, kid) {
            let manager = state.manager.clone();
            let _ = tokio::spawn(async move { manager.delete(k.id).await }).await;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
