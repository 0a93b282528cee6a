//! `/v1/sandboxes/{id}/files` handlers: upload, download, list, delete.
//!
//! Paths are relative to the sandbox's `/home/user` and resolved on the host
//! through [`isolation::beneath`](crate::isolation::beneath): no `..`, no
//! symlink followed, no fifo or device read. Uploads stream into a temporary
//! file beside the target and are renamed into place only when complete, so a
//! failed, cut-off or over-quota upload leaves nothing behind.

use super::body::{ApiPath as Path, ApiQuery as Query};
use super::error::ApiError;
use super::AppState;
use crate::isolation::beneath::{validate, BeneathError, Parents, Root};
use axum::body::{Body, Bytes};
use axum::extract::{Multipart, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

/// Largest file returned inline by `?format=base64|text`.
const MAX_INLINE_BYTES: u64 = 64 * 1024 * 1024;
/// Most entries in one listing.
const MAX_LIST_ENTRIES: usize = 10_000;

impl From<BeneathError> for ApiError {
    fn from(e: BeneathError) -> Self {
        use BeneathError::*;
        let (status, code) = match &e {
            InvalidPath(_) => (StatusCode::BAD_REQUEST, "invalid_path"),
            NotFound(_) => (StatusCode::NOT_FOUND, "file_not_found"),
            Refused(_) => (StatusCode::FORBIDDEN, "path_refused"),
            NotAFile(_) => (StatusCode::BAD_REQUEST, "not_a_file"),
            NotADirectory(_) => (StatusCode::BAD_REQUEST, "not_a_directory"),
            IsADirectory(_) => (StatusCode::BAD_REQUEST, "is_a_directory"),
            NotEmpty(_) => (StatusCode::CONFLICT, "directory_not_empty"),
            NoSpace => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            Sys { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "file operation failed");
        }
        ApiError::new(status, code, e.to_string())
    }
}

/// What an upload stored.
#[derive(Debug, Serialize)]
pub struct Stored {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Removes the temporary file unless the upload was committed; also when the
/// client goes away and the handler is dropped mid-stream.
struct Temp<'a> {
    root: &'a Root,
    parents: &'a Parents,
    name: PathBuf,
    committed: bool,
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.root.discard(&self.parents.dir, &self.name);
            self.root.remove_created(&self.parents.created);
        }
    }
}

fn write_error(e: std::io::Error) -> ApiError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => BeneathError::NoSpace.into(),
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("writing: {e}"),
        ),
    }
}

/// Streams `body` into `rel` atomically.
async fn store<S, E>(
    root: &Root,
    cgroup_procs: &[PathBuf],
    raw_path: &str,
    mut body: S,
) -> Result<Stored, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let rel = validate(raw_path)?;
    let parents = root.make_parents(&rel)?;
    let (file, temp_name) = match root.create_temp(&parents.dir) {
        Ok(t) => t,
        Err(e) => {
            root.remove_created(&parents.created);
            return Err(e.into());
        }
    };
    let mut temp = Temp {
        root,
        parents: &parents,
        name: temp_name,
        committed: false,
    };
    // The bytes are written by a helper in the sandbox's cgroup, so the
    // pages are charged to the sandbox (see isolation::writer).
    let internal =
        |what: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", what);
    let mut writer = tokio::process::Command::new(crate::isolation::HELPER_BINARY)
        .arg("__write")
        .args(cgroup_procs)
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::from(file))
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| internal(format!("starting the upload writer: {e}")))?;
    let mut pipe = writer
        .stdin
        .take()
        .ok_or_else(|| internal("no writer stdin".into()))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "upload_interrupted",
                format!("reading the upload: {e}"),
            )
        })?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        if pipe.write_all(&chunk).await.is_err() {
            break; // the writer stopped: its status says why
        }
    }
    drop(pipe);
    let status = writer
        .wait()
        .await
        .map_err(|e| internal(format!("waiting for the upload writer: {e}")))?;
    match status.code() {
        Some(0) => {}
        Some(crate::isolation::writer::NO_SPACE) => return Err(BeneathError::NoSpace.into()),
        _ => return Err(internal(format!("the upload writer failed ({status})"))),
    }
    root.commit(&parents.dir, &temp.name, &parents.name)?;
    temp.committed = true;
    Ok(Stored {
        path: rel.display().to_string(),
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

fn sandbox_root(state: &AppState, id: &str) -> Result<Root, ApiError> {
    Ok(sandbox_of(state, id)?.files()?)
}

fn sandbox_of(
    state: &AppState,
    id: &str,
) -> Result<std::sync::Arc<crate::sandbox::Sandbox>, ApiError> {
    Ok(state.manager.get(super::sandboxes::parse_id(id)?)?)
}

/// `PUT /v1/sandboxes/{id}/files/{*path}`: the raw body becomes the file.
pub async fn put(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    body: Body,
) -> Result<Json<Stored>, ApiError> {
    let sandbox = sandbox_of(&state, &id)?;
    let root = sandbox.files()?;
    let procs = sandbox.cgroup_procs();
    Ok(Json(
        store(&root, &procs, &path, body.into_data_stream()).await?,
    ))
}

/// `POST /v1/sandboxes/{id}/files` (multipart): each file part is stored at
/// its filename, or at the value of a `path` field sent just before it.
pub async fn upload_multipart(
    State(state): State<AppState>,
    Path(id): Path<String>,
    mut form: Multipart,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sandbox = sandbox_of(&state, &id)?;
    let root = sandbox.files()?;
    let procs = sandbox.cgroup_procs();
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_multipart", e.body_text())
    };
    let mut next_path: Option<String> = None;
    let mut stored = Vec::new();
    while let Some(field) = form.next_field().await.map_err(bad)? {
        if field.file_name().is_none() && field.name() == Some("path") {
            next_path = Some(field.text().await.map_err(bad)?);
            continue;
        }
        let path = next_path
            .take()
            .or_else(|| field.file_name().map(str::to_owned))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_path",
                    "a file part needs a filename or a preceding 'path' field",
                )
            })?;
        stored.push(store(&root, &procs, &path, field).await?);
    }
    if stored.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_multipart",
            "no file parts in the form",
        ));
    }
    Ok(Json(serde_json::json!({ "files": stored })))
}

/// Query of a download.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    pub format: Option<String>,
}

/// `GET /v1/sandboxes/{id}/files/{*path}`: the bytes, streamed, with a
/// guessed content type; or inline JSON with `?format=base64|text`.
pub async fn get(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    Query(q): Query<GetQuery>,
) -> Result<Response, ApiError> {
    let root = sandbox_root(&state, &id)?;
    let rel = validate(&path)?;
    let (file, size) = root.read_file(&rel)?;
    let mime = mime_guess::from_path(&rel).first_or_octet_stream();
    let inline = |content: serde_json::Value, encoding: &str| {
        Json(serde_json::json!({
            "path": rel.display().to_string(), "size": size, "mime": mime.essence_str(),
            "encoding": encoding, "content": content,
        }))
        .into_response()
    };
    match q.format.as_deref() {
        None => {
            let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
            Ok((
                [
                    (header::CONTENT_TYPE, mime.essence_str().to_owned()),
                    (header::CONTENT_LENGTH, size.to_string()),
                ],
                Body::from_stream(stream),
            )
                .into_response())
        }
        Some(f @ ("base64" | "text")) => {
            if size > MAX_INLINE_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large_for_inline",
                    format!("files over {MAX_INLINE_BYTES} bytes are only served raw"),
                ));
            }
            let bytes = tokio::task::spawn_blocking(move || {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut { file }, &mut buf).map(|_| buf)
            })
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            })?
            .map_err(write_error)?;
            if f == "base64" {
                let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
                return Ok(inline(b64.into(), "base64"));
            }
            match String::from_utf8(bytes) {
                Ok(text) => Ok(inline(text.into(), "utf-8")),
                Err(_) => Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "not_text",
                    "the file is not UTF-8 text; use format=base64",
                )),
            }
        }
        Some(other) => Err(ApiError::invalid(format!(
            "format must be base64 or text, not {other:?}"
        ))),
    }
}

/// Query of a listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pub path: String,
    pub depth: Option<u32>,
}

/// `GET /v1/sandboxes/{id}/files?path=dir&depth=1`.
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let root = sandbox_root(&state, &id)?;
    let rel = validate(&q.path)?;
    let depth = q.depth.unwrap_or(1);
    if !(1..=32).contains(&depth) {
        return Err(ApiError::invalid("depth must be between 1 and 32"));
    }
    let (entries, truncated) = root.list(&rel, depth, MAX_LIST_ENTRIES)?;
    Ok(Json(serde_json::json!({
        "path": rel.display().to_string(), "entries": entries, "truncated": truncated,
    })))
}

/// Query of a delete.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    pub recursive: bool,
}

/// `DELETE /v1/sandboxes/{id}/files/{*path}` (`?recursive=true` for a
/// non-empty directory). A symlink is removed, never its target.
pub async fn delete(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let root = sandbox_root(&state, &id)?;
    root.remove(&validate(&path)?, q.recursive)?;
    Ok(StatusCode::NO_CONTENT)
}
