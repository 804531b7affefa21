//! sluice's worker side: [`Worker`], a runtime that consumes a queue over
//! one `Consume` stream with flow-control credits and runs a handler per
//! task (see [`runtime`]); and the two handlers behind the `sluice-worker`
//! binary: [`command`], which runs a command per task, through the task
//! [`shim`] that keeps it from outliving the worker (Linux), and `http`
//! (the `http` feature, on with the binary's), which POSTs each task to
//! a URL and turns the answer, a 429's Retry-After included, into an
//! [`Outcome`].

pub mod command;
#[cfg(feature = "http")]
pub mod http;
pub mod runtime;
#[cfg(target_os = "linux")]
pub mod shim;

pub use runtime::{Config, Outcome, Task, Throttle, Worker};

/// Why a worker stopped for good (connection losses are retried, not
/// returned).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid worker configuration: {0}")]
    Config(String),
    #[error("{message} ({})", sluice_client::code_name(*.code))]
    Broker {
        code: sluice_client::Code,
        message: String,
    },
    #[error(transparent)]
    Client(#[from] sluice_client::Error),
    #[error(
        "stopped, but the broker did not confirm the last acks: \
         their tasks may be run again elsewhere"
    )]
    Unconfirmed,
}
