//! Parsers for argument values: durations and `--header NAME=VALUE`.

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
}
