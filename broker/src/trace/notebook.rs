//! A recorded session as an nbformat 4.5 notebook.
//!
//! One code cell per execution that ran (cancelled ones never did), in
//! submission order:
//! - `id`: the execution id without dashes (32 hex digits, within nbformat's
//!   `^[a-zA-Z0-9-_]{1,64}$`);
//! - `execution_count` and outputs in the order the kernel produced them:
//!   merged `stream` text, `display_data` and `execute_result` (with the
//!   display rules applied), and the `error` last;
//! - `metadata.execution`: the timing keys JupyterLab records
//!   (`iopub.status.busy`, `iopub.execute_input`, `shell.execute_reply`,
//!   `iopub.status.idle`), and `metadata.cellblock`: id, status, duration.
//!
//! Outputs carry no `transient` and no `display_id` (nbformat forbids them).
//! The notebook's metadata holds the `kernelspec` (`python3`, so any Jupyter
//! with ipykernel re-runs it) and the kernel's `language_info`.

use super::StoredExecution;
use cellblock_protocol::outputs::{Segment, StreamName};
use serde_json::{json, Value};

/// The nbformat outputs of one stored result.
pub fn cell_outputs(result: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let text = |name: &str| result[name].as_str().unwrap_or_default().to_owned();
    let (stdout, stderr) = (text("stdout"), text("stderr"));
    let rich: Vec<Value> = result["outputs"].as_array().cloned().unwrap_or_default();
    let layout: Vec<Segment> =
        serde_json::from_value(result["layout"].clone()).unwrap_or_else(|_| {
            // No layout (an older record): streams first, then rich outputs.
            let mut l = Vec::new();
            for (name, t) in [(StreamName::Stdout, &stdout), (StreamName::Stderr, &stderr)] {
                if !t.is_empty() {
                    l.push(Segment::Stream { name, len: t.len() });
                }
            }
            l.extend((0..rich.len()).map(Segment::Rich));
            l
        });
    let (mut at_out, mut at_err) = (0, 0);
    for seg in layout {
        match seg {
            Segment::Stream { name, len } => {
                let (t, at, label) = match name {
                    StreamName::Stdout => (&stdout, &mut at_out, "stdout"),
                    StreamName::Stderr => (&stderr, &mut at_err, "stderr"),
                };
                let piece = t.get(*at..*at + len).unwrap_or_default();
                *at += len;
                if !piece.is_empty() {
                    out.push(json!({"output_type": "stream", "name": label, "text": piece}));
                }
            }
            Segment::Rich(i) => {
                let Some(o) = rich.get(i) else { continue };
                let data = o.get("data").cloned().unwrap_or_else(|| json!({}));
                let metadata = o.get("metadata").cloned().unwrap_or_else(|| json!({}));
                if o["type"] == "execute_result" {
                    out.push(json!({
                        "output_type": "execute_result",
                        "execution_count": o.get("execution_count").cloned()
                            .filter(|c| !c.is_null())
                            .unwrap_or_else(|| result["execution_count"].clone()),
                        "data": data,
                        "metadata": metadata,
                    }));
                } else {
                    out.push(
                        json!({"output_type": "display_data", "data": data, "metadata": metadata}),
                    );
                }
            }
        }
    }
    if let Some(e) = result.get("error").filter(|e| e.is_object()) {
        out.push(json!({
            "output_type": "error",
            "ename": e["ename"].as_str().unwrap_or_default(),
            "evalue": e["evalue"].as_str().unwrap_or_default(),
            "traceback": e["traceback"].as_array().cloned().unwrap_or_default(),
        }));
    }
    out
}

/// A cell's `metadata.execution`: the timing keys JupyterLab records.
pub fn timing(e: &StoredExecution) -> Value {
    let mut timing = serde_json::Map::new();
    if let Some(s) = &e.started_at {
        timing.insert("iopub.status.busy".into(), json!(s));
        timing.insert("iopub.execute_input".into(), json!(s));
    }
    if let Some(f) = &e.finished_at {
        timing.insert("shell.execute_reply".into(), json!(f));
        timing.insert("iopub.status.idle".into(), json!(f));
    }
    Value::Object(timing)
}

/// One code cell.
fn cell(e: &StoredExecution) -> Value {
    let empty = json!({});
    let result = e.result.as_ref().unwrap_or(&empty);
    json!({
        "cell_type": "code",
        "id": e.id.replace('-', ""),
        "execution_count": e.execution_count,
        "metadata": {
            "execution": timing(e),
            "cellblock": {
                "execution_id": e.id,
                "status": e.status,
                "duration_ms": e.duration_ms,
            },
        },
        "source": e.code,
        "outputs": cell_outputs(result),
    })
}

/// The notebook of a sandbox's session.
pub fn export(sandbox: &Value, executions: &[StoredExecution]) -> Value {
    let mut language_info = sandbox["language_info"].clone();
    if language_info.get("name").and_then(Value::as_str).is_none() {
        language_info = json!({"name": "python"});
    }
    let cells: Vec<Value> = executions
        .iter()
        // Cells are what ran: not cancelled ones, nor ones lost before they began.
        .filter(|e| e.state == "finished" && e.status.as_deref() != Some("cancelled"))
        .filter(|e| e.status.as_deref() != Some("lost") || e.started_at.is_some())
        .map(cell)
        .collect();
    json!({
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {
                "name": "python3",
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
            },
            "language_info": language_info,
            "cellblock": {
                "sandbox_id": sandbox["id"],
                "image": sandbox["image"],
                "image_version": sandbox["image_version"],
                "created_at": sandbox["created_at"],
                "deleted_at": sandbox["deleted_at"],
            },
        },
        "cells": cells,
    })
}
