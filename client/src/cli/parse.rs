//! Parsers for argument values: durations, `--header NAME=VALUE` and
//! `--rate N/PERIOD`.

use std::collections::HashMap;
use std::time::Duration;

/// Parses a humantime duration ("30s", "500ms", "1h 30m"), used as clap's
/// value parser. A bare "0" is accepted too: it reads naturally as "none".
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (expected e.g. 500ms, 30s, 5m, 1h)"))
}

/// Parses `--header` values into a map. A value may contain `=` (only the
/// first one splits) and may be empty; the name may not. A repeated name
/// keeps its last value, as a later flag overrides an earlier one.
///
/// Checked after clap so that the error is one line (clap adds a usage
/// block), as every other error of the CLI.
pub fn headers(raw: &[String]) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::with_capacity(raw.len());
    for item in raw {
        match item.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                map.insert(name.to_owned(), value.to_owned());
            }
            _ => return Err(format!("invalid header {item:?}: expected NAME=VALUE")),
        }
    }
    Ok(map)
}

/// A delivery rate: `tasks` per `per_ms` milliseconds (the proto's
/// `RateLimit` without its burst).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub tasks: u64,
    pub per_ms: u64,
}

/// Parses `--rate`: `N/s`, `N/m`, `N/h`, `N/d`, or N per any duration
/// (`5/500ms`, `100/2s`, `1/1h 30m`); a bare `N` is per second. `none`
/// (no limit) is `Ok(None)`.
///
/// Checked after clap, like headers, so that the error is one line. Zero
/// is refused here rather than sent: in UpdateQueue `tasks: 0` silently
/// removes the limit, and `per_ms: 0` means "per second".
pub fn rate(text: &str) -> Result<Option<Rate>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let bad = |why: &str| {
        format!("invalid rate {text:?}: {why} (expected e.g. 10/s, 600/m, 5/500ms, or none)")
    };
    let (count, period) = match text.split_once('/') {
        Some((count, period)) => (count.trim(), period.trim()),
        None => (text, "s"),
    };
    let tasks: u64 = count.parse().map_err(|_| {
        if count.contains('.') {
            bad("the count must be a whole number of tasks (1/2s rather than 0.5/s)")
        } else {
            bad("the count must be a whole number")
        }
    })?;
    if tasks == 0 {
        return Err(bad(
            "the count must be at least 1 (--rate none removes a limit)",
        ));
    }
    // A unit alone ("s", "min", "hour") means one of it.
    let period = if period.starts_with(|c: char| c.is_ascii_alphabetic()) {
        format!("1{period}")
    } else {
        period.to_owned()
    };
    let period = humantime::parse_duration(&period).map_err(|e| bad(&format!("period: {e}")))?;
    if period.is_zero() {
        return Err(bad("the period must be longer than 0"));
    }
    if period.subsec_nanos() % 1_000_000 != 0 {
        return Err(bad("the period must be whole milliseconds"));
    }
    let per_ms = u64::try_from(period.as_millis()).map_err(|_| bad("the period is too long"))?;
    Ok(Some(Rate { tasks, per_ms }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        assert!(duration("30").is_err(), "a unit is required");
        assert!(duration("soon").is_err());
        assert!(duration("-1s").is_err());
    }

    #[test]
    fn headers_split_at_first_equals() {
        let raw = ["a=1".to_owned(), "b=x=y".to_owned(), "c=".to_owned()];
        let map = headers(&raw).expect("valid");
        assert_eq!(map["a"], "1");
        assert_eq!(map["b"], "x=y");
        assert_eq!(map["c"], "");
    }

    #[test]
    fn last_header_wins() {
        let raw = ["a=1".to_owned(), "a=2".to_owned()];
        assert_eq!(headers(&raw).expect("valid")["a"], "2");
    }

    #[test]
    fn headers_without_equals_or_name_are_refused() {
        let err = headers(&["oops".to_owned()]).expect_err("no =");
        assert_eq!(err, "invalid header \"oops\": expected NAME=VALUE");
        assert!(headers(&["=v".to_owned()]).is_err());
    }

    fn per(tasks: u64, per_ms: u64) -> Result<Option<Rate>, String> {
        Ok(Some(Rate { tasks, per_ms }))
    }

    #[test]
    fn rates_per_unit_and_per_duration() {
        assert_eq!(rate("10/s"), per(10, 1000));
        assert_eq!(rate("10"), per(10, 1000), "a bare count is per second");
        assert_eq!(rate("600/m"), per(600, 60_000));
        assert_eq!(rate("600/min"), per(600, 60_000));
        assert_eq!(rate("3/h"), per(3, 3_600_000));
        assert_eq!(rate("1/d"), per(1, 86_400_000));
        assert_eq!(rate("5/500ms"), per(5, 500));
        assert_eq!(rate("100/2s"), per(100, 2000));
        assert_eq!(rate("1/1h 30m"), per(1, 5_400_000));
        assert_eq!(rate(" 7 / s "), per(7, 1000));
        assert_eq!(rate("none"), Ok(None));
        assert_eq!(rate("NONE"), Ok(None));
    }

    #[test]
    fn bad_rates_say_why_in_one_line() {
        for (text, why) in [
            ("0/s", "at least 1"),
            ("0", "at least 1"),
            ("abc", "whole number"),
            ("-1/s", "whole number"),
            ("0.5/s", "1/2s rather than 0.5/s"),
            ("10/", "period"),
            ("10/fortnight", "period"),
            ("10/0s", "longer than 0"),
            ("10/1500us", "whole milliseconds"),
            ("", "whole number"),
        ] {
            let err = rate(text).expect_err(text);
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(err.starts_with("invalid rate "), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
