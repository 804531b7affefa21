//! The sluice broker: named bounded queues behind a gRPC API.
//!
//! Three layers, each knowing only the one below (DESIGN.md §1):
//! - [`service`]: tonic handlers — decode, validate, call the registry, map
//!   errors to `tonic::Status` (in [`error`]).
//! - [`registry`]: the async runtime around the engine — one handle per
//!   queue owning its state behind a mutex held only for an engine call,
//!   a timer task per queue, routing of deliveries and wake-ups.
//! - [`engine`]: the sans-I/O state machine of one queue.

pub mod engine;
