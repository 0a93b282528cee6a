//! Traces: every sandbox, execution and command recorded durably in SQLite
//! (`<data-dir>/trace.db`, WAL), readable after the sandbox is gone, and
//! exported as a notebook ([`notebook`]).
//!
//! What is written, and when:
//! - a sandbox when its kernel first answers (image, version, limits,
//!   metadata, `language_info`), and its deletion time;
//! - an execution when it is accepted (code, `queued`), before the client
//!   hears of it, and its result before the client receives it. So every
//!   execution a client was told about is in the database, even after a
//!   `kill -9`: one that never finished is marked `lost` at the next start;
//! - a command with its request and result.
//!
//! Rich output values over [`BLOB_MIN`] bytes (PNGs, big HTML) are stored once
//! in `blobs` by SHA-256 and referenced as `{"$blob": hash}`.
//!
//! Traces outlive their sandbox by the retention period (`--trace-retention`,
//! default 7 days); [`Store::prune`] removes older ones. [`replay`] reads
//! notebooks and compares replayed outputs with recorded ones.

pub mod notebook;
pub mod replay;

use cellblock_protocol::outputs::Output;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Output values at least this long are stored once, by hash.
pub const BLOB_MIN: usize = 1024;

/// Errors of the trace store.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("trace JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("trace file: {0}")]
    Io(#[source] std::io::Error),
}

/// The SQLite trace store.
pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    language_info TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    deleted_at TEXT,
    deleted_unix REAL
);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    code TEXT NOT NULL,
    state TEXT NOT NULL,
    status TEXT,
    execution_count INTEGER,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    duration_ms INTEGER,
    result TEXT
);
CREATE INDEX IF NOT EXISTS executions_by_sandbox ON executions(sandbox_id, ordinal);
CREATE TABLE IF NOT EXISTS commands (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    started_at TEXT NOT NULL,
    request TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    hash TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
";

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn iso(t: SystemTime) -> String {
    cellblock_protocol::message::iso8601(t)
}

/// An execution as stored.
#[derive(Debug, Clone)]
pub struct StoredExecution {
    pub id: String,
    pub code: String,
    pub state: String,
    pub status: Option<String>,
    pub execution_count: Option<i64>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// The result with blobs put back, once finished.
    pub result: Option<Value>,
}

impl StoredExecution {
    /// The same shape as a live execution's view.
    pub fn view(&self, sandbox_id: &str, detail: bool) -> Value {
        let mut v = json!({
            "execution_id": self.id,
            "sandbox_id": sandbox_id,
            "state": self.state,
            "status": self.status,
            "execution_count": self.execution_count,
            "duration_ms": self.duration_ms,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "input_request": null,
            "code": if detail { self.code.clone() } else { preview(&self.code) },
        });
        if detail {
            if let Some(r) = &self.result {
                let mut r = r.clone();
                if let Some(m) = r.as_object_mut() {
                    m.remove("layout");
                }
                v["result"] = r;
            }
        }
        v
    }
}

/// The start of some code, for lists.
pub(crate) fn preview(code: &str) -> String {
    const MAX: usize = 200;
    if code.len() <= MAX {
        return code.to_owned();
    }
    let mut cut = MAX;
    while !code.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &code[..cut])
}

impl Store {
    /// Opens (or creates) the store; executions a killed broker left
    /// unfinished are marked `lost` and its sandboxes ended.
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        let conn = Connection::open(path)?;
        // Code and outputs of every sandbox: root only (SQLite gives the WAL
        // and shared-memory files the database's mode).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(TraceError::Io)?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let now = SystemTime::now();
        let lost = json!({
            "status": "lost",
            "error": {
                "ename": "BrokerStopped",
                "evalue": "the broker stopped before this execution finished",
                "traceback": [],
            },
        });
        conn.execute(
            "UPDATE executions SET state = 'finished', status = 'lost', finished_at = ?1, result = ?2
             WHERE state != 'finished'",
            params![iso(now), lost.to_string()],
        )?;
        conn.execute(
            "UPDATE sandboxes SET deleted_at = ?1, deleted_unix = ?2 WHERE deleted_at IS NULL",
            params![iso(now), unix(now)],
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new sandbox.
    pub fn sandbox_created(
        &self,
        id: &str,
        record: &Value,
        language_info: &Value,
        created: SystemTime,
    ) -> Result<(), TraceError> {
        self.lock().execute(
            "INSERT OR REPLACE INTO sandboxes (id, record, language_info, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, record.to_string(), language_info.to_string(), iso(created)],
        )?;
        Ok(())
    }

    /// Updates the kernel's `language_info` (after a restart).
    pub fn set_language_info(&self, id: &str, language_info: &Value) -> Result<(), TraceError> {
        self.lock().execute(
            "UPDATE sandboxes SET language_info = ?2 WHERE id = ?1",
            params![id, language_info.to_string()],
        )?;
        Ok(())
    }

    /// Records a sandbox's deletion, with its final record.
    pub fn sandbox_deleted(&self, id: &str, record: &Value) -> Result<(), TraceError> {
        let now = SystemTime::now();
        self.lock().execute(
            "UPDATE sandboxes SET deleted_at = ?2, deleted_unix = ?3, record = ?4
             WHERE id = ?1 AND deleted_at IS NULL",
            params![id, iso(now), unix(now), record.to_string()],
        )?;
        Ok(())
    }

    /// Records an accepted execution.
    pub fn execution_submitted(
        &self,
        sandbox_id: &str,
        id: &str,
        ordinal: u64,
        code: &str,
        created: SystemTime,
    ) -> Result<(), TraceError> {
        // Cached statements: these three run for every execution.
        self.lock().prepare_cached(
            "INSERT INTO executions (id, sandbox_id, ordinal, code, state, created_at) VALUES (?1, ?2, ?3, ?4, 'queued', ?5)",
        )?
        .execute(params![id, sandbox_id, ordinal as i64, code, iso(created)])?;
        Ok(())
    }

    /// Records that an execution began running.
    pub fn execution_started(&self, id: &str, started: SystemTime) -> Result<(), TraceError> {
        self.lock()
            .prepare_cached(
                "UPDATE executions SET state = 'running', started_at = ?2 WHERE id = ?1",
            )?
            .execute(params![id, iso(started)])?;
        Ok(())
    }

    /// Records an execution's result.
    pub fn execution_finished(&self, f: Finished<'_>) -> Result<(), TraceError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for (hash, data) in &f.blobs {
            tx.prepare_cached("INSERT OR IGNORE INTO blobs (hash, data) VALUES (?1, ?2)")?
                .execute(params![hash, data])?;
        }
        tx.prepare_cached(
            "UPDATE executions SET state = 'finished', status = ?2, execution_count = ?3,
             started_at = ?4, finished_at = ?5, duration_ms = ?6, result = ?7 WHERE id = ?1",
        )?
        .execute(params![
            f.id,
            f.status,
            f.execution_count,
            f.started.map(iso),
            iso(f.finished),
            f.duration_ms as i64,
            f.result_json
        ])?;
        tx.commit()?;
        Ok(())
    }

    /// Records a command run in a sandbox.
    pub fn command_ran(
        &self,
        sandbox_id: &str,
        started: SystemTime,
        request: &Value,
        result: &Value,
    ) -> Result<(), TraceError> {
        self.lock().execute(
            "INSERT INTO commands (sandbox_id, started_at, request, result) VALUES (?1, ?2, ?3, ?4)",
            params![sandbox_id, iso(started), request.to_string(), result.to_string()],
        )?;
        Ok(())
    }

    /// Deletes traces of sandboxes deleted more than `retention` ago, and
    /// blobs no execution refers to any more. Returns how many sandboxes went.
    pub fn prune(&self, retention: Duration) -> Result<usize, TraceError> {
        let cutoff = unix(SystemTime::now()) - retention.as_secs_f64();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM sandboxes WHERE deleted_unix IS NOT NULL AND deleted_unix < ?1",
            params![cutoff],
        )?;
        if n > 0 {
            tx.execute(
                "DELETE FROM blobs WHERE NOT EXISTS (
                     SELECT 1 FROM executions WHERE result LIKE '%' || blobs.hash || '%')",
                [],
            )?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// A sandbox's record: what it was created with, `language_info`, and
    /// its creation and deletion times.
    pub fn sandbox(&self, id: &str) -> Result<Option<Value>, TraceError> {
        let row = self
            .lock()
            .query_row(
                "SELECT record, language_info, created_at, deleted_at FROM sandboxes WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((record, li, created, deleted)) = row else {
            return Ok(None);
        };
        let mut v: Value = serde_json::from_str(&record)?;
        v["language_info"] = serde_json::from_str(&li)?;
        v["created_at"] = json!(created);
        v["deleted_at"] = json!(deleted);
        Ok(Some(v))
    }

    /// A sandbox's executions in submission order, results with blobs put back.
    pub fn executions(&self, sandbox_id: &str) -> Result<Vec<StoredExecution>, TraceError> {
        self.query_executions("WHERE sandbox_id = ?1 ORDER BY ordinal", sandbox_id, true)
    }

    /// A sandbox's executions without their results, for lists.
    pub fn execution_summaries(
        &self,
        sandbox_id: &str,
    ) -> Result<Vec<StoredExecution>, TraceError> {
        self.query_executions("WHERE sandbox_id = ?1 ORDER BY ordinal", sandbox_id, false)
    }

    /// One execution of a sandbox.
    pub fn execution(
        &self,
        sandbox_id: &str,
        id: &str,
    ) -> Result<Option<StoredExecution>, TraceError> {
        let all = self.query_executions(
            "WHERE sandbox_id = ?1 AND id = ?2",
            &format!("{sandbox_id}\u{0}{id}"),
            true,
        )?;
        Ok(all.into_iter().next())
    }

    fn query_executions(
        &self,
        filter: &str,
        key: &str,
        with_results: bool,
    ) -> Result<Vec<StoredExecution>, TraceError> {
        let conn = self.lock();
        let result = if with_results { "result" } else { "NULL" };
        let mut stmt = conn.prepare(&format!(
            "SELECT id, code, state, status, execution_count, created_at, started_at, finished_at, duration_ms, {result}
             FROM executions {filter}"
        ))?;
        let map = |r: &rusqlite::Row<'_>| {
            Ok((
                StoredExecution {
                    id: r.get(0)?,
                    code: r.get(1)?,
                    state: r.get(2)?,
                    status: r.get(3)?,
                    execution_count: r.get(4)?,
                    created_at: r.get(5)?,
                    started_at: r.get(6)?,
                    finished_at: r.get(7)?,
                    duration_ms: r.get(8)?,
                    result: None,
                },
                r.get::<_, Option<String>>(9)?,
            ))
        };
        let rows: Vec<(StoredExecution, Option<String>)> = match key.split_once('\u{0}') {
            Some((a, b)) => stmt
                .query_map(params![a, b], map)?
                .collect::<Result<_, _>>()?,
            None => stmt
                .query_map(params![key], map)?
                .collect::<Result<_, _>>()?,
        };
        drop(stmt);
        let mut out = Vec::with_capacity(rows.len());
        for (mut e, raw) in rows {
            if let Some(raw) = raw {
                let mut v: Value = serde_json::from_str(&raw)?;
                restore_blobs(&conn, &mut v)?;
                e.result = Some(v);
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Commands run in a sandbox, oldest first.
    pub fn commands(&self, sandbox_id: &str) -> Result<Vec<Value>, TraceError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT started_at, request, result FROM commands WHERE sandbox_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt
            .query_map(params![sandbox_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(at, req, res)| {
                Ok(json!({
                    "started_at": at,
                    "request": serde_json::from_str::<Value>(&req)?,
                    "result": serde_json::from_str::<Value>(&res)?,
                }))
            })
            .collect()
    }
}

/// A finished execution, ready to be written.
pub struct Finished<'a> {
    pub id: &'a str,
    pub started: Option<SystemTime>,
    pub finished: SystemTime,
    pub status: &'a str,
    pub execution_count: Option<i64>,
    pub duration_ms: u64,
    /// The result as the API shows it, plus `layout`, with large output
    /// values replaced by `{"$blob": hash}`.
    pub result_json: String,
    /// `(hash, value)` of every value moved out.
    pub blobs: Vec<(String, String)>,
}

/// Copies of `outputs` whose large string values are replaced by blob
/// references, and the values moved out.
pub fn blob_outputs(outputs: &[Output]) -> (Vec<Output>, Vec<(String, String)>) {
    let mut blobs = Vec::new();
    let stored = outputs
        .iter()
        .map(|o| {
            let mut o = o.clone();
            for v in o.data.values_mut() {
                if let Value::String(s) = v {
                    if s.len() >= BLOB_MIN {
                        let hash = hex::encode(Sha256::digest(s.as_bytes()));
                        let text = std::mem::take(s);
                        *v = json!({ "$blob": hash });
                        blobs.push((hash, text));
                    }
                }
            }
            o
        })
        .collect();
    (stored, blobs)
}

/// Puts blob values back into a stored result.
fn restore_blobs(conn: &Connection, result: &mut Value) -> Result<(), TraceError> {
    let Some(outputs) = result.get_mut("outputs").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for o in outputs {
        let Some(data) = o.get_mut("data").and_then(Value::as_object_mut) else {
            continue;
        };
        for v in data.values_mut() {
            let Some(hash) = v.get("$blob").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let text: Option<String> = conn
                .query_row(
                    "SELECT data FROM blobs WHERE hash = ?1",
                    params![hash],
                    |r| r.get(0),
                )
                .optional()?;
            *v = Value::String(text.unwrap_or_default());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_with_blobs_stored_once() {
        let dir = std::env::temp_dir().join(format!("cbtrace-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("t.db")).unwrap();
        let now = SystemTime::now();
        store
            .sandbox_created("s", &json!({"id": "s"}), &json!({"name": "python"}), now)
            .unwrap();
        let png = "A".repeat(5000);
        for (i, id) in ["e1", "e2"].iter().enumerate() {
            store
                .execution_submitted("s", id, i as u64, "x", now)
                .unwrap();
            let mut data = serde_json::Map::new();
            data.insert("image/png".into(), json!(png));
            data.insert("text/plain".into(), json!("<Figure>"));
            let outputs = vec![Output {
                kind: "display_data",
                data,
                metadata: Default::default(),
                display_id: None,
                execution_count: None,
            }];
            let (stored, blobs) = blob_outputs(&outputs);
            store
                .execution_finished(Finished {
                    id,
                    started: Some(now),
                    finished: now,
                    status: "ok",
                    execution_count: Some(i as i64 + 1),
                    duration_ms: 1,
                    result_json: json!({"status": "ok", "outputs": stored}).to_string(),
                    blobs,
                })
                .unwrap();
        }
        let blobs: i64 = store
            .lock()
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(blobs, 1, "the same PNG is stored once");
        let all = store.executions("s").unwrap();
        assert_eq!(all.len(), 2);
        let r = all[1].result.as_ref().unwrap();
        assert_eq!(r["outputs"][0]["data"]["image/png"], png.as_str());
        assert_eq!(r["outputs"][0]["data"]["text/plain"], "<Figure>");
        assert!(store.execution("s", "e1").unwrap().is_some());
        assert!(store.execution("other", "e1").unwrap().is_none());

        // A reopened store marks what never finished as lost.
        store.execution_submitted("s", "e3", 2, "y", now).unwrap();
        drop(store);
        let store = Store::open(&dir.join("t.db")).unwrap();
        let e3 = store.execution("s", "e3").unwrap().unwrap();
        assert_eq!(e3.status.as_deref(), Some("lost"));
        assert!(store.sandbox("s").unwrap().unwrap()["deleted_at"].is_string());
        assert_eq!(store.prune(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(store.prune(Duration::ZERO).unwrap(), 1);
        assert!(store.sandbox("s").unwrap().is_none());
        assert!(store.executions("s").unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
