//! The formats of `data-fmt`: how the pages write numbers, sizes,
//! durations and ages. `assets/app.js` writes them too, when it updates a
//! page: keep the two alike.

use crate::web::model::{JobRow, RateView};

/// 1234567 → "1,234,567".
pub fn int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate per second: "0", "0.4", "12", "1,234".
pub fn rate(x: f64) -> String {
    if !x.is_finite() || x < 0.05 {
        "0".into()
    } else if x < 10.0 {
        let s = format!("{x:.1}");
        s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
    } else {
        int(x.round() as u64)
    }
}

/// "512 B", "1.5 KiB", "12.3 MiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A duration in ms: "120 ms", "3.2 s", "4 min", "2 h 5 min".
pub fn ms(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} ms"),
        1_000..60_000 => format!("{:.1} s", n as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min", n / 60_000),
        _ => format!("{} h {} min", n / 3_600_000, n % 3_600_000 / 60_000),
    }
}

/// As [`ms`], 0 as "—" (off, none).
pub fn ms_off(n: u64) -> String {
    if n == 0 { "—".into() } else { ms(n) }
}

/// A latency in fractional ms: "0.25 ms", "12 ms".
pub fn msf(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2} ms")
    } else {
        format!("{} ms", int(x.round() as u64))
    }
}

/// An uptime: "42 s", "12 min", "4 h 12 min", "3 d 4 h".
pub fn secs(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3_600 => format!("{} min", s / 60),
        3_600..86_400 => format!("{} h {} min", s / 3_600, s % 3_600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// How long ago `t` (ms since the epoch) was: "just now", "12 s ago".
pub fn ago(t: u64, now: u64) -> String {
    if t == 0 {
        return "—".into();
    }
    let d = now.saturating_sub(t) / 1000;
    match d {
        0 => "just now".into(),
        1..60 => format!("{d} s ago"),
        60..3_600 => format!("{} min ago", d / 60),
        3_600..86_400 => format!("{} h ago", d / 3_600),
        _ => format!("{} d ago", d / 86_400),
    }
}

/// When `t` comes: "in 3.2 s", "now".
pub fn due(t: u64, now: u64) -> String {
    if t <= now {
        "now".into()
    } else {
        format!("in {}", ms(t - now))
    }
}

/// When `t` comes, to the second: "in 12 s", "in 4 min", "in 2 h 5 min";
/// "now" once it is due (a tick the broker is firing).
pub fn until(t: u64, now: u64) -> String {
    if t <= now {
        "now".into()
    } else {
        format!("in {}", secs((t - now).div_ceil(1000)))
    }
}

/// A group's name; the unnamed one is every task enqueued without.
pub fn group(name: &str) -> String {
    if name.is_empty() {
        "(no group)".into()
    } else {
        name.into()
    }
}

/// A dead letter's attempts header: "1 attempt", "3 attempts".
pub fn attempts(n: &str) -> String {
    if n == "1" {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

/// Why a task died (its x-sluice-dead-reason), in words.
pub fn reason(r: &str) -> String {
    match r {
        "max-attempts" => "gave up".into(),
        "rejected" => "rejected by its worker".into(),
        "dropped" => "dropped".into(),
        other => other.into(),
    }
}

/// A cap: 0 is none.
pub fn limit(n: u64) -> String {
    if n == 0 { "no limit".into() } else { int(n) }
}

/// "10 per 1.0 s, burst 20".
pub fn rate_limit(r: &RateView) -> String {
    format!(
        "{} per {}, burst {}",
        int(r.tasks),
        ms(r.per_ms),
        int(r.burst)
    )
}

/// "12 of 40 done", or "12 of 30 stored so far" for an open job.
pub fn job_done(j: &JobRow) -> String {
    let done = j.succeeded + j.failed;
    match j.total {
        Some(t) => format!("{} of {} done", int(done), int(t)),
        None => format!("{} of {} stored so far", int(done), int(j.stored)),
    }
}

pub fn failed(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("{} failed", int(n))
    }
}

pub fn job_state(j: &JobRow) -> String {
    match (j.done, j.total) {
        (true, _) => "done",
        (false, None) => "open",
        (false, Some(_)) => "running",
    }
    .into()
}

/// A sparkline's line and area in a 100×24 box, scaled to the largest
/// value with some headroom (a flat line at the bottom when all are 0).
pub fn spark_paths(values: &[u64]) -> (String, String) {
    if values.is_empty() {
        return (String::new(), String::new());
    }
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = if values.len() > 1 {
        100.0 / (values.len() - 1) as f64
    } else {
        0.0
    };
    let mut line = String::new();
    for (i, v) in values.iter().enumerate() {
        let x = i as f64 * step;
        let y = 23.0 - *v as f64 / max * 19.0;
        line.push_str(&format!("{}{x:.1},{y:.1}", if i == 0 { "M" } else { " L" }));
    }
    if values.len() == 1 {
        let y = 23.0 - values[0] as f64 / max * 19.0;
        line.push_str(&format!(" L100.0,{y:.1}"));
    }
    let area = format!("{line} L100.0,24.0 L0.0,24.0 Z");
    (line, area)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_at_a_glance() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1_234_567), "1,234,567");
        assert_eq!(rate(0.01), "0");
        assert_eq!(rate(3.0), "3");
        assert_eq!(rate(3.26), "3.3");
        assert_eq!(rate(1234.4), "1,234");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(2 << 30), "2.0 GiB");
        assert_eq!(ms(120), "120 ms");
        assert_eq!(ms(3_200), "3.2 s");
        assert_eq!(ms(7_500_000), "2 h 5 min");
        assert_eq!(secs(15_000), "4 h 10 min");
        assert_eq!(ago(1_000, 13_500), "12 s ago");
        assert_eq!(due(5_000, 1_800), "in 3.2 s");
        assert_eq!(until(13_000, 1_000), "in 12 s");
        assert_eq!(until(13_000, 1_001), "in 12 s");
        assert_eq!(until(1_000 + 7_500_000, 1_000), "in 2 h 5 min");
        assert_eq!(until(1_000, 1_000), "now");
    }

    #[test]
    fn a_sparkline_fits_its_box() {
        assert_eq!(spark_paths(&[]).0, "");
        let (line, area) = spark_paths(&[0, 2, 1]);
        assert_eq!(line, "M0.0,23.0 L50.0,4.0 L100.0,13.5");
        assert!(area.ends_with("Z"));
        assert_eq!(spark_paths(&[5]).0, "M0.0,4.0 L100.0,4.0");
    }
}
