//! How the log is opened: fsync policy, segment size, quota, repair.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::error::{Result, StorageError};
use super::format::{FRAME_HEADER_LEN, HEADER_LEN, MAX_RECORD_LEN};

/// When an append is confirmed relative to `fdatasync`.
///
/// Parsed from `always`, `never` or `interval:<duration>` (humantime, e.g.
/// `interval:10ms`), which is also how it is displayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` before confirming: a confirmed record survives a power
    /// loss. One `fdatasync` is shared by everything written in a batch.
    #[default]
    Always,
    /// Confirm once written to the OS; `fdatasync` at most once per
    /// interval (and within an interval of the last unsynced write). A
    /// power loss can lose the last interval of confirmed records; a crash
    /// of the broker alone loses nothing.
    Interval(Duration),
    /// Confirm once written to the OS and leave flushing to it, except on
    /// segment roll, `flush` and close.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason: String| StorageError::InvalidOption {
            key: "fsync",
            reason,
        };
        match s.trim() {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => match other.strip_prefix("interval:") {
                Some(dur) => {
                    let d = humantime::parse_duration(dur.trim()).map_err(|e| {
                        invalid(format!(
                            "bad interval {dur:?} in {s:?}: {e} (e.g. interval:10ms)"
                        ))
                    })?;
                    if d.is_zero() {
                        return Err(invalid(format!(
                            "interval must be longer than zero in {s:?} (use \"always\" to sync every write)"
                        )));
                    }
                    Ok(FsyncPolicy::Interval(d))
                }
                None => Err(invalid(format!(
                    "expected \"always\", \"never\" or \"interval:<duration>\" (e.g. interval:10ms), got {s:?}"
                ))),
            },
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", humantime::format_duration(*d)),
        }
    }
}

/// Options for [`Log::open`](super::Log::open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    pub fsync: FsyncPolicy,
    /// A segment is rolled before a batch would take it past this size,
    /// so segments stay at most this big unless one batch is bigger.
    /// Default 64 MiB.
    pub segment_bytes: u64,
    /// The broker's disk quota for the log: an append that would take the
    /// segments' total size past it fails with
    /// [`StorageError::DiskFull`], exactly as a full disk does. `None`
    /// (default) means only the disk limits it.
    pub max_bytes: Option<u64>,
    /// Largest record accepted by `append`; at most the format's limit
    /// (64 MiB, the default).
    pub max_record_bytes: usize,
    /// Open a log with damage in the middle instead of refusing: copy each
    /// damaged segment aside (`<name>.corrupt-<unix time>`) and drop its
    /// records from the damage point on. Lossy; an operator's decision.
    pub repair: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            fsync: FsyncPolicy::Always,
            segment_bytes: 64 << 20,
            max_bytes: None,
            max_record_bytes: MAX_RECORD_LEN as usize,
            repair: false,
        }
    }
}

impl LogOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        // Room for a header and one frame, or every group would roll.
        let min_segment = (HEADER_LEN + FRAME_HEADER_LEN) as u64;
        if self.segment_bytes < min_segment {
            return Err(StorageError::InvalidOption {
                key: "segment_bytes",
                reason: format!(
                    "{} is below the minimum of {min_segment}",
                    self.segment_bytes
                ),
            });
        }
        if self.max_record_bytes > MAX_RECORD_LEN as usize {
            return Err(StorageError::InvalidOption {
                key: "max_record_bytes",
                reason: format!(
                    "{} is above the format's limit of {MAX_RECORD_LEN}",
                    self.max_record_bytes
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policies() {
        assert_eq!(
            "always".parse::<FsyncPolicy>().ok(),
            Some(FsyncPolicy::Always)
        );
        assert_eq!(
            "never".parse::<FsyncPolicy>().ok(),
            Some(FsyncPolicy::Never)
        );
        assert_eq!(
            "interval:10ms".parse::<FsyncPolicy>().ok(),
            Some(FsyncPolicy::Interval(Duration::from_millis(10)))
        );
        assert_eq!(
            "interval:1s 500ms".parse::<FsyncPolicy>().ok(),
            Some(FsyncPolicy::Interval(Duration::from_millis(1500)))
        );
    }

    #[test]
    fn display_round_trips() {
        for p in [
            FsyncPolicy::Always,
            FsyncPolicy::Never,
            FsyncPolicy::Interval(Duration::from_millis(250)),
        ] {
            assert_eq!(p.to_string().parse::<FsyncPolicy>().ok(), Some(p));
        }
    }

    #[test]
    fn bad_policies_say_what_is_expected() {
        let msg = |s: &str| match s.parse::<FsyncPolicy>() {
            Err(e) => e.to_string(),
            Ok(p) => panic!("{s:?} parsed as {p:?}"),
        };
        assert!(msg("sometimes").contains("expected \"always\", \"never\" or \"interval:"));
        assert!(msg("Always").contains("expected"));
        assert!(msg("interval:").contains("bad interval"));
        assert!(msg("interval:soon").contains("bad interval \"soon\""));
        assert!(msg("interval:0s").contains("longer than zero"));
        assert!(msg("interval:0s").starts_with("invalid log option fsync"));
    }

    #[test]
    fn options_are_validated() {
        let tiny = LogOptions {
            segment_bytes: 10,
            ..LogOptions::default()
        };
        assert!(matches!(
            tiny.validate(),
            Err(StorageError::InvalidOption {
                key: "segment_bytes",
                ..
            })
        ));
        assert!(LogOptions::default().validate().is_ok());
    }
}
