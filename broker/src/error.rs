//! The broker's one error type, and the one place it becomes a gRPC status.

use tonic::{Code, Status};

/// Everything a request can fail with. Variants carry what the user needs
/// to fix the request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("queue {0:?} not found")]
    QueueNotFound(String),
    #[error("job {0:?} not found: no task was stored under it, or it expired (--job-ttl)")]
    JobNotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("queue {name:?} already exists with other options ({diff})")]
    QueueExists { name: String, diff: String },
    #[error("schedule {0:?} not found")]
    ScheduleNotFound(String),
    #[error("schedule {0:?} already exists with another definition (delete it first)")]
    ScheduleExists(String),
    #[error("queue {queue:?} full ({depth} of {capacity} tasks); retry in ~{}", humantime::format_duration(std::time::Duration::from_millis(*retry_after_ms)))]
    QueueFull {
        queue: String,
        depth: u64,
        capacity: u64,
        /// When a retry would likely find room, from the drain rate.
        retry_after_ms: u64,
    },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} is not implemented by this broker version")]
    Unimplemented(&'static str),
    #[error("queue {0:?} was deleted")]
    QueueDeleted(String),
    #[error("timed out after {waited_ms} ms {what}")]
    DeadlineExceeded { waited_ms: u64, what: String },
    #[error("broker is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    LimitReached(String),
    #[error("not stored: {}", storage_failure(.0))]
    Storage(#[from] crate::storage::StorageError),
    /// A cluster member that is not the leader: queue calls go to the
    /// leader (its address, when known, rides in `sluice-leader`).
    #[error("{}", not_leader(.leader.as_deref()))]
    NotLeader { leader: Option<String> },
}

fn not_leader(leader: Option<&str>) -> String {
    match leader {
        Some(addr) => format!("this broker is not the cluster's leader; the leader is {addr}"),
        None => {
            "this broker is not the cluster's leader, and no leader is elected yet; retry".into()
        }
    }
}

/// The trailing metadata that names the cluster's leader, as
/// `http://HOST:PORT` (clients connect to it as given); empty while no
/// leader is known.
pub const LEADER_METADATA: &str = "sluice-leader";

/// Why a write was not stored, as the user reads it.
fn storage_failure(e: &crate::storage::StorageError) -> String {
    match e {
        crate::storage::StorageError::NotCommitted { .. } => e.to_string(),
        e => format!("the write-ahead log failed: {e}"),
    }
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub fn code(&self) -> Code {
        match self {
            Error::QueueNotFound(_) | Error::JobNotFound(_) | Error::ScheduleNotFound(_) => {
                Code::NotFound
            }
            Error::ScheduleExists(_) => Code::AlreadyExists,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::QueueExists { .. } => Code::AlreadyExists,
            Error::QueueFull { .. } => Code::ResourceExhausted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::QueueDeleted(_) => Code::Aborted,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::ShuttingDown => Code::Unavailable,
            Error::LimitReached(_) => Code::ResourceExhausted,
            Error::Storage(crate::storage::StorageError::DiskFull { .. }) => {
                Code::ResourceExhausted
            }
            Error::Storage(_) => Code::Unavailable,
            Error::NotLeader { .. } => Code::Unavailable,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        if let Error::QueueFull { retry_after_ms, .. } = &e {
            // The hint twice: google.rpc.RetryInfo for clients that read
            // rich errors, and plain trailing metadata for the others.
            let delay = std::time::Duration::from_millis(*retry_after_ms);
            let mut metadata = tonic::metadata::MetadataMap::new();
            if let Ok(v) = retry_after_ms.to_string().parse() {
                metadata.insert("retry-after-ms", v);
            }
            return <Status as tonic_types::StatusExt>::with_error_details_and_metadata(
                e.code(),
                e.to_string(),
                tonic_types::ErrorDetails::with_retry_info(Some(delay)),
                metadata,
            );
        }
        let leader = match &e {
            Error::NotLeader { leader } => Some(leader.as_deref().unwrap_or_default()),
            // The leader lost its place while the call waited for its
            // commit: whoever leads now is not known here. Said as "none
            // known yet", so that a client looks for the new leader (and
            // sends a numbered enqueue again, which the new leader
            // recognises if its entry was committed after all).
            Error::Storage(crate::storage::StorageError::NotCommitted { .. }) => Some(""),
            _ => None,
        };
        if let Some(leader) = leader {
            // Present even when empty: "not the leader, and none known
            // yet", which a client waits out rather than gives up on.
            let mut metadata = tonic::metadata::MetadataMap::new();
            if let Ok(v) = leader.parse() {
                metadata.insert(LEADER_METADATA, v);
            }
            return Status::with_metadata(e.code(), e.to_string(), metadata);
        }
        Status::new(e.code(), e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
