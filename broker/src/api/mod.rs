//! The HTTP surface: `/healthz` and the `/v1` API, with auth, body limits,
//! JSON errors for every rejection (404, 405, 413, panics), and request logs.
//!
//! - [`error`]: `ApiError`, the one error shape.
//! - [`body`]: JSON body extractors.
//! - [`sandboxes`]: the `/v1/sandboxes` handlers.
//! - [`executions`]: executing code, streaming, re-attaching, input.
//! - [`files`]: the file API.
//! - [`traces`]: notebook export and the full trace.
//! - [`replay`]: replaying notebooks and recorded sessions in fresh sandboxes.
//! - [`gateway`]: the Jupyter kernels REST API (`/api`), for Jupyter clients.
//! - [`channels`]: the Jupyter kernel websocket.

pub mod body;
pub mod channels;
pub mod error;
pub mod executions;
pub mod files;
pub mod gateway;
pub mod kernel_sessions;
pub mod replay;
pub mod sandboxes;
pub mod traces;

use crate::sandbox::Manager;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::ApiError;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    /// SHA-256 of the API key, compared in constant time.
    key_digest: Option<[u8; 32]>,
    /// Jupyter sessions of the `/api` surface.
    pub sessions: Arc<gateway::Sessions>,
    /// Kernel websocket sessions (reconnect and replay).
    pub kernel_sessions: Arc<kernel_sessions::Hub>,
}

impl AppState {
    /// State for `manager`, requiring `api_key` as a bearer token when set.
    pub fn new(manager: Arc<Manager>, api_key: Option<&str>) -> Self {
        Self {
            manager,
            key_digest: api_key.map(|k| Sha256::digest(k.as_bytes()).into()),
            sessions: Arc::default(),
            kernel_sessions: Arc::default(),
        }
    }
}

/// Why a request was not let in.
pub(crate) enum AuthFailure {
    Missing,
    Wrong,
}

impl AuthFailure {
    fn message(&self) -> &'static str {
        match self {
            Self::Missing => {
                "send the API key as 'Authorization: Bearer <key>', 'Authorization: token <key>' or '?token=<key>'"
            }
            Self::Wrong => "the API key is wrong",
        }
    }
}

/// The key a request presents: `Authorization: Bearer K`, `Authorization:
/// token K` (Jupyter's scheme) or `?token=K` (for clients that cannot set
/// headers, such as websockets and EventSource).
fn presented_key(req: &Request) -> Option<String> {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
                .then(|| key.trim().to_owned())
        });
    header.or_else(|| {
        req.uri().query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "token")
                .map(|(_, v)| percent_decode(v))
        })
    })
}

/// Decodes `%XX` escapes (and `+` as a space) of a query value.
fn percent_decode(v: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi * 16 + lo);
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks the API key, when the server has one, in constant time.
pub(crate) fn check_key(state: &AppState, req: &Request) -> Result<(), AuthFailure> {
    let Some(want) = state.key_digest else {
        return Ok(());
    };
    let given = presented_key(req).ok_or(AuthFailure::Missing)?;
    let digest = Sha256::digest(given.as_bytes());
    if bool::from(digest.as_slice().ct_eq(&want)) {
        Ok(())
    } else {
        Err(AuthFailure::Wrong)
    }
}

async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check_key(&state, &req) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why.message()).into_response()
        }
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    let m = &state.manager;
    let status = if m.is_shutting_down() {
        "shutting_down"
    } else {
        "ok"
    };
    let code = if m.is_shutting_down() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "sandboxes": m.list().len(),
        "image": {"name": m.image().name, "version": m.image().version},
        "pool": {"size": m.config().pool_size, "ready": m.pool_ready()},
        "zygote": m.zygote().map(|z| z.status()),
    });
    (code, Json(body)).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
    .into_response()
}

/// The whole HTTP application.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/sandboxes", post(sandboxes::create).get(sandboxes::list))
        .route(
            "/sandboxes/{id}",
            get(sandboxes::get_one).delete(sandboxes::delete),
        )
        .route("/sandboxes/{id}/execute", post(executions::execute))
        .route("/sandboxes/{id}/executions", get(executions::list))
        .route("/sandboxes/{id}/notebook", get(traces::notebook))
        .route("/sandboxes/{id}/trace", get(traces::trace))
        .route("/sandboxes/{id}/replay", post(replay::replay_sandbox))
        .route("/notebooks/execute", post(replay::execute_notebook))
        .route("/sandboxes/{id}/executions/{eid}", get(executions::get_one))
        .route(
            "/sandboxes/{id}/executions/{eid}/interrupt",
            post(executions::interrupt),
        )
        .route(
            "/sandboxes/{id}/executions/{eid}/input",
            post(executions::input),
        )
        .route("/sandboxes/{id}/interrupt", post(sandboxes::interrupt))
        .route("/sandboxes/{id}/restart", post(sandboxes::restart))
        .route("/sandboxes/{id}/commands", post(sandboxes::command))
        .route(
            "/sandboxes/{id}/files",
            get(files::list).post(files::upload_multipart.layer(DefaultBodyLimit::disable())),
        )
        .route(
            "/sandboxes/{id}/files/{*path}",
            get(files::get).put(files::put).delete(files::delete),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    let jupyter = Router::new()
        .route("/", get(gateway::info))
        .route("/kernelspecs", get(gateway::kernelspecs))
        .route("/kernelspecs/{name}", get(gateway::kernelspec))
        .route("/kernels", get(gateway::list).post(gateway::start))
        .route(
            "/kernels/{id}",
            get(gateway::get_one).delete(gateway::delete),
        )
        .route("/kernels/{id}/interrupt", post(gateway::interrupt))
        .route("/kernels/{id}/channels", get(channels::channels))
        .route("/kernels/{id}/restart", post(gateway::restart))
        .route(
            "/sessions",
            get(gateway::sessions).post(gateway::start_session),
        )
        .route(
            "/sessions/{id}",
            get(gateway::get_session).delete(gateway::delete_session),
        )
        .fallback(gateway::fallback)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            gateway::require_key,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/kernelspecs/{name}/{*file}",
            get(gateway::kernelspec_resource),
        )
        .nest("/api", jupyter)
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Runs `fut` in its own task, so it completes even if the client disconnects
/// (no kernel is orphaned, no execution is cut off half-way).
pub async fn detached<T, E>(
    fut: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    match tokio::spawn(fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => {
            tracing::error!(error = %e, "request task failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_tokens_are_decoded_without_panicking() {
        use super::percent_decode as d;
        assert_eq!(d("a%2Fb+c"), "a/b c");
        assert_eq!(d("%"), "%");
        assert_eq!(d("%a"), "%a");
        assert_eq!(d("%aé"), "%aé");
        assert_eq!(d("%zz"), "%zz");
    }
}
