//! Jupyter messages: header, envelope and typed contents.
//!
//! Decoding happens in two stages: the envelope (header, parent header,
//! metadata) first, then the content chosen by `msg_type`. Message types that
//! cellblock does not use are kept as raw JSON in [`Content::Unknown`] and passed
//! on untouched, so newer kernels keep working.

use crate::wire::{Limits, RawMessage, Signer, WireError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::SystemTime;

/// The protocol version cellblock speaks.
pub const PROTOCOL_VERSION: &str = "5.4";

/// Which socket a message came from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Shell,
    Control,
    Stdin,
    Iopub,
}

/// A JSON object, as used for metadata and MIME bundles.
pub type JsonMap = Map<String, Value>;

/// A message header.
///
/// `date` is kept as raw JSON: clients send strings, floats or nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub msg_id: String,
    pub msg_type: String,
    #[serde(default)]
    pub session: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub date: Value,
    #[serde(default)]
    pub version: String,
    /// Fields this version does not know, kept as they came.
    #[serde(flatten)]
    pub extra: JsonMap,
}

impl Header {
    /// A new header with a fresh random `msg_id` and the current time.
    pub fn new(msg_type: &str, session: &str, username: &str) -> Self {
        Self {
            msg_id: uuid::Uuid::new_v4().to_string(),
            msg_type: msg_type.to_owned(),
            session: session.to_owned(),
            username: username.to_owned(),
            date: Value::String(now_iso8601()),
            version: PROTOCOL_VERSION.to_owned(),
            extra: JsonMap::new(),
        }
    }
}

/// The current time as `2026-11-27T13:30:21.543331Z`.
pub fn now_iso8601() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// Formats a time as `2026-11-27T13:30:21.543331Z`.
pub fn iso8601(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub header: Header,
    /// Raw JSON: `{}` when there is no parent.
    pub parent_header: Value,
    pub metadata: JsonMap,
    pub content: Content,
    pub buffers: Vec<Bytes>,
}

impl Message {
    /// A new message with a fresh header and no parent.
    pub fn new(content: Content, session: &str, username: &str) -> Self {
        Self {
            header: Header::new(content.msg_type(), session, username),
            parent_header: Value::Object(JsonMap::new()),
            metadata: JsonMap::new(),
            content,
            buffers: Vec::new(),
        }
    }

    /// The `msg_id` of the parent header, if any. This is only ever compared
    /// against ids the client issued itself.
    pub fn parent_msg_id(&self) -> Option<&str> {
        self.parent_header.get("msg_id").and_then(Value::as_str)
    }

    /// The message type from the header.
    pub fn msg_type(&self) -> &str {
        &self.header.msg_type
    }

    /// Decodes and verifies received frames.
    pub fn from_frames(
        frames: Vec<Bytes>,
        signer: &Signer,
        limits: &Limits,
    ) -> Result<(Vec<Bytes>, Self), WireError> {
        let raw = RawMessage::from_frames(frames, limits)?;
        raw.verify(signer)?;
        let header: Header = parse_frame("header", &raw.header)?;
        let parent_header: Value = parse_frame("parent_header", &raw.parent_header)?;
        let metadata: JsonMap = parse_frame("metadata", &raw.metadata)?;
        let content = Content::decode(&header.msg_type, &raw.content)?;
        Ok((
            raw.idents,
            Self {
                header,
                parent_header,
                metadata,
                content,
                buffers: raw.buffers,
            },
        ))
    }

    /// Encodes and signs this message, prefixed by `idents`.
    pub fn to_frames(&self, signer: &Signer, idents: &[Bytes]) -> Vec<Bytes> {
        RawMessage::sign_frames(
            signer,
            idents,
            to_bytes(&self.header),
            to_bytes(&self.parent_header),
            to_bytes(&self.metadata),
            Bytes::from(self.content.to_json_bytes()),
            &self.buffers,
        )
    }
}

fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    // Serialising these types cannot fail: they hold only strings, numbers
    // and JSON values with string keys.
    Bytes::from(serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()))
}

fn parse_frame<T: for<'de> Deserialize<'de>>(
    frame: &'static str,
    bytes: &[u8],
) -> Result<T, WireError> {
    serde_json::from_slice(bytes).map_err(|e| WireError::BadJson {
        frame,
        reason: e.to_string(),
    })
}

/// `execute_request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecuteRequest {
    pub code: String,
    #[serde(default)]
    pub silent: bool,
    #[serde(default = "yes")]
    pub store_history: bool,
    #[serde(default)]
    pub user_expressions: JsonMap,
    #[serde(default)]
    pub allow_stdin: bool,
    #[serde(default = "yes")]
    pub stop_on_error: bool,
}

fn yes() -> bool {
    true
}

impl ExecuteRequest {
    /// A request with Jupyter's defaults, stdin off.
    pub fn new(code: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            silent: false,
            store_history: true,
            user_expressions: JsonMap::new(),
            allow_stdin: false,
            stop_on_error: true,
        }
    }
}

/// `execute_reply`. Error fields are present when `status` is `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecuteReply {
    #[serde(default = "error_status")]
    pub status: String,
    #[serde(default)]
    pub execution_count: Option<i64>,
    #[serde(flatten)]
    pub extra: JsonMap,
}

fn error_status() -> String {
    "error".to_owned()
}

/// `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub execution_state: String,
}

/// `stream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    pub name: String,
    pub text: String,
}

/// `display_data` and `update_display_data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisplayData {
    #[serde(default)]
    pub data: JsonMap,
    #[serde(default)]
    pub metadata: JsonMap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transient: Option<JsonMap>,
}

fn transient_display_id(transient: &Option<JsonMap>) -> Option<&str> {
    transient
        .as_ref()
        .and_then(|t| t.get("display_id"))
        .and_then(Value::as_str)
}

impl DisplayData {
    /// `transient.display_id`, if set.
    pub fn display_id(&self) -> Option<&str> {
        transient_display_id(&self.transient)
    }
}

/// `execute_result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecuteResult {
    #[serde(default)]
    pub execution_count: Option<i64>,
    #[serde(default)]
    pub data: JsonMap,
    #[serde(default)]
    pub metadata: JsonMap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transient: Option<JsonMap>,
}

impl ExecuteResult {
    /// `transient.display_id`, if set.
    pub fn display_id(&self) -> Option<&str> {
        transient_display_id(&self.transient)
    }
}

/// `error` on iopub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorContent {
    #[serde(default)]
    pub ename: String,
    #[serde(default)]
    pub evalue: String,
    #[serde(default)]
    pub traceback: Vec<String>,
}

/// `execute_input`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecuteInput {
    pub code: String,
    #[serde(default)]
    pub execution_count: Option<i64>,
}

/// `clear_output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClearOutput {
    #[serde(default)]
    pub wait: bool,
}

/// `input_request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRequest {
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub password: bool,
}

/// `input_reply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputReply {
    pub value: String,
}

/// `kernel_info_reply`. Everything beyond the fields named here is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelInfoReply {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub protocol_version: String,
    #[serde(default)]
    pub implementation: String,
    #[serde(default)]
    pub implementation_version: String,
    #[serde(default)]
    pub language_info: JsonMap,
    #[serde(default)]
    pub banner: String,
    #[serde(flatten)]
    pub extra: JsonMap,
}

/// `shutdown_request` and `shutdown_reply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shutdown {
    #[serde(default)]
    pub restart: bool,
    #[serde(flatten)]
    pub extra: JsonMap,
}

/// A reply that carries only a status, such as `interrupt_reply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    #[serde(default)]
    pub status: String,
    #[serde(flatten)]
    pub extra: JsonMap,
}

/// `comm_open`, `comm_msg` and `comm_close`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comm {
    pub comm_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_name: Option<String>,
    #[serde(default)]
    pub data: JsonMap,
    #[serde(flatten)]
    pub extra: JsonMap,
}

/// Typed message contents, chosen by `msg_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    ExecuteRequest(ExecuteRequest),
    ExecuteReply(ExecuteReply),
    Status(Status),
    Stream(Stream),
    DisplayData(DisplayData),
    UpdateDisplayData(DisplayData),
    ExecuteResult(ExecuteResult),
    Error(ErrorContent),
    ExecuteInput(ExecuteInput),
    ClearOutput(ClearOutput),
    InputRequest(InputRequest),
    InputReply(InputReply),
    KernelInfoRequest,
    KernelInfoReply(Box<KernelInfoReply>),
    InterruptRequest,
    InterruptReply(StatusReply),
    ShutdownRequest(Shutdown),
    ShutdownReply(Shutdown),
    CommOpen(Comm),
    CommMsg(Comm),
    CommClose(Comm),
    /// Any other message type, with its content as received.
    Unknown {
        msg_type: String,
        content: Value,
    },
}

macro_rules! content_codec {
    ($( $name:literal => $variant:ident ),* $(,)?) => {
        impl Content {
            /// The `msg_type` naming this content.
            pub fn msg_type(&self) -> &str {
                match self {
                    $( Content::$variant(_) => $name, )*
                    Content::KernelInfoRequest => "kernel_info_request",
                    Content::InterruptRequest => "interrupt_request",
                    Content::Unknown { msg_type, .. } => msg_type,
                }
            }

            /// Decodes content bytes for `msg_type`.
            pub fn decode(msg_type: &str, bytes: &[u8]) -> Result<Self, WireError> {
                let bad = |e: serde_json::Error| WireError::BadJson {
                    frame: "content",
                    reason: e.to_string(),
                };
                Ok(match msg_type {
                    $( $name => Content::$variant(serde_json::from_slice(bytes).map_err(bad)?), )*
                    "kernel_info_request" => Content::KernelInfoRequest,
                    "interrupt_request" => Content::InterruptRequest,
                    other => Content::Unknown {
                        msg_type: other.to_owned(),
                        content: serde_json::from_slice(bytes).map_err(bad)?,
                    },
                })
            }

            /// The content as JSON.
            pub fn to_value(&self) -> Value {
                let v = match self {
                    $( Content::$variant(c) => serde_json::to_value(c), )*
                    Content::KernelInfoRequest | Content::InterruptRequest => {
                        Ok(Value::Object(JsonMap::new()))
                    }
                    Content::Unknown { content, .. } => Ok(content.clone()),
                };
                v.unwrap_or_else(|_| Value::Object(JsonMap::new()))
            }
        }
    };
}

content_codec! {
    "execute_request" => ExecuteRequest,
    "execute_reply" => ExecuteReply,
    "status" => Status,
    "stream" => Stream,
    "display_data" => DisplayData,
    "update_display_data" => UpdateDisplayData,
    "execute_result" => ExecuteResult,
    "error" => Error,
    "execute_input" => ExecuteInput,
    "clear_output" => ClearOutput,
    "input_request" => InputRequest,
    "input_reply" => InputReply,
    "kernel_info_reply" => KernelInfoReply,
    "interrupt_reply" => InterruptReply,
    "shutdown_request" => ShutdownRequest,
    "shutdown_reply" => ShutdownReply,
    "comm_open" => CommOpen,
    "comm_msg" => CommMsg,
    "comm_close" => CommClose,
}

impl Content {
    /// The content serialised as JSON bytes.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_value()).unwrap_or_else(|_| b"{}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_enum_stays_small() {
        // Large variants are boxed; keep the enum from growing by accident.
        assert!(std::mem::size_of::<Content>() <= 160);
    }

    #[test]
    fn message_roundtrip() {
        let signer = Signer::new(b"key").unwrap();
        let msg = Message::new(
            Content::ExecuteRequest(ExecuteRequest::new("1+1")),
            "s",
            "u",
        );
        let frames = msg.to_frames(&signer, &[]);
        let (idents, back) = Message::from_frames(frames, &signer, &Limits::default()).unwrap();
        assert!(idents.is_empty());
        assert_eq!(back, msg);
        assert_eq!(back.msg_type(), "execute_request");
    }

    #[test]
    fn unknown_types_pass_through() {
        let c = Content::decode("debug_reply", br#"{"x":[1,2]}"#).unwrap();
        assert_eq!(c.msg_type(), "debug_reply");
        assert_eq!(c.to_value(), serde_json::json!({"x":[1,2]}));
    }

    #[test]
    fn tolerant_header() {
        let h: Header =
            serde_json::from_str(r#"{"msg_id":"a","msg_type":"x","date":1.5}"#).unwrap();
        assert_eq!(h.date, serde_json::json!(1.5));
        let h: Header = serde_json::from_str(r#"{"msg_id":"a","msg_type":"x"}"#).unwrap();
        assert_eq!(h.date, Value::Null);
    }

    #[test]
    fn display_id() {
        let c = Content::decode(
            "update_display_data",
            br#"{"data":{},"metadata":{},"transient":{"display_id":"d1"}}"#,
        )
        .unwrap();
        match c {
            Content::UpdateDisplayData(d) => assert_eq!(d.display_id(), Some("d1")),
            _ => panic!("wrong variant"),
        }
    }
}
