//! The API: the only code that speaks protobuf. Handlers decode and check
//! a request ([`validate`], [`auth`]), call the broker, and encode the
//! answer; errors become `tonic::Status` in one place (`crate::error`).
//! - [`service`]: the unary calls, and where each stream starts;
//! - [`consume`] and [`publish`]: the worker's and the producer's stream
//!   sessions;
//! - [`watch`]: a job's outcomes to a watcher;
//! - [`leader`]: in a cluster, queue calls only on the leader;
//! - [`info`] answers GetBrokerInfo; [`reply`] turns domain values into
//!   the messages the broker sends.

pub mod auth;
pub mod consume;
pub mod info;
pub mod leader;
pub mod publish;
pub mod reply;
pub mod service;
pub mod validate;
pub mod watch;
