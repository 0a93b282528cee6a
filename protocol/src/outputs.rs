//! Folding one execution's iopub messages into its final outputs.
//!
//! The rules follow nbclient, so a result matches what a notebook would show:
//! - `stream` text is appended to `stdout` or `stderr`;
//! - `display_data` and `execute_result` become rich outputs;
//! - `update_display_data` rewrites every earlier output with that `display_id`;
//! - `clear_output` clears everything so far, or with `wait: true`, clears when
//!   the next output arrives;
//! - `error` is recorded with its traceback.
//!
//! Everything is held under a byte cap; beyond it, new output is dropped and
//! `truncated` is set, so a flood from a kernel cannot exhaust the broker.

use crate::message::{Content, ErrorContent, JsonMap, Message};
use serde::Serialize;

/// One rich output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Output {
    /// `execute_result` or `display_data`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub data: JsonMap,
    pub metadata: JsonMap,
    /// The `display_id` this output can be updated by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_id: Option<String>,
}

/// The accumulated outputs of one execution.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outputs {
    pub stdout: String,
    pub stderr: String,
    pub outputs: Vec<Output>,
    pub error: Option<ErrorContent>,
    /// Set when output beyond the cap was dropped.
    pub truncated: bool,
}

/// Applies iopub messages to [`Outputs`] under a byte cap.
#[derive(Debug)]
pub struct OutputCollector {
    out: Outputs,
    pending_clear: bool,
    bytes: usize,
    cap: usize,
}

impl OutputCollector {
    /// A collector that keeps at most `cap` bytes of output.
    pub fn new(cap: usize) -> Self {
        Self {
            out: Outputs::default(),
            pending_clear: false,
            bytes: 0,
            cap,
        }
    }

    fn admit(&mut self, size: usize) -> bool {
        if self.bytes.saturating_add(size) > self.cap {
            self.out.truncated = true;
            return false;
        }
        self.bytes += size;
        true
    }

    fn clear_now(&mut self) {
        self.out.stdout.clear();
        self.out.stderr.clear();
        self.out.outputs.clear();
        self.bytes = 0;
        self.pending_clear = false;
    }

    fn before_output(&mut self) {
        if self.pending_clear {
            self.clear_now();
        }
    }

    fn push_rich(
        &mut self,
        kind: &'static str,
        data: &JsonMap,
        metadata: &JsonMap,
        display_id: Option<String>,
    ) {
        self.before_output();
        let size = json_size(data) + json_size(metadata);
        if self.admit(size) {
            self.out.outputs.push(Output {
                kind,
                data: data.clone(),
                metadata: metadata.clone(),
                display_id,
            });
        }
    }

    /// Applies one iopub message. Messages that carry no output are ignored.
    pub fn apply(&mut self, msg: &Message) {
        match &msg.content {
            Content::Stream(s) => {
                self.before_output();
                if !self.admit(s.text.len()) {
                    return;
                }
                if s.name == "stderr" {
                    self.out.stderr.push_str(&s.text);
                } else {
                    self.out.stdout.push_str(&s.text);
                }
            }
            Content::DisplayData(d) => {
                let id = d.display_id().map(str::to_owned);
                self.push_rich("display_data", &d.data, &d.metadata, id);
            }
            Content::ExecuteResult(r) => {
                let id = r.display_id().map(str::to_owned);
                self.push_rich("execute_result", &r.data, &r.metadata, id);
            }
            Content::UpdateDisplayData(d) => {
                let Some(id) = d.display_id() else { return };
                let size = json_size(&d.data) + json_size(&d.metadata);
                let mut matched = false;
                for o in self.out.outputs.iter_mut() {
                    if o.display_id.as_deref() == Some(id) {
                        o.data = d.data.clone();
                        o.metadata = d.metadata.clone();
                        matched = true;
                    }
                }
                if matched {
                    // Count the new payload once; the replaced ones stay counted,
                    // which errs on the side of the cap.
                    self.admit(size);
                }
            }
            Content::ClearOutput(c) => {
                if c.wait {
                    self.pending_clear = true;
                } else {
                    self.clear_now();
                }
            }
            Content::Error(e) => {
                let size = e.traceback.iter().map(String::len).sum::<usize>() + e.evalue.len();
                let mut e = e.clone();
                if !self.admit(size) {
                    e.traceback.truncate(1);
                }
                self.out.error = Some(e);
            }
            _ => {}
        }
    }

    /// The outputs so far.
    pub fn outputs(&self) -> &Outputs {
        &self.out
    }

    /// The final outputs.
    pub fn finish(self) -> Outputs {
        self.out
    }
}

fn json_size(map: &JsonMap) -> usize {
    map.iter()
        .map(|(k, v)| k.len() + v.as_str().map_or_else(|| v.to_string().len(), str::len))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn msg(msg_type: &str, content: serde_json::Value) -> Message {
        let c = Content::decode(msg_type, content.to_string().as_bytes()).unwrap();
        Message::new(c, "s", "u")
    }

    #[test]
    fn streams_and_rich_outputs() {
        let mut c = OutputCollector::new(1 << 20);
        c.apply(&msg(
            "stream",
            serde_json::json!({"name":"stdout","text":"a"}),
        ));
        c.apply(&msg(
            "stream",
            serde_json::json!({"name":"stderr","text":"e"}),
        ));
        c.apply(&msg(
            "stream",
            serde_json::json!({"name":"stdout","text":"b"}),
        ));
        c.apply(&msg(
            "execute_result",
            serde_json::json!({"execution_count":1,"data":{"text/plain":"2"},"metadata":{}}),
        ));
        let o = c.finish();
        assert_eq!(o.stdout, "ab");
        assert_eq!(o.stderr, "e");
        assert_eq!(o.outputs.len(), 1);
        assert_eq!(o.outputs[0].kind, "execute_result");
    }

    #[test]
    fn update_display_rewrites_all_matching() {
        let mut c = OutputCollector::new(1 << 20);
        let d = |t: &str| serde_json::json!({"data":{"text/plain":t},"metadata":{},"transient":{"display_id":"x"}});
        c.apply(&msg("display_data", d("1")));
        c.apply(&msg(
            "display_data",
            serde_json::json!({"data":{"text/plain":"other"}}),
        ));
        c.apply(&msg("display_data", d("2")));
        c.apply(&msg("update_display_data", d("3")));
        let o = c.finish();
        assert_eq!(o.outputs[0].data["text/plain"], "3");
        assert_eq!(o.outputs[1].data["text/plain"], "other");
        assert_eq!(o.outputs[2].data["text/plain"], "3");
    }

    #[test]
    fn clear_output_now_and_wait() {
        let mut c = OutputCollector::new(1 << 20);
        c.apply(&msg(
            "stream",
            serde_json::json!({"name":"stdout","text":"a"}),
        ));
        c.apply(&msg("clear_output", serde_json::json!({"wait":false})));
        assert_eq!(c.outputs().stdout, "");
        c.apply(&msg(
            "stream",
            serde_json::json!({"name":"stdout","text":"b"}),
        ));
        c.apply(&msg("clear_output", serde_json::json!({"wait":true})));
        assert_eq!(c.outputs().stdout, "b");
        c.apply(&msg(
            "stream",
            serde_json::json!({"name":"stdout","text":"c"}),
        ));
        assert_eq!(c.outputs().stdout, "c");
    }

    #[test]
    fn cap_truncates() {
        let mut c = OutputCollector::new(4);
        c.apply(&msg(
            "stream",
            serde_json::json!({"name":"stdout","text":"abc"}),
        ));
        c.apply(&msg(
            "stream",
            serde_json::json!({"name":"stdout","text":"def"}),
        ));
        let o = c.finish();
        assert_eq!(o.stdout, "abc");
        assert!(o.truncated);
    }
}
