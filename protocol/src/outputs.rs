//! Folding one execution's iopub messages into its final outputs.
//!
//! The rules follow nbclient and Jupyter's front ends, so a result matches
//! what a notebook would show:
//! - consecutive `stream` text of one name is merged into one output, and a
//!   carriage return overwrites its line (nbconvert's `coalesce_streams`), so
//!   a progress bar ends as its last state;
//! - `display_data` and `execute_result` become rich outputs;
//! - `update_display_data` rewrites every earlier output with that `display_id`;
//! - `clear_output` clears everything so far, or with `wait: true`, clears when
//!   the next output arrives;
//! - `error` is recorded with its traceback.
//!
//! Every kind of output has a cap ([`OutputLimits`]): stdout bytes, stderr
//! bytes, rich output count and rich output bytes. Up to half of a cap keeps
//! the first output (the head); beyond it a window of the latest output (the
//! tail) is kept and older tail output is dropped, so a flood of any size
//! ends as its head, a marker saying how much was omitted, and its tail.
//! Memory stays bounded by the caps whatever a kernel sends.

use crate::message::{Content, ErrorContent, JsonMap, Message};
use serde::Serialize;
use std::collections::VecDeque;

/// Per-execution output caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutputLimits {
    /// Bytes of stdout text kept.
    pub stdout_bytes: usize,
    /// Bytes of stderr text kept.
    pub stderr_bytes: usize,
    /// Rich outputs (`display_data`, `execute_result`) kept.
    pub outputs: usize,
    /// Bytes of rich output data kept, all outputs together.
    pub rich_bytes: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        Self {
            stdout_bytes: 8 << 20,
            stderr_bytes: 8 << 20,
            outputs: 1000,
            rich_bytes: 64 << 20,
        }
    }
}

/// Most bytes of an error's value and traceback kept.
const MAX_ERROR_BYTES: usize = 1 << 20;
/// Room left in a stream's cap for the omission marker.
const MARKER_ROOM: usize = 96;

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
    /// The `execution_count` of an `execute_result`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_count: Option<i64>,
}

/// One output in notebook order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "output_type", rename_all = "snake_case")]
pub enum Item {
    /// Merged text of one stream.
    Stream { name: StreamName, text: String },
    /// A rich output.
    Rich(Output),
}

/// One piece of [`Outputs::layout`]: the next `len` bytes of a stream's
/// text, or the rich output at an index of `outputs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    Stream { name: StreamName, len: usize },
    Rich(usize),
}

/// Which stream a text belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    Stdout,
    Stderr,
}

/// How much of each kind of output was dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Dropped {
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub outputs: u64,
    pub rich_bytes: u64,
}

impl Dropped {
    fn any(&self) -> bool {
        *self != Self::default()
    }
}

/// The accumulated outputs of one execution.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outputs {
    pub stdout: String,
    pub stderr: String,
    /// Rich outputs in order.
    pub outputs: Vec<Output>,
    /// How stdout, stderr and `outputs` interleave, in notebook order.
    #[serde(skip)]
    pub layout: Vec<Segment>,
    pub error: Option<ErrorContent>,
    /// Set when output beyond a cap was dropped.
    pub truncated: bool,
    /// What was dropped, when `truncated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<Dropped>,
}

/// Byte and count totals of one part (head or tail).
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    stream: [usize; 2],
    rich_bytes: usize,
    rich_count: usize,
}

/// Head or tail: items in order with their totals.
#[derive(Debug, Default)]
struct Part {
    items: VecDeque<Item>,
    used: Usage,
}

impl Part {
    /// Appends stream text, merging with the last item when it is the same
    /// stream, and applies carriage returns to the lines it touched.
    fn push_text(&mut self, name: StreamName, text: &str) {
        if let Some(Item::Stream { name: n, text: t }) = self.items.back_mut() {
            if *n == name {
                let before = t.len();
                let from = t.rfind('\n').map_or(0, |i| i + 1);
                t.push_str(text);
                if text.contains('\r') {
                    apply_carriage_returns(t, from);
                }
                self.used.stream[name as usize] =
                    self.used.stream[name as usize] + t.len() - before;
                return;
            }
        }
        let mut t = text.to_owned();
        apply_carriage_returns(&mut t, 0);
        self.used.stream[name as usize] += t.len();
        self.items.push_back(Item::Stream { name, text: t });
    }

    /// Drops text of `name` from the front until at most `budget` bytes remain.
    /// Returns the bytes dropped.
    fn trim_front(&mut self, name: StreamName, budget: usize) -> usize {
        let mut dropped = 0;
        let mut i = 0;
        while self.used.stream[name as usize] > budget && i < self.items.len() {
            let excess = self.used.stream[name as usize] - budget;
            match &mut self.items[i] {
                Item::Stream { name: n, text } if *n == name => {
                    if text.len() <= excess {
                        let len = text.len();
                        self.items.remove(i);
                        self.used.stream[name as usize] -= len;
                        dropped += len;
                    } else {
                        let cut = ceil_char_boundary(text, excess);
                        text.drain(..cut);
                        self.used.stream[name as usize] -= cut;
                        dropped += cut;
                    }
                }
                _ => i += 1,
            }
        }
        dropped
    }

    /// Drops the oldest rich outputs until within `count` and `bytes`.
    fn trim_rich(&mut self, count: usize, bytes: usize, dropped: &mut Dropped) {
        let mut i = 0;
        while (self.used.rich_count > count || self.used.rich_bytes > bytes) && i < self.items.len()
        {
            if let Item::Rich(o) = &self.items[i] {
                let size = rich_size(o);
                self.items.remove(i);
                self.used.rich_count -= 1;
                self.used.rich_bytes -= size;
                dropped.outputs += 1;
                dropped.rich_bytes += size as u64;
            } else {
                i += 1;
            }
        }
    }

    fn rich_mut(&mut self) -> impl Iterator<Item = &mut Output> {
        self.items.iter_mut().filter_map(|i| match i {
            Item::Rich(o) => Some(o),
            Item::Stream { .. } => None,
        })
    }
}

/// Applies iopub messages to [`Outputs`] under [`OutputLimits`].
#[derive(Debug)]
pub struct OutputCollector {
    limits: OutputLimits,
    head: Part,
    tail: Part,
    /// Per kind (stdout, stderr, rich): the head is full, new output goes to the tail.
    overflow: [bool; 3],
    dropped: Dropped,
    pending_clear: bool,
    error: Option<ErrorContent>,
}

const RICH: usize = 2;

impl OutputCollector {
    /// A collector that keeps output within `limits`.
    pub fn new(limits: OutputLimits) -> Self {
        Self {
            limits,
            head: Part::default(),
            tail: Part::default(),
            overflow: [false; 3],
            dropped: Dropped::default(),
            pending_clear: false,
            error: None,
        }
    }

    fn stream_limit(&self, name: StreamName) -> usize {
        match name {
            StreamName::Stdout => self.limits.stdout_bytes,
            StreamName::Stderr => self.limits.stderr_bytes,
        }
    }

    fn clear_now(&mut self) {
        self.head = Part::default();
        self.tail = Part::default();
        self.overflow = [false; 3];
        self.dropped = Dropped::default();
        self.pending_clear = false;
    }

    fn before_output(&mut self) {
        if self.pending_clear {
            self.clear_now();
        }
    }

    fn push_stream(&mut self, name: StreamName, text: &str) {
        self.before_output();
        let k = name as usize;
        let limit = self.stream_limit(name);
        let head_budget = limit / 2;
        let tail_budget = (limit - head_budget).saturating_sub(MARKER_ROOM);
        let mut rest = text;
        if !self.overflow[k] {
            let room = head_budget.saturating_sub(self.head.used.stream[k]);
            if rest.len() <= room {
                self.head.push_text(name, rest);
                // Carriage returns may have shrunk it; either way it fits.
                return;
            }
            let cut = floor_char_boundary(rest, room);
            if cut > 0 {
                self.head.push_text(name, &rest[..cut]);
            }
            rest = &rest[cut..];
            self.overflow[k] = true;
        }
        // Only the last `tail_budget` bytes of this chunk can survive.
        if rest.len() > tail_budget {
            let cut = ceil_char_boundary(rest, rest.len() - tail_budget);
            self.add_dropped(name, cut);
            rest = &rest[cut..];
        }
        self.tail.push_text(name, rest);
        let gone = self.tail.trim_front(name, tail_budget);
        self.add_dropped(name, gone);
    }

    fn add_dropped(&mut self, name: StreamName, bytes: usize) {
        match name {
            StreamName::Stdout => self.dropped.stdout_bytes += bytes as u64,
            StreamName::Stderr => self.dropped.stderr_bytes += bytes as u64,
        }
    }

    fn push_rich(&mut self, output: Output) {
        self.before_output();
        let size = rich_size(&output);
        let (count_head, bytes_head) = (self.limits.outputs / 2, self.limits.rich_bytes / 2);
        if !self.overflow[RICH]
            && self.head.used.rich_count < count_head
            && self.head.used.rich_bytes + size <= bytes_head
        {
            self.head.used.rich_count += 1;
            self.head.used.rich_bytes += size;
            self.head.items.push_back(Item::Rich(output));
            return;
        }
        self.overflow[RICH] = true;
        self.tail.used.rich_count += 1;
        self.tail.used.rich_bytes += size;
        self.tail.items.push_back(Item::Rich(output));
        let (count, bytes) = (
            self.limits.outputs - count_head,
            self.limits.rich_bytes - bytes_head,
        );
        self.tail.trim_rich(count, bytes, &mut self.dropped);
    }

    /// Rewrites every kept output with `display_id`, unless the new data would
    /// take a part over its byte cap (then the update is dropped).
    fn update_display(&mut self, id: &str, data: &JsonMap, metadata: &JsonMap) {
        let new = json_size(data) + json_size(metadata);
        let budgets = [
            self.limits.rich_bytes / 2,
            self.limits.rich_bytes - self.limits.rich_bytes / 2,
        ];
        for (part, budget) in [&mut self.head, &mut self.tail].into_iter().zip(budgets) {
            let (mut old, mut n) = (0, 0);
            for o in part
                .rich_mut()
                .filter(|o| o.display_id.as_deref() == Some(id))
            {
                old += rich_size(o);
                n += 1;
            }
            if n == 0 {
                continue;
            }
            let after = part.used.rich_bytes - old + new.saturating_mul(n);
            if after > budget {
                self.dropped.rich_bytes += new as u64;
                continue;
            }
            for o in part
                .rich_mut()
                .filter(|o| o.display_id.as_deref() == Some(id))
            {
                o.data = data.clone();
                o.metadata = metadata.clone();
            }
            part.used.rich_bytes = after;
        }
    }

    /// Applies one iopub message. Messages that carry no output are ignored.
    pub fn apply(&mut self, msg: &Message) {
        match &msg.content {
            Content::Stream(s) => {
                let name = if s.name == "stderr" {
                    StreamName::Stderr
                } else {
                    StreamName::Stdout
                };
                self.push_stream(name, &s.text);
            }
            Content::DisplayData(d) => self.push_rich(Output {
                kind: "display_data",
                data: d.data.clone(),
                metadata: d.metadata.clone(),
                display_id: d.display_id().map(str::to_owned),
                execution_count: None,
            }),
            Content::ExecuteResult(r) => self.push_rich(Output {
                kind: "execute_result",
                data: r.data.clone(),
                metadata: r.metadata.clone(),
                display_id: r.display_id().map(str::to_owned),
                execution_count: r.execution_count,
            }),
            Content::UpdateDisplayData(d) => {
                if let Some(id) = d.display_id() {
                    self.update_display(id, &d.data, &d.metadata);
                }
            }
            Content::ClearOutput(c) => {
                if c.wait {
                    self.pending_clear = true;
                } else {
                    self.clear_now();
                }
            }
            Content::Error(e) => self.error = Some(capped_error(e)),
            _ => {}
        }
    }

    /// Everything kept, in notebook order: head, omission markers, tail,
    /// with adjacent text of one stream merged.
    fn ordered(&self, head: Vec<Item>, tail: Vec<Item>) -> Vec<Item> {
        let mut markers = Vec::new();
        for (name, bytes) in [
            (StreamName::Stdout, self.dropped.stdout_bytes),
            (StreamName::Stderr, self.dropped.stderr_bytes),
        ] {
            if bytes > 0 {
                let stream = match name {
                    StreamName::Stdout => "stdout",
                    StreamName::Stderr => "stderr",
                };
                let text =
                    format!("\n[... cellblock omitted {bytes} bytes of {stream} here ...]\n");
                markers.push(Item::Stream { name, text });
            }
        }
        let mut out: Vec<Item> = Vec::new();
        for item in head.into_iter().chain(markers).chain(tail) {
            match (out.last_mut(), item) {
                (
                    Some(Item::Stream { name: a, text }),
                    Item::Stream {
                        name: b,
                        text: more,
                    },
                ) if *a == b => text.push_str(&more),
                (_, item) => out.push(item),
            }
        }
        out
    }

    /// Flattens ordered items into the result's fields, moving what it can.
    fn flatten(&self, items: Vec<Item>) -> Outputs {
        let mut out = Outputs {
            error: self.error.clone(),
            truncated: self.dropped.any(),
            dropped: self.dropped.any().then_some(self.dropped),
            ..Outputs::default()
        };
        for item in items {
            let (name, text) = match item {
                Item::Stream { name, text } => (name, text),
                Item::Rich(o) => {
                    out.layout.push(Segment::Rich(out.outputs.len()));
                    out.outputs.push(o);
                    continue;
                }
            };
            out.layout.push(Segment::Stream {
                name,
                len: text.len(),
            });
            let target = match name {
                StreamName::Stdout => &mut out.stdout,
                StreamName::Stderr => &mut out.stderr,
            };
            if target.is_empty() {
                *target = text;
            } else {
                target.push_str(&text);
            }
        }
        out
    }

    /// The outputs so far.
    pub fn snapshot(&self) -> Outputs {
        let head = self.head.items.iter().cloned().collect();
        let tail = self.tail.items.iter().cloned().collect();
        self.flatten(self.ordered(head, tail))
    }

    /// Everything kept so far in notebook order (streams merged).
    pub fn items(&self) -> Vec<Item> {
        let head = self.head.items.iter().cloned().collect();
        let tail = self.tail.items.iter().cloned().collect();
        self.ordered(head, tail)
    }

    /// The error so far, if any.
    pub fn error(&self) -> Option<&ErrorContent> {
        self.error.as_ref()
    }

    /// The final outputs, moved out without copies of the kept text.
    pub fn finish(mut self) -> Outputs {
        let head = Vec::from(std::mem::take(&mut self.head.items));
        let tail = Vec::from(std::mem::take(&mut self.tail.items));
        let items = self.ordered(head, tail);
        self.flatten(items)
    }
}

/// An error with its value and traceback kept under [`MAX_ERROR_BYTES`]:
/// the first and last traceback lines survive.
fn capped_error(e: &ErrorContent) -> ErrorContent {
    let mut e = e.clone();
    if e.evalue.len() > MAX_ERROR_BYTES / 2 {
        let cut = floor_char_boundary(&e.evalue, MAX_ERROR_BYTES / 2);
        e.evalue.truncate(cut);
    }
    let mut total: usize = e.traceback.iter().map(String::len).sum();
    while total > MAX_ERROR_BYTES / 2 && e.traceback.len() > 2 {
        let mid = e.traceback.len() / 2;
        total -= e.traceback.remove(mid).len();
    }
    for line in &mut e.traceback {
        if line.len() > MAX_ERROR_BYTES / 4 {
            let cut = floor_char_boundary(line, MAX_ERROR_BYTES / 4);
            line.truncate(cut);
        }
    }
    e
}

/// Applies carriage returns in `text[from..]` the way nbconvert's
/// `coalesce_streams` does: on each line, everything up to the last `\r`
/// that is followed by another character of the line is removed. A `\r` at
/// the very end stays until more text arrives; `\r\n` is a line end.
pub fn apply_carriage_returns(text: &mut String, from: usize) {
    if !text[from..].contains('\r') {
        return;
    }
    let mut out = String::with_capacity(text.len() - from);
    for line in text[from..].split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        // The last `\r` followed by something other than the line's end.
        let keep_from = body
            .char_indices()
            .rfind(|&(i, c)| c == '\r' && i + 1 < body.len())
            .map_or(0, |(i, _)| i + 1);
        out.push_str(&line[keep_from..]);
    }
    text.truncate(from);
    text.push_str(&out);
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

fn rich_size(o: &Output) -> usize {
    json_size(&o.data) + json_size(&o.metadata)
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
    use serde_json::json;

    fn msg(msg_type: &str, content: serde_json::Value) -> Message {
        let c = Content::decode(msg_type, content.to_string().as_bytes()).unwrap();
        Message::new(c, "s", "u")
    }

    fn out(c: &mut OutputCollector, name: &str, text: &str) {
        c.apply(&msg("stream", json!({"name": name, "text": text})));
    }

    fn big() -> OutputCollector {
        OutputCollector::new(OutputLimits::default())
    }

    #[test]
    fn streams_merge_and_rich_outputs_keep_order() {
        let mut c = big();
        out(&mut c, "stdout", "a");
        out(&mut c, "stdout", "b");
        out(&mut c, "stderr", "e");
        c.apply(&msg(
            "execute_result",
            json!({"execution_count":1,"data":{"text/plain":"2"},"metadata":{}}),
        ));
        out(&mut c, "stdout", "c");
        let items = c.items();
        let o = c.finish();
        assert_eq!(o.stdout, "abc");
        assert_eq!(o.stderr, "e");
        assert_eq!(o.outputs.len(), 1);
        assert_eq!(o.outputs[0].kind, "execute_result");
        assert_eq!(o.outputs[0].execution_count, Some(1));
        assert_eq!(items.len(), 4, "{items:?}");
        assert!(matches!(&items[0], Item::Stream { text, .. } if text == "ab"));
        assert!(!o.truncated);
    }

    #[test]
    fn carriage_returns_overwrite_their_line() {
        let mut c = big();
        for i in 0..=100 {
            out(&mut c, "stderr", &format!("\r{i:3}%|"));
        }
        out(&mut c, "stderr", "\n");
        out(&mut c, "stderr", "done\r\nnext\r");
        assert_eq!(c.finish().stderr, "100%|\ndone\r\nnext\r");
        let mut s = String::from("keep\nab\rc\rxy\n");
        apply_carriage_returns(&mut s, 0);
        assert_eq!(s, "keep\nxy\n");
    }

    #[test]
    fn update_display_rewrites_all_matching() {
        let mut c = big();
        let d =
            |t: &str| json!({"data":{"text/plain":t},"metadata":{},"transient":{"display_id":"x"}});
        c.apply(&msg("display_data", d("1")));
        c.apply(&msg("display_data", json!({"data":{"text/plain":"other"}})));
        c.apply(&msg("display_data", d("2")));
        c.apply(&msg("update_display_data", d("3")));
        let o = c.finish();
        assert_eq!(o.outputs[0].data["text/plain"], "3");
        assert_eq!(o.outputs[1].data["text/plain"], "other");
        assert_eq!(o.outputs[2].data["text/plain"], "3");
    }

    #[test]
    fn clear_output_now_and_wait() {
        let mut c = big();
        out(&mut c, "stdout", "a");
        c.apply(&msg("clear_output", json!({"wait":false})));
        assert_eq!(c.snapshot().stdout, "");
        out(&mut c, "stdout", "b");
        c.apply(&msg("clear_output", json!({"wait":true})));
        assert_eq!(c.snapshot().stdout, "b");
        out(&mut c, "stdout", "c");
        assert_eq!(c.snapshot().stdout, "c");
    }

    fn small(stdout: usize, outputs: usize) -> OutputCollector {
        OutputCollector::new(OutputLimits {
            stdout_bytes: stdout,
            stderr_bytes: stdout,
            outputs,
            rich_bytes: 1 << 20,
        })
    }

    #[test]
    fn streams_keep_head_and_tail() {
        let mut c = small(1000, 10);
        let lines: Vec<String> = (0..1000).map(|i| format!("{i:04}\n")).collect();
        for l in &lines {
            out(&mut c, "stdout", l);
        }
        let o = c.finish();
        assert!(o.truncated);
        assert!(o.stdout.len() <= 1000, "{}", o.stdout.len());
        assert!(o.stdout.starts_with("0000\n0001\n"), "{}", &o.stdout[..20]);
        assert!(o.stdout.ends_with("0998\n0999\n"));
        assert!(o.stdout.contains("omitted"));
        let d = o.dropped.unwrap();
        let kept = o.stdout.len()
            - o.stdout
                .lines()
                .find(|l| l.contains("omitted"))
                .unwrap()
                .len()
            - 2;
        assert_eq!(d.stdout_bytes as usize + kept, 5000);
    }

    #[test]
    fn one_huge_chunk_keeps_head_and_tail() {
        let mut c = small(1 << 20, 10);
        let text = format!("{}{}", "h".repeat(3 << 20), "TAIL");
        out(&mut c, "stdout", &text);
        let o = c.finish();
        assert!(o.stdout.len() <= 1 << 20);
        assert!(o.stdout.starts_with("hhh"));
        assert!(o.stdout.ends_with("hTAIL"));
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        let mut c = small(301, 10);
        for _ in 0..100 {
            out(&mut c, "stdout", "é€😀");
        }
        let o = c.finish();
        assert!(o.truncated && o.stdout.len() <= 301);
    }

    #[test]
    fn rich_outputs_keep_head_and_tail() {
        let mut c = small(1000, 4);
        for i in 0..10 {
            c.apply(&msg(
                "display_data",
                json!({"data":{"text/plain":i.to_string()},"metadata":{}}),
            ));
        }
        let o = c.finish();
        let kept: Vec<_> = o
            .outputs
            .iter()
            .map(|o| o.data["text/plain"].clone())
            .collect();
        assert_eq!(kept, vec!["0", "1", "8", "9"]);
        assert_eq!(o.dropped.unwrap().outputs, 6);
    }

    #[test]
    fn updates_cannot_blow_the_byte_cap() {
        let mut c = OutputCollector::new(OutputLimits {
            rich_bytes: 10_000,
            ..OutputLimits::default()
        });
        let d = |t: String| json!({"data":{"text/plain":t},"metadata":{},"transient":{"display_id":"x"}});
        for _ in 0..100 {
            c.apply(&msg("display_data", d("s".into())));
        }
        c.apply(&msg("update_display_data", d("L".repeat(1000))));
        let o = c.finish();
        assert!(o.truncated);
        let total: usize = o.outputs.iter().map(rich_size).sum();
        assert!(total <= 10_000, "{total}");
    }

    #[test]
    fn cleared_output_is_not_truncated() {
        let mut c = small(400, 10);
        for _ in 0..100 {
            c.apply(&msg("clear_output", json!({"wait":true})));
            out(&mut c, "stdout", &"x".repeat(300));
        }
        let o = c.finish();
        assert_eq!(o.stdout.len(), 300);
        assert!(!o.truncated);
    }
}
