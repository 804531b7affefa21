//! The sluice broker: named bounded queues behind a gRPC API.
//!
//! Three layers, each knowing only the one below (DESIGN.md §1):
//! - [`service`] and [`consume`]: tonic handlers — decode, check with
//!   [`validate`], call the registry, map [`error`]s to `tonic::Status`.
//! - [`registry`]: the async runtime around the engine — one handle per
//!   queue owning its state behind a mutex held only for an engine call,
//!   a timer task per queue, routing of deliveries and wake-ups.
//! - [`engine`]: the sans-I/O state machine of one queue.
//!
//! [`server`] puts them on a listener; `main.rs` only parses [`args`].

pub mod args;
pub mod auth;
pub mod config;
pub mod consume;
pub mod durable;
/// The queue engine, its own crate (`broker/engine`): kept here under its
/// old name so the broker reads `crate::engine::…`.
pub use sluice_engine as engine;
pub mod broker;
pub mod error;
pub mod info;
pub mod jobs;
pub mod latency;
pub mod lease;
pub mod metrics;
pub mod publish;
pub mod recover;
pub mod server;
pub mod service;
pub mod signal;
pub mod storage;
pub mod tls;
pub mod validate;
pub mod watch;
