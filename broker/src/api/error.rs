//! The one error type of the HTTP API: `{"error":{"code","message"}}` with a
//! fitting status. Client mistakes are 4xx with a stable `code`; details of
//! server faults go to the log.

use crate::sandbox::SandboxError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    /// An error with a status, a stable code and a message for humans.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 422 for a request that parsed but is not acceptable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> Self {
        use SandboxError::*;
        let (status, code) = match &e {
            NotFound(_) => (StatusCode::NOT_FOUND, "sandbox_not_found"),
            TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_sandboxes"),
            Deleted => (StatusCode::GONE, "sandbox_deleted"),
            QueueFull(_) => (StatusCode::TOO_MANY_REQUESTS, "queue_full"),
            NotRunning => (StatusCode::CONFLICT, "sandbox_not_running"),
            ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            KernelStart(_) => (StatusCode::SERVICE_UNAVAILABLE, "kernel_start_failed"),
            Prepare { .. } | Cgroup(_) | Home(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        Self::new(status, code, e.to_string())
    }
}
