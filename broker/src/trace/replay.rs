//! Replay support: reading a client's notebook safely, and comparing the
//! outputs of a replayed cell with the recorded ones.
//!
//! A notebook is accepted if it is nbformat 4 with a `cells` array of
//! objects, each with a string `cell_type`; a code cell's `source` is a
//! string or an array of strings. Anything else is refused with the index of
//! the offending cell.
//!
//! Comparison normalises what legitimately differs between two runs of the
//! same code, so only real differences count:
//! - execution counts (`execution_count`, `In [n]`, `Cell In[n]`) are ignored;
//! - memory addresses (`0x7f3a…`) become `0x?`;
//! - durations (`1.23 ms`, `4.5s`, `0:00:01`, `12.3it/s`) and ISO timestamps
//!   become placeholders;
//! - output `metadata` and `transient` are ignored; consecutive stream text of
//!   one name is merged; ANSI colour codes are dropped.
//!
//! Rich data is compared value by value after the same normalisation of text
//! values; binary values (PNG base64) must be identical.

use regex::Regex;
use serde_json::{json, Value};
use std::sync::OnceLock;

/// Why a notebook was refused.
#[derive(Debug, thiserror::Error)]
pub enum NotebookError {
    #[error("not a notebook: {0}")]
    Shape(String),
}

fn shape(msg: impl Into<String>) -> NotebookError {
    NotebookError::Shape(msg.into())
}

/// A code cell to replay.
#[derive(Debug, Clone)]
pub struct CodeCell {
    /// Index among all cells of the notebook.
    pub index: usize,
    pub id: Option<String>,
    pub source: String,
    /// The recorded outputs.
    pub outputs: Vec<Value>,
}

/// Checks a notebook's shape and returns its code cells.
pub fn code_cells(nb: &Value) -> Result<Vec<CodeCell>, NotebookError> {
    let obj = nb
        .as_object()
        .ok_or_else(|| shape("the body must be a JSON object"))?;
    match obj.get("nbformat").and_then(Value::as_u64) {
        Some(4) => {}
        Some(v) => return Err(shape(format!("nbformat {v} is not supported (only 4)"))),
        None => return Err(shape("missing integer field nbformat")),
    }
    let cells = obj
        .get("cells")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("missing array field cells"))?;
    let mut out = Vec::new();
    for (index, cell) in cells.iter().enumerate() {
        let c = cell
            .as_object()
            .ok_or_else(|| shape(format!("cell {index} is not an object")))?;
        let kind = c
            .get("cell_type")
            .and_then(Value::as_str)
            .ok_or_else(|| shape(format!("cell {index} has no string cell_type")))?;
        if kind != "code" {
            continue;
        }
        let source = match c.get("source") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .map(|p| p.as_str().map(str::to_owned))
                .collect::<Option<String>>()
                .ok_or_else(|| shape(format!("cell {index}: source must be strings")))?,
            _ => {
                return Err(shape(format!(
                    "cell {index}: source must be a string or a list of strings"
                )))
            }
        };
        let outputs = match c.get("outputs") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(o)) => o.clone(),
            Some(_) => return Err(shape(format!("cell {index}: outputs must be a list"))),
        };
        out.push(CodeCell {
            index,
            id: c.get("id").and_then(Value::as_str).map(str::to_owned),
            source,
            outputs,
        });
    }
    Ok(out)
}

fn patterns() -> &'static [(Regex, &'static str)] {
    static P: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    P.get_or_init(|| {
        [
            (r"\x1b\[[0-9;]*[A-Za-z]", ""),
            (r"0x[0-9a-fA-F]{4,}", "0x?"),
            (
                r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?",
                "<datetime>",
            ),
            (r"\b\d+:\d{2}:\d{2}(\.\d+)?\b", "<duration>"),
            (r"\b\d+:\d{2}\b", "<duration>"),
            (
                r"\d+(\.\d+)?\s?(ns|µs|us|ms|s|sec|seconds|it/s|s/it|min)\b",
                "<duration>",
            ),
            (r"(Cell |)In ?\[\d*\]", "${1}In[n]"),
        ]
        .into_iter()
        .map(|(re, to)| (Regex::new(re).expect("a valid pattern"), to))
        .collect()
    })
}

/// Text with run-to-run noise replaced by placeholders.
pub fn normalise_text(s: &str) -> String {
    let mut s = s.to_owned();
    for (re, to) in patterns() {
        if let std::borrow::Cow::Owned(o) = re.replace_all(&s, *to) {
            s = o;
        }
    }
    s
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(Value::as_str).collect(),
        _ => String::new(),
    }
}

/// Outputs reduced to what must match between two runs.
pub fn normalise_outputs(outputs: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for o in outputs {
        let kind = o["output_type"].as_str().unwrap_or_default();
        let v = match kind {
            "stream" => {
                let name = o["name"].as_str().unwrap_or("stdout");
                let text = text_of(&o["text"]);
                if let Some(last) = out.last_mut() {
                    if last["output_type"] == "stream" && last["name"] == name {
                        let merged = format!("{}{text}", last["raw"].as_str().unwrap_or_default());
                        last["raw"] = json!(merged);
                        continue;
                    }
                }
                json!({"output_type": "stream", "name": name, "raw": text})
            }
            "display_data" | "execute_result" => {
                let mut data = serde_json::Map::new();
                if let Some(d) = o["data"].as_object() {
                    for (mime, value) in d {
                        let v = if mime.starts_with("image/") && mime != "image/svg+xml" {
                            json!(text_of(value).replace('\n', ""))
                        } else if value.is_string() || value.is_array() {
                            json!(normalise_text(&text_of(value)))
                        } else {
                            value.clone()
                        };
                        data.insert(mime.clone(), v);
                    }
                }
                json!({"output_type": "rich", "data": data})
            }
            "error" => json!({
                "output_type": "error",
                "ename": o["ename"],
                "evalue": normalise_text(o["evalue"].as_str().unwrap_or_default()),
            }),
            other => json!({"output_type": other}),
        };
        out.push(v);
    }
    for o in &mut out {
        if let Some(raw) = o.as_object_mut().and_then(|m| m.remove("raw")) {
            o["text"] = json!(normalise_text(raw.as_str().unwrap_or_default()));
        }
    }
    out
}

/// Describes how two normalised output lists differ; empty if identical.
pub fn differences(recorded: &[Value], replayed: &[Value]) -> Vec<String> {
    let (a, b) = (normalise_outputs(recorded), normalise_outputs(replayed));
    let mut diffs = Vec::new();
    if a.len() != b.len() {
        diffs.push(format!(
            "{} outputs recorded, {} replayed",
            a.len(),
            b.len()
        ));
    }
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        if x != y {
            let what = match (x["output_type"].as_str(), y["output_type"].as_str()) {
                (Some(p), Some(q)) if p != q => format!("output {i}: {p} recorded, {q} replayed"),
                (Some("stream"), _) => format!(
                    "output {i}: {} text differs",
                    x["name"].as_str().unwrap_or("stream")
                ),
                (Some("error"), _) => format!("output {i}: a different error"),
                _ => format!("output {i}: rich data differs"),
            };
            diffs.push(what);
        }
    }
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_normalised_away() {
        let a = "<object at 0x7f3a9c1d2e40> took 1.25 ms at 2026-11-27T13:30:21.5Z, 34.5it/s\nCell In[12], line 1";
        let b = "<object at 0x55aa00112233> took 3 ms at 2025-01-01T00:00:00Z, 12.0it/s\nCell In[3], line 1";
        assert_eq!(normalise_text(a), normalise_text(b));
        assert_ne!(normalise_text("total 42"), normalise_text("total 43"));
    }

    #[test]
    fn outputs_compare_after_normalising() {
        let rec = vec![
            json!({"output_type":"stream","name":"stdout","text":["a\n","b\n"]}),
            json!({"output_type":"execute_result","execution_count":3,"data":{"text/plain":"<X at 0xdeadbeef>"},"metadata":{}}),
        ];
        let rep = vec![
            json!({"output_type":"stream","name":"stdout","text":"a\n"}),
            json!({"output_type":"stream","name":"stdout","text":"b\n"}),
            json!({"output_type":"execute_result","execution_count":1,"data":{"text/plain":"<X at 0xfeedface>"},"metadata":{"x":1}}),
        ];
        assert!(
            differences(&rec, &rep).is_empty(),
            "{:?}",
            differences(&rec, &rep)
        );
        let changed = vec![
            json!({"output_type":"stream","name":"stdout","text":"a\nc\n"}),
            rep[2].clone(),
        ];
        assert_eq!(differences(&rec, &changed).len(), 1);
    }

    #[test]
    fn malformed_notebooks_are_refused() {
        for bad in [
            json!([]),
            json!({"nbformat": 3, "cells": []}),
            json!({"nbformat": 4}),
            json!({"nbformat": 4, "cells": [1]}),
            json!({"nbformat": 4, "cells": [{"source": "x"}]}),
            json!({"nbformat": 4, "cells": [{"cell_type": "code", "source": 5}]}),
        ] {
            assert!(code_cells(&bad).is_err(), "{bad}");
        }
        let ok = json!({"nbformat": 4, "nbformat_minor": 5, "cells": [
            {"cell_type": "markdown", "source": "# t"},
            {"cell_type": "code", "source": ["a = 1\n", "a"], "outputs": []},
        ]});
        let cells = code_cells(&ok).unwrap();
        assert_eq!(cells.len(), 1);
        assert_eq!(cells[0].index, 1);
        assert_eq!(cells[0].source, "a = 1\na");
    }
}
