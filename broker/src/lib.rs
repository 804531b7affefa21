//! The sluice broker: named bounded queues behind a gRPC API.
//!
//! The folders stack the way a request travels (docs/architecture.md):
//! - [`api`]: the only code that speaks protobuf — unary handlers, the
//!   Consume and Publish stream sessions, WatchJob, auth, and turning wire
//!   messages into domain values within the limits;
//! - [`broker`]: the async runtime around the engine — the queues, the
//!   effect executor (where an engine call's changes become log records and
//!   then effects), the waiting operations, the memory budget, compaction,
//!   timers; and [`jobs`], the job registry;
//! - [`engine`]: the sans-I/O state machine of one queue (its own crate);
//! - [`wal`]: what durable queues log and how a restart replays it, on
//!   [`storage`], the segmented log.
//!
//! Beside them: [`error`] (one error type, one mapping to gRPC status),
//! [`limits`], [`ids`], [`lease`], [`latency`] and [`metrics`]; [`server`]
//! puts the API on a listener; `main.rs` only parses [`args`] and
//! [`config`]. A test (`layers` below) checks that no module reaches up.

pub mod api;
pub mod args;
pub mod broker;
pub mod config;
/// The queue engine, its own crate (`broker/engine`), read here as
/// `crate::engine`.
pub use sluice_engine as engine;
pub mod error;
pub mod ids;
pub mod jobs;
pub mod latency;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod signal;
pub mod storage;
pub mod tls;
pub mod wal;
