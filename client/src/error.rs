//! The crate's one error type, and the single place where a
//! `tonic::Status` is turned into it.
//!
//! A failed call reaches us as a `Status` either way, but two very different
//! things hide behind it: an answer the broker sent (its code and message
//! are the API, see the .proto), or a failure tonic made up locally because
//! the connection could not be made or broke. Callers care (the CLI exits
//! 69 for the latter), so [`Error`] keeps them apart.

use std::error::Error as StdError;

use tonic::{Code, Status, TimeoutExpired};

/// Everything a [`Client`](crate::Client) call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker URL could not be parsed or uses an unsupported scheme.
    #[error("invalid broker URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection to the broker could be made.
    #[error("cannot reach broker at {url}: {reason}")]
    Connect {
        /// The broker URL.
        url: String,
        /// The transport's explanation (refused, timed out, DNS, ...).
        reason: String,
    },
    /// The connection broke during a call, so its outcome is unknown (an
    /// enqueue may or may not have been stored).
    #[error("lost connection to broker at {url}: {reason}")]
    Transport {
        /// The broker URL.
        url: String,
        /// The transport's explanation.
        reason: String,
    },
    /// The broker answered with a gRPC status other than OK; the .proto
    /// documents which code means what. A call's deadline passing is
    /// reported here as `DeadlineExceeded`, whichever side noticed it.
    #[error("{message}")]
    Status {
        /// The status code.
        code: Code,
        /// The broker's message (the code's description if it sent none).
        message: String,
        /// For a full queue (RESOURCE_EXHAUSTED): when a retry would likely
        /// find room, from the queue's drain rate.
        retry_after: Option<std::time::Duration>,
    },
    /// The broker's answer lacks a field it always sets.
    #[error("malformed answer from broker: {0}")]
    Protocol(String),
}

impl Error {
    /// The gRPC code of this error. Errors that are not a broker's answer
    /// get the code a gRPC client would report for them: `Unavailable` for
    /// connection failures, `InvalidArgument` for a bad URL, `Internal` for
    /// a malformed answer.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidUrl { .. } => Code::InvalidArgument,
            Error::Connect { .. } | Error::Transport { .. } => Code::Unavailable,
            Error::Status { code, .. } => *code,
            Error::Protocol(_) => Code::Internal,
        }
    }

    /// True when the broker could not be reached or the connection broke,
    /// as opposed to the broker answering with an error.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::Transport { .. })
    }

    /// Classifies a failed call's status; `url` names the broker in
    /// connection errors.
    pub(crate) fn from_status(status: Status, url: &str) -> Error {
        // Statuses decoded from the broker's trailers carry no source; the
        // ones tonic builds from a local failure always do.
        let local = status.source().is_some();
        if is_timeout(&status) {
            return Error::Status {
                code: Code::DeadlineExceeded,
                message: "deadline exceeded".to_owned(),
                retry_after: None,
            };
        }
        if local && status.code() != Code::Cancelled {
            let reason = error_chain(&status);
            let reason = if reason.is_empty() {
                status.message().to_owned()
            } else {
                reason
            };
            let url = url.to_owned();
            return if has_in_chain::<tonic::ConnectError>(&status) {
                Error::Connect { url, reason }
            } else {
                Error::Transport { url, reason }
            };
        }
        let message = if status.message().is_empty() {
            status.code().description().to_owned()
        } else {
            status.message().to_owned()
        };
        Error::Status {
            code: status.code(),
            message,
            retry_after: retry_after(&status),
        }
    }

    /// When the broker suggests retrying (a full queue), if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// An eager connect that failed.
    pub(crate) fn connect(url: &str, err: &tonic::transport::Error) -> Error {
        Error::Connect {
            url: url.to_owned(),
            reason: error_chain(err),
        }
    }
}

/// The broker's retry hint: google.rpc.RetryInfo in the status details, or
/// the `retry-after-ms` trailer.
fn retry_after(status: &Status) -> Option<std::time::Duration> {
    use tonic_types::StatusExt;
    if let Some(d) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
        return Some(d);
    }
    let ms: u64 = status
        .metadata()
        .get("retry-after-ms")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// The canonical upper-case name of a gRPC code (`NOT_FOUND`), as grpcurl and
/// the other languages' clients print it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether a call ended because its deadline passed. tonic's client and
/// server both enforce the `grpc-timeout` header and report expiry as
/// CANCELLED "Timeout expired"; a broker that notices first answers
/// DEADLINE_EXCEEDED. All three mean the same to a caller.
fn is_timeout(status: &Status) -> bool {
    status.code() == Code::DeadlineExceeded
        || has_in_chain::<TimeoutExpired>(status)
        || (status.code() == Code::Cancelled && status.message() == TimeoutExpired(()).to_string())
}

fn has_in_chain<E: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// The messages of `err` and its sources joined by ": ", skipping the
/// generic ones ("transport error") and repeats, so a connection failure
/// reads as one informative line.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string().replace(['\n', '\r'], " ");
        let generic = text == "transport error" || text.starts_with("code: '");
        if !generic && !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_status_keeps_code_and_message() {
        let e = Error::from_status(Status::not_found("queue \"x\" not found"), "http://b");
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.to_string(), "queue \"x\" not found");
        assert!(!e.is_unreachable());
    }

    #[test]
    fn empty_message_gets_the_code_description() {
        let e = Error::from_status(Status::new(Code::Aborted, ""), "http://b");
        assert_eq!(e.to_string(), Code::Aborted.description());
    }

    #[test]
    fn broker_unavailable_is_an_answer_not_unreachable() {
        // UNAVAILABLE sent by a broker that is shutting down has no source.
        let e = Error::from_status(Status::unavailable("shutting down"), "http://b");
        assert!(!e.is_unreachable());
        assert_eq!(e.code(), Code::Unavailable);
    }

    #[test]
    fn local_connect_failure_is_unreachable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = Status::from_error(Box::new(tonic::ConnectError(Box::new(io))));
        let e = Error::from_status(status, "http://b:1");
        assert!(matches!(e, Error::Connect { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("cannot reach broker at http://b:1: ")
        );
        assert!(e.to_string().contains("refused"));
    }

    #[test]
    fn timeouts_become_deadline_exceeded() {
        let local = Status::from_error(Box::new(TimeoutExpired(())));
        assert_eq!(
            Error::from_status(local, "u").code(),
            Code::DeadlineExceeded
        );
        let remote = Status::cancelled("Timeout expired");
        assert_eq!(
            Error::from_status(remote, "u").code(),
            Code::DeadlineExceeded
        );
        let broker = Status::deadline_exceeded("waited 5s");
        assert_eq!(
            Error::from_status(broker, "u").code(),
            Code::DeadlineExceeded
        );
        let cancel = Status::cancelled("client went away");
        assert_eq!(Error::from_status(cancel, "u").code(), Code::Cancelled);
    }

    #[test]
    fn code_names_are_grpc_spelling() {
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
    }
}
