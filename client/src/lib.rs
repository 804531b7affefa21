//! Typed async client of the sluice broker.
//!
//! [`Client`] wraps the tonic client generated from `proto/sluice/v1`: one
//! method per unary RPC, plain Rust arguments in, proto messages out, and one
//! [`Error`] type that keeps the gRPC status code. The generated types are
//! re-exported as [`proto`], so this crate is the only dependency a Rust
//! producer or consumer needs.
//!
//! Layout:
//! - `client.rs`   — [`Client`]: connecting, and the RPC methods;
//! - `error.rs`    — [`Error`], and how a `tonic::Status` becomes one;
//! - `delivery.rs` — [`DeliveryExt`]: lease tokens from deliveries;
//! - `pacer.rs`    — [`Pacer`]: slowing a producer before the queue fills;
//! - `publisher.rs` — [`Publisher`]: the credit-based Publish stream;
//! - `job.rs`      — [`JobWatch`]: sealing and watching jobs;
//! - `schedule.rs` — schedules: tasks the broker enqueues on every tick of
//!   a cron expression or an interval ([`Client::create_schedule`]);
//! - `coalesce.rs` — [`Coalescing`]: frames queued while the connection is
//!   busy go out as one (the Publisher's, and the worker runtime's).
//!
//! The bidirectional `Consume` stream is not wrapped here: the worker runtime
//! (crate `sluice-worker`) drives it through [`Client::raw`].
//!
//! The `sluice` command-line client lives in the same package
//! (`src/main.rs`, `src/cli/`) and uses only this public API.

mod client;
mod coalesce;
mod delivery;
mod error;
mod job;
mod pacer;
mod publisher;
mod schedule;

pub use client::{
    Client, DEFAULT_CONNECT_TIMEOUT, LEADER_METADATA, QueueCreated, Raw, TlsOptions, duration_ms,
    leader_hint,
};
pub use coalesce::{Coalesce, Coalescing, FrameLimit};
pub use delivery::DeliveryExt;
pub use error::{Error, code_name};
pub use job::{JobEvent, JobWatch};
pub use pacer::Pacer;
pub use publisher::Publisher;
/// The generated `sluice.v1` messages, enums and tonic client.
pub use sluice_proto::v1 as proto;
/// The gRPC status code carried by [`Error::code`].
pub use tonic::Code;
