//! # cellblock-protocol
//!
//! A Jupyter kernel client library: the messaging protocol spoken over ZeroMQ,
//! with nothing of HTTP, Linux or storage in it.
//!
//! ## Layout
//! - [`wire`]: framing (`idents`, `<IDS|MSG>`, HMAC-SHA256 signature, buffers),
//!   signing and constant-time verification, and size caps for hostile frames.
//! - [`message`]: header and message types, and typed contents for the messages
//!   cellblock uses; everything else is kept as raw JSON ([`message::Content::Unknown`]).
//! - [`connection`]: connection files for the `tcp` and `ipc` transports.
//! - [`client`]: the async client (shell, control, stdin, iopub, heartbeat) with
//!   readiness detection and per-request routing by the `msg_id`s it issued.
//! - [`outputs`]: folds iopub messages of one execution into final outputs with
//!   nbclient's display semantics.
//!
//! ## Trust
//! The code running in a kernel can read the connection key and send any bytes.
//! Every frame received is treated as hostile: counts and sizes are checked
//! before anything is sliced, signatures are verified in constant time, nothing
//! panics on malformed input, and replies are routed only by `msg_id`s that this
//! client issued.
#![forbid(unsafe_code)]

pub mod client;
pub mod connection;
pub mod message;
pub mod outputs;
pub mod wire;

pub use client::{ClientError, ExecutionEvent, KernelClient};
pub use connection::{ConnectionInfo, Transport};
pub use message::{Channel, Content, Header, Message};
pub use wire::{Limits, Signer, WireError};
