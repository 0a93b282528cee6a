//! # cellblock
//!
//! The broker: an HTTP API in front of long-lived Jupyter kernels.
//!
//! ## Layout
//! - [`config`]: the settings `cellblock serve` runs with.
//! - [`image`]: kernel images: building the python venv and finding it again.
//! - [`isolation`]: the `cellblock-isolation` crate (`broker/isolation`):
//!   everything that touches processes at the OS level (the jail, namespaces,
//!   cgroups, signals, `/proc` checks). It is the only place raw syscalls may
//!   live; it is also built as the shared library the zygote loads.
//! - [`sandbox`]: sandbox lifecycle: kernels, executions, timeouts, crashes,
//!   idle culling, leftovers from an earlier run.
//! - [`cli`]: `cellblock replay` and `cellblock export`, clients of a server.
//! - [`api`]: the HTTP surface (`/v1`, `/healthz`), its errors and auth.
//! - [`server`]: binds the listener and runs until a shutdown signal.
//! - [`trace`]: the durable record of sandboxes, executions and commands
//!   (SQLite), and the notebook export.

pub mod api;
pub mod cli;
pub mod config;
pub mod image;
pub mod sandbox;
pub mod server;
pub mod trace;

/// The `cellblock-isolation` crate (`broker/isolation`), under its old path.
pub use cellblock_isolation as isolation;
