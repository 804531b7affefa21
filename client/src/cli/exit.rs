//! Exit codes and the one-line failure messages, in one place.
//!
//! Scripts branch on these codes, so each has one meaning. The numbers
//! beyond 3 come from BSD's sysexits.h (EX_UNAVAILABLE, EX_TEMPFAIL), which
//! shells and supervisors already know.

use std::fmt;
use std::process::ExitCode;

use sluice_client::{Error, code_name};

/// The process exit codes of `sluice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// The broker refused the request, a wait timed out, or local I/O failed.
    Failure = 1,
    /// Bad command line (clap's own code for usage errors).
    Usage = 2,
    /// `get` found the queue empty.
    QueueEmpty = 3,
    /// The broker could not be reached, or the connection broke (EX_UNAVAILABLE).
    Unreachable = 69,
    /// `enqueue --no-wait` found the queue full: try again later (EX_TEMPFAIL).
    QueueFull = 75,
}

/// The exit-code table shown at the end of `sluice --help`.
pub const HELP: &str = "\
Exit codes:
  0   success
  1   the broker refused the request (error: MESSAGE (GRPC_CODE)), a --timeout
      passed, or reading/writing local data failed
  2   bad command line
  3   get: the queue is empty
  69  the broker cannot be reached, or the connection to it broke
  75  enqueue --no-wait: the queue is full

Errors are one line on stderr; results go to stdout.";

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// Why a command did not succeed. Its `Display` is the line printed on
/// stderr and [`Failure::exit`] the exit code.
#[derive(Debug)]
pub enum Failure {
    /// A client or broker error.
    Client(Error),
    /// A bad argument clap could not check (exit 2).
    Usage(String),
    /// `get` found nothing.
    QueueEmpty,
    /// A FAIL_FAST enqueue found the queue full; the broker's message.
    QueueFull(String),
    /// A `--timeout` passed; the whole message.
    TimedOut(String),
    /// The broker refused to settle a lease; the whole message.
    Refused(String),
    /// Local I/O failed: what we were doing, and why.
    Io(&'static str, std::io::Error),
}

impl Failure {
    /// The exit code for this failure.
    pub fn exit(&self) -> Exit {
        match self {
            Failure::Client(e) if e.is_unreachable() => Exit::Unreachable,
            Failure::Client(Error::InvalidUrl { .. }) | Failure::Usage(_) => Exit::Usage,
            Failure::Client(_) | Failure::TimedOut(_) | Failure::Refused(_) | Failure::Io(..) => {
                Exit::Failure
            }
            Failure::QueueEmpty => Exit::QueueEmpty,
            Failure::QueueFull(_) => Exit::QueueFull,
        }
    }

    /// The stderr line: `Display` with line breaks folded, since a broker
    /// or OS message could contain some and scripts read one line.
    pub fn line(&self) -> String {
        self.to_string().replace(['\n', '\r'], " ")
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Client(Error::Status { code, message, .. }) => {
                write!(f, "error: {message} ({})", code_name(*code))
            }
            Failure::Client(e) => write!(f, "error: {e}"),
            Failure::Usage(msg) => write!(f, "error: {msg}"),
            Failure::QueueEmpty => f.write_str("queue empty"),
            Failure::QueueFull(msg) if msg.is_empty() => f.write_str("queue full"),
            Failure::QueueFull(msg) => write!(f, "queue full, {msg}"),
            Failure::TimedOut(msg) | Failure::Refused(msg) => f.write_str(msg),
            Failure::Io(doing, e) => write!(f, "error: {doing}: {e}"),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Client(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_client::Code;

    fn status(code: Code, message: &str) -> Failure {
        Failure::Client(Error::Status {
            code,
            message: message.to_owned(),
            retry_after: None,
        })
    }

    #[test]
    fn broker_errors_exit_1_with_code_name() {
        let f = status(Code::NotFound, "queue \"x\" not found");
        assert_eq!(f.exit(), Exit::Failure);
        assert_eq!(f.line(), "error: queue \"x\" not found (NOT_FOUND)");
        // Even UNAVAILABLE: the broker answered (it is shutting down).
        assert_eq!(status(Code::Unavailable, "draining").exit(), Exit::Failure);
    }

    #[test]
    fn unreachable_exits_69() {
        let f = Failure::Client(Error::Connect {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(f.exit(), Exit::Unreachable);
        assert_eq!(
            f.line(),
            "error: cannot reach broker at http://127.0.0.1:1: connection refused"
        );
        let lost = Failure::Client(Error::Transport {
            url: "u".into(),
            reason: "reset".into(),
        });
        assert_eq!(lost.exit(), Exit::Unreachable);
    }

    #[test]
    fn special_outcomes_have_their_codes() {
        assert_eq!(Failure::QueueEmpty.exit() as u8, 3);
        assert_eq!(Failure::QueueEmpty.line(), "queue empty");
        let full = Failure::QueueFull("queue \"q\" is full".into());
        assert_eq!(full.exit() as u8, 75);
        assert!(full.line().starts_with("queue full"));
        assert_eq!(Failure::QueueFull(String::new()).line(), "queue full");
        assert_eq!(Failure::Usage("bad".into()).exit() as u8, 2);
        let url = Failure::Client(Error::InvalidUrl {
            url: "x".into(),
            reason: "y".into(),
        });
        assert_eq!(url.exit(), Exit::Usage);
        assert_eq!(Failure::TimedOut("timed out".into()).exit() as u8, 1);
    }

    #[test]
    fn lines_never_break() {
        let f = status(Code::Internal, "two\nlines");
        assert_eq!(f.line(), "error: two lines (INTERNAL)");
    }
}
