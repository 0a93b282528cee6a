//! JSON request bodies with errors in the API's shape.
//!
//! The body is read up to the configured limit (413 beyond it) and parsed with
//! serde_json whatever the `Content-Type`, so `curl -d '{…}'` works as is.
//! Syntax errors are 400 `invalid_json`; a well-formed body with wrong or
//! unknown fields is 422 `invalid_request`.

use super::error::ApiError;
use super::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// A required JSON body.
pub struct JsonBody<T>(pub T);

/// An optional JSON body: empty means `T::default()`.
pub struct OptionalJsonBody<T>(pub T);

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is larger than the server accepts",
    )
}

/// How much of a refused body is read and thrown away so the client, still
/// sending, gets the 413 instead of a broken pipe. Beyond this (or after
/// [`DRAIN_FOR`]) the connection is closed instead.
const DRAIN_MAX: usize = 64 * 1024 * 1024;
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

async fn read(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    use axum::http::header;
    use futures_util::StreamExt;
    let limit = state.manager.config().max_body_bytes;
    let headers = req.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = req.into_body().into_data_stream();
    if declared.is_some_and(|n| n > limit as u64) {
        // A client that waits for `100 Continue` never sends the body; one
        // that does not is already sending it, so read it away first.
        if !expects_continue && declared.is_some_and(|n| n <= DRAIN_MAX as u64) {
            drain(body).await;
        }
        return Err(too_large());
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            drain(body).await;
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads and discards the rest of a body, up to [`DRAIN_MAX`] bytes within
/// [`DRAIN_FOR`].
async fn drain(mut body: axum::body::BodyDataStream) {
    use futures_util::StreamExt;
    let _ = tokio::time::timeout(DRAIN_FOR, async {
        let mut seen = 0usize;
        while let Some(Ok(chunk)) = body.next().await {
            seen += chunk.len();
            if seen > DRAIN_MAX {
                break;
            }
        }
    })
    .await;
}

/// Parses JSON, mapping serde's error classes to statuses.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::invalid(e.to_string()),
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {e}"),
            ),
        }
    })
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = read(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "empty_body",
                "this endpoint needs a JSON body",
            ));
        }
        parse(&bytes).map(JsonBody)
    }
}

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = read(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse(&bytes).map(OptionalJsonBody)
    }
}

/// Query parameters, with rejections in the API's error shape (400).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|rej| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", rej.body_text()))
    }
}

/// Path parameters, with rejections in the API's error shape (400).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|rej| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", rej.body_text()))
    }
}
