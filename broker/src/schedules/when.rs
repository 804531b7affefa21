//! When a recurring schedule fires.
//!
//! A *tick* is one instant a schedule fires at, in Unix milliseconds (UTC):
//! a whole second for cron, a multiple of the interval for an interval. A schedule is either a cron expression read in a
//! time zone or a fixed interval. Everything here is pure: no clock, no
//! I/O; the caller says what "now" is.
//!
//! # Cron in a time zone
//!
//! The expression describes local wall-clock times. croner finds the
//! matching wall-clock times (searched as if in UTC, so it never sees a
//! daylight-saving change) and this module maps each one to an instant
//! itself, because that mapping is the product's promise:
//!
//! - a wall-clock time that a spring-forward change skips does not fire
//!   ("30 2 * * *" in America/New_York has no tick on 2026-03-08). croner's
//!   own zone-aware search would move it to just after the gap instead;
//! - a wall-clock time that a fall-back change repeats fires once, at its
//!   first occurrence ("30 1 * * *" in America/New_York fires at 05:30 UTC
//!   on 2026-11-01, not also at 06:30 UTC). This holds for every pattern,
//!   literally: "*/15 * * * *" also skips the repeated hour's second pass,
//!   so it has no tick for an hour of real time. croner would fire
//!   interval-like patterns on both passes; we do not, so that one rule
//!   covers every expression. A schedule that must keep a steady pace
//!   across daylight-saving changes should use [`When::every`].
//!
//! # Intervals
//!
//! [`When::every`] is plain UTC arithmetic: its ticks are the multiples of
//! the interval since the Unix epoch. Aligning to the epoch rather than to
//! when the schedule was created means every restart and every cluster
//! member computes the same ticks without storing an anchor, and the ticks
//! land on round times (every 30 s at :00 and :30, every hour on the hour).
//!
//! # Horizon
//!
//! No tick at or after 5000-01-01T00:00:00Z is reported, by either kind:
//! croner does not search past the year 5000, and one limit for both keeps
//! them alike.

use std::collections::VecDeque;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

const SECOND_MS: u64 = 1_000;
const MAX_GRACE_MS: u64 = 60 * SECOND_MS;
const MAX_EVERY_MS: u64 = 366 * 24 * 3_600 * SECOND_MS;
/// 5000-01-01T00:00:00Z: no tick at or after it is reported (see the
/// module doc).
const END_MS: u64 = 95_617_584_000 * SECOND_MS;

/// The aliases croner knows, plus `@midnight` which it does not.
const ALIASES: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// When a schedule fires: a cron expression read in a time zone, or a fixed interval.
#[derive(Debug, Clone)]
pub struct When {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Cron {
        /// As given (trimmed), for `describe`: croner keeps an upper-cased,
        /// alias-expanded copy.
        expr: String,
        // Boxed: a parsed pattern is some 300 bytes of bitfields.
        cron: Box<Cron>,
        tz: Tz,
    },
    Every {
        every_ms: u64,
    },
}

impl When {
    /// A cron expression: 5 fields (minute hour day-of-month month day-of-week)
    /// or 6 (seconds first), or an alias: @yearly @annually @monthly @weekly
    /// @daily @midnight @hourly, in any case. `tz`: an IANA zone name
    /// ("Europe/Paris"); None or "" = UTC. Error: a one-line message naming what
    /// is wrong ("cron expression \"…\": …", "unknown time zone \"…\"").
    /// An expression that can never fire (e.g. "0 0 30 2 *") is an error too.
    ///
    /// croner's extensions work as well: `L` (last day of the month, or with
    /// a weekday the last such in the month, "5L"), `W` (nearest weekday,
    /// "15W"), `#` (nth weekday, "1#1"), and a leading `+` on day-of-week to
    /// require both day fields to match (without it either does, as in Vixie
    /// cron).
    pub fn cron(expr: &str, tz: Option<&str>) -> Result<When, String> {
        let expr = expr.trim();
        let fail = |why: &str| format!("cron expression \"{expr}\": {why}");
        let tz = parse_zone(tz)?;

        let pattern = if expr.starts_with('@') {
            match ALIASES.iter().find(|a| a.eq_ignore_ascii_case(expr)) {
                Some(&"@midnight") => "@daily",
                Some(_) => expr,
                None => {
                    return Err(fail(&format!(
                        "unknown alias, expected one of {}",
                        ALIASES.join(" ")
                    )));
                }
            }
        } else {
            // croner's own message for this mentions a year field we do not
            // offer, so say it in our terms.
            let fields = expr.split_whitespace().count();
            if fields != 5 && fields != 6 {
                return Err(fail(&format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week) \
                     or 6 (seconds first), found {fields}"
                )));
            }
            expr
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| fail(e.to_string().trim_end_matches('.')))?;

        // croner would search up to its year limit for a match that never
        // comes (tens of seconds for an empty minute field), so rule that
        // out first, cheaply.
        if !can_fire(&cron) {
            return Err(fail("never fires"));
        }
        let when = When {
            kind: Kind::Cron {
                expr: expr.to_string(),
                cron: Box::new(cron),
                tz,
            },
        };
        // Always found once `can_fire` holds; checked rather than assumed.
        if when.next_after(0).is_none() {
            return Err(fail("never fires"));
        }
        Ok(when)
    }

    /// A fixed interval of `every_ms` (>= 1000, <= 366 days; error otherwise):
    /// ticks at every multiple of `every_ms` since the Unix epoch (so every 30 s
    /// fires at :00 and :30, every 1 h on each UTC hour), the same on every
    /// restart and every cluster member without storing an anchor.
    pub fn every(every_ms: u64) -> Result<When, String> {
        if every_ms < SECOND_MS {
            return Err(format!("interval of {every_ms} ms: must be at least 1 s"));
        }
        if every_ms > MAX_EVERY_MS {
            return Err(format!(
                "interval of {every_ms} ms: must be at most 366 days"
            ));
        }
        Ok(When {
            kind: Kind::Every { every_ms },
        })
    }

    /// The first tick strictly after `after_ms` (Unix ms, UTC). None if
    /// there is none before the horizon (5000-01-01, see the module doc).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        match &self.kind {
            Kind::Every { every_ms } => {
                let next = (after_ms / every_ms)
                    .checked_add(1)?
                    .checked_mul(*every_ms)?;
                (next < END_MS).then_some(next)
            }
            Kind::Cron { cron, tz, .. } => Forward::new(cron, *tz, after_ms)?.next(),
        }
    }

    /// How late tick `tick_ms` may still fire: min(next tick after it - tick, 60 s)
    /// (at least 1 s). A tick found later than that was missed.
    pub fn grace_ms(&self, tick_ms: u64) -> u64 {
        match self.next_after(tick_ms) {
            Some(next) => (next - tick_ms).clamp(SECOND_MS, MAX_GRACE_MS),
            None => MAX_GRACE_MS,
        }
    }

    /// The ticks in (after_ms, until_ms]: how many there are (counting stops
    /// at `cap`, returning `cap` when there are more) and the last `keep`
    /// of them in ascending order — exact even when the count hit the cap.
    ///
    /// Work is bounded by `cap + keep` ticks whatever the span: an interval
    /// is counted by arithmetic, and a cron schedule whose count reaches the
    /// cap finds its last ticks by searching backwards from `until_ms`.
    pub fn ticks_between(
        &self,
        after_ms: u64,
        until_ms: u64,
        keep: usize,
        cap: u64,
    ) -> (u64, Vec<u64>) {
        let until_ms = until_ms.min(END_MS - 1);
        if until_ms <= after_ms {
            return (0, Vec::new());
        }
        match &self.kind {
            Kind::Every { every_ms } => {
                let first = after_ms / every_ms + 1;
                let last = until_ms / every_ms;
                if last < first {
                    return (0, Vec::new());
                }
                let n = last - first + 1;
                let kept = n.min(u64::try_from(keep).unwrap_or(u64::MAX));
                let ticks = (last + 1 - kept..=last).map(|k| k * every_ms).collect();
                (n.min(cap), ticks)
            }
            Kind::Cron { cron, tz, .. } => {
                let Some(mut forward) = Forward::new(cron, *tz, after_ms) else {
                    return (0, Vec::new());
                };
                let mut count = 0;
                let mut last = VecDeque::new();
                while count < cap {
                    match forward.next() {
                        Some(tick) if tick <= until_ms => {
                            count += 1;
                            if keep > 0 {
                                if last.len() == keep {
                                    last.pop_front();
                                }
                                last.push_back(tick);
                            }
                        }
                        _ => return (count, last.into()),
                    }
                }
                // The cap is reached and there may be many more ticks: the last
                // ones come from the other end instead.
                let mut last: Vec<u64> = Backward::new(cron, *tz, until_ms)
                    .map(|backward| {
                        backward
                            .take_while(|&tick| tick > after_ms)
                            .take(keep)
                            .collect()
                    })
                    .unwrap_or_default();
                last.reverse();
                (cap, last)
            }
        }
    }

    /// For display: the expression and its zone ("0 9 * * 1-5 (Europe/Paris)")
    /// or the interval ("every 30s", "every 1h30m").
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Cron { expr, tz, .. } => format!("{expr} ({})", tz.name()),
            Kind::Every { every_ms } => format!("every {}", span(*every_ms)),
        }
    }
}

/// Whether some second, minute, hour and date match, each asked of croner.
/// Which dates match depends only on the calendar of their month (its
/// length and the weekday it starts on), and 2001 to 2028 hold every
/// calendar a year can have: 28 years of the leap-year and weekday cycle,
/// with no century year in between to break it.
fn can_fire(cron: &Cron) -> bool {
    let p = &cron.pattern;
    let any =
        |range: std::ops::Range<u32>, matches: &dyn Fn(u32) -> bool| range.into_iter().any(matches);
    any(0..60, &|s| p.second_match(s).unwrap_or(false))
        && any(0..60, &|m| p.minute_match(m).unwrap_or(false))
        && any(0..24, &|h| p.hour_match(h).unwrap_or(false))
        && NaiveDate::from_ymd_opt(2001, 1, 1).is_some_and(|start| {
            start.iter_days().take_while(|d| d.year() <= 2028).any(|d| {
                p.month_match(d.month()).unwrap_or(false)
                    && p.day_match(d.year(), d.month(), d.day()).unwrap_or(false)
            })
        })
}

fn parse_zone(tz: Option<&str>) -> Result<Tz, String> {
    match tz.map(str::trim) {
        None | Some("") => Ok(Tz::UTC),
        Some(name) => name.parse::<Tz>().map_err(|_| {
            format!("unknown time zone \"{name}\" (expected an IANA name such as \"Europe/Paris\")")
        }),
    }
}

/// "1h30m", "1s500ms", "2d".
fn span(ms: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ];
    let mut out = String::new();
    let mut rest = ms;
    for (size, unit) in UNITS {
        if rest >= size {
            let _ = write!(out, "{}{unit}", rest / size);
            rest %= size;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

// ---------------------------------------------------------------------------
// Cron: croner searches wall-clock time (a NaiveDateTime carried as UTC, so
// that croner applies no daylight-saving rule of its own) and the iterators
// below map each wall-clock match to an instant in the zone. A wall-clock
// time's tick is its first occurrence, and first occurrences are in the
// same order as their wall-clock times, so walking wall-clock time walks
// the ticks in order. Instants are whole seconds (i64) inside, milliseconds
// (u64) outside.
// ---------------------------------------------------------------------------

/// Ticks in ascending order, strictly after a starting instant.
struct Forward<'a> {
    cron: &'a Cron,
    tz: Tz,
    /// Where croner's next search starts, and whether `wall` itself may match.
    wall: NaiveDateTime,
    inclusive: bool,
    /// The last tick returned (or the start): every tick must be later.
    floor: i64,
}

impl<'a> Forward<'a> {
    fn new(cron: &'a Cron, tz: Tz, after_ms: u64) -> Option<Self> {
        if after_ms >= END_MS {
            return None;
        }
        // Ticks are whole seconds, so "after `after_ms`" is "after its second".
        let after = i64::try_from(after_ms / SECOND_MS).ok()?;
        Some(Self {
            cron,
            tz,
            wall: latest_wall_seen(tz, after)?,
            inclusive: false,
            floor: after,
        })
    }

    fn next(&mut self) -> Option<u64> {
        loop {
            // croner fails (`TimeSearchLimitExceeded`) past its year limit:
            // that is the end of this schedule.
            let wall = self
                .cron
                .find_next_occurrence(&self.wall.and_utc(), self.inclusive)
                .ok()?
                .naive_utc();
            self.wall = wall;
            self.inclusive = false;
            let instant = match self.tz.from_local_datetime(&wall) {
                LocalResult::Single(at) => at.timestamp(),
                // Repeated by a fall-back change: the first occurrence only.
                LocalResult::Ambiguous(first, _) => first.timestamp(),
                // Skipped by a spring-forward change: no tick; carry on from
                // the first wall-clock time after the gap.
                LocalResult::None => {
                    self.wall = local(self.tz, gap_change(self.tz, wall))?;
                    self.inclusive = true;
                    continue;
                }
            };
            // Always true by the order argument above; checked so that a
            // zone breaking it cannot make ticks go backwards.
            if instant > self.floor {
                self.floor = instant;
                let ms = u64::try_from(instant).ok()?.checked_mul(SECOND_MS)?;
                return (ms < END_MS).then_some(ms);
            }
        }
    }
}

/// Ticks in descending order, at or before a starting instant, from
/// croner's backward search (the tests check it against the forward one):
/// the last ticks of a long span cost no more than themselves.
struct Backward<'a> {
    cron: &'a Cron,
    tz: Tz,
    wall: NaiveDateTime,
    inclusive: bool,
    /// The last tick returned (or just past the start): every tick must be earlier.
    ceiling: i64,
}

impl<'a> Backward<'a> {
    fn new(cron: &'a Cron, tz: Tz, until_ms: u64) -> Option<Self> {
        let until = i64::try_from(until_ms / SECOND_MS).ok()?;
        Some(Self {
            cron,
            tz,
            wall: latest_wall_seen(tz, until)?,
            inclusive: true,
            ceiling: until + 1,
        })
    }
}

impl Iterator for Backward<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        loop {
            let wall = self
                .cron
                .find_previous_occurrence(&self.wall.and_utc(), self.inclusive)
                .ok()?
                .naive_utc();
            self.wall = wall;
            self.inclusive = false;
            let instant = match self.tz.from_local_datetime(&wall) {
                LocalResult::Single(at) => at.timestamp(),
                LocalResult::Ambiguous(first, _) => first.timestamp(),
                LocalResult::None => {
                    // Carry on from the last wall-clock time before the gap.
                    self.wall = local(self.tz, gap_change(self.tz, wall) - 1)?;
                    self.inclusive = true;
                    continue;
                }
            };
            if instant < self.ceiling {
                self.ceiling = instant;
                return u64::try_from(instant).ok()?.checked_mul(SECOND_MS);
            }
        }
    }
}

/// The latest wall-clock time reached at or before instant `at`: the
/// wall-clock time at `at`, except in the second pass of a repeated hour,
/// where the first pass went further (to its last second). Every wall-clock
/// time up to it has had its first occurrence by `at`, none after it has.
fn latest_wall_seen(tz: Tz, at: i64) -> Option<NaiveDateTime> {
    let wall = local(tz, at)?;
    match tz.from_local_datetime(&wall) {
        LocalResult::Ambiguous(first, second) if second.timestamp() == at => {
            let before = first.offset().fix().local_minus_utc();
            let change = first_instant(first.timestamp(), at, |i| offset(tz, i) != Some(before));
            local(tz, change - 1)
        }
        _ => Some(wall),
    }
}

/// The wall-clock time at an instant (Unix seconds).
fn local(tz: Tz, instant: i64) -> Option<NaiveDateTime> {
    Some(
        DateTime::from_timestamp(instant, 0)?
            .with_timezone(&tz)
            .naive_local(),
    )
}

/// The zone's offset from UTC at an instant, in seconds.
fn offset(tz: Tz, instant: i64) -> Option<i32> {
    Some(
        DateTime::from_timestamp(instant, 0)?
            .with_timezone(&tz)
            .offset()
            .fix()
            .local_minus_utc(),
    )
}

/// The instant of the spring-forward change that skips `wall`: the first
/// instant whose wall-clock time is later than `wall`. Zone offsets stay
/// within ±15 h, so it is within 30 h of `wall` read as UTC.
fn gap_change(tz: Tz, wall: NaiveDateTime) -> i64 {
    const REACH: i64 = 30 * 3_600;
    let naive = wall.and_utc().timestamp();
    first_instant(naive - REACH, naive + REACH, |i| {
        local(tz, i).is_none_or(|l| l > wall)
    })
}

/// The first instant in (lo, hi] where `changed` holds, by bisection:
/// `changed(lo)` is false and `changed(hi)` true. Even were `changed` not
/// monotonic between them, the answer is an instant where it turns true,
/// which is all the callers need.
fn first_instant(mut lo: i64, mut hi: i64, changed: impl Fn(i64) -> bool) -> i64 {
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if changed(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use chrono::{DateTime, SecondsFormat};

    use super::*;

    /// Unix ms of an RFC 3339 instant.
    fn ms(rfc3339: &str) -> u64 {
        let at = DateTime::parse_from_rfc3339(rfc3339).expect("a valid RFC 3339 literal");
        u64::try_from(at.timestamp_millis()).expect("after the epoch")
    }

    /// RFC 3339 of Unix ms, for failure messages.
    fn iso(ms: u64) -> String {
        let at = DateTime::from_timestamp_millis(i64::try_from(ms).expect("in range"))
            .expect("in range");
        at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    fn isos(ticks: &[u64]) -> Vec<String> {
        ticks.iter().map(|&t| iso(t)).collect()
    }

    fn cron(expr: &str, tz: &str) -> When {
        When::cron(expr, Some(tz)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The ticks after `after`, one `next_after` at a time, equal `expected`.
    #[track_caller]
    fn assert_ticks(when: &When, after: &str, expected: &[&str]) {
        let mut at = ms(after);
        let mut got = Vec::new();
        for _ in expected {
            match when.next_after(at) {
                Some(next) => {
                    got.push(next);
                    at = next;
                }
                None => break,
            }
        }
        let expected: Vec<u64> = expected.iter().map(|e| ms(e)).collect();
        assert_eq!(
            got,
            expected,
            "{} after {after}: got {:?}, expected {:?}",
            when.describe(),
            isos(&got),
            isos(&expected)
        );
    }

    #[track_caller]
    fn assert_next(when: &When, after: &str, expected: &str) {
        assert_ticks(when, after, &[expected]);
    }

    // ----- cron, UTC -------------------------------------------------------

    #[test]
    fn five_fields() {
        let w = cron("30 9 * * *", "UTC");
        assert_next(&w, "2026-05-10T09:29:59.999Z", "2026-05-10T09:30:00Z");
        // Strictly after: a tick is not its own next.
        assert_next(&w, "2026-05-10T09:30:00Z", "2026-05-11T09:30:00Z");
        assert_next(&w, "2026-05-10T09:30:00.001Z", "2026-05-11T09:30:00Z");
        assert_ticks(
            &cron("*/20 8-9 * * *", "UTC"),
            "2026-05-10T09:40:00Z",
            &["2026-05-11T08:00:00Z", "2026-05-11T08:20:00Z"],
        );
    }

    #[test]
    fn none_or_empty_zone_is_utc() {
        for w in [
            When::cron("30 9 * * *", None),
            When::cron("30 9 * * *", Some("")),
        ] {
            let w = w.expect("valid");
            assert_next(&w, "2026-05-10T00:00:00Z", "2026-05-10T09:30:00Z");
            assert_eq!(w.describe(), "30 9 * * * (UTC)");
        }
    }

    #[test]
    fn six_fields_have_seconds_first() {
        assert_ticks(
            &cron("*/20 * * * * *", "UTC"),
            "2026-05-10T09:30:00Z",
            &[
                "2026-05-10T09:30:20Z",
                "2026-05-10T09:30:40Z",
                "2026-05-10T09:31:00Z",
            ],
        );
        assert_next(
            &cron("*/20 * * * * *", "UTC"),
            "2026-05-10T09:30:19.999Z",
            "2026-05-10T09:30:20Z",
        );
        assert_next(
            &cron("15 30 9 * * *", "UTC"),
            "2026-05-10T10:00:00Z",
            "2026-05-11T09:30:15Z",
        );
        assert_ticks(
            &cron("* * * * * *", "UTC"),
            "2026-12-31T23:59:58.5Z",
            &["2026-12-31T23:59:59Z", "2027-01-01T00:00:00Z"],
        );
    }

    #[test]
    fn aliases() {
        let after = "2026-05-10T09:30:00Z"; // a Sunday
        assert_next(&cron("@hourly", "UTC"), after, "2026-05-10T10:00:00Z");
        assert_next(&cron("@daily", "UTC"), after, "2026-05-11T00:00:00Z");
        assert_next(&cron("@midnight", "UTC"), after, "2026-05-11T00:00:00Z");
        assert_next(&cron("@weekly", "UTC"), after, "2026-05-17T00:00:00Z");
        assert_next(&cron("@monthly", "UTC"), after, "2026-06-01T00:00:00Z");
        assert_next(&cron("@yearly", "UTC"), after, "2027-01-01T00:00:00Z");
        assert_next(&cron("@annually", "UTC"), after, "2027-01-01T00:00:00Z");
        // Any case, and read in the zone like any expression.
        assert_next(&cron("@HOURLY", "UTC"), after, "2026-05-10T10:00:00Z");
        assert_next(&cron("@Midnight", "UTC"), after, "2026-05-11T00:00:00Z");
        assert_next(
            &cron(" @Daily ", "Europe/Berlin"),
            after,
            "2026-05-10T22:00:00Z",
        );
        assert_eq!(cron("@Midnight", "UTC").describe(), "@Midnight (UTC)");
    }

    #[test]
    fn month_ends() {
        // April and June have 30 days.
        assert_ticks(
            &cron("0 0 31 * *", "UTC"),
            "2026-03-31T00:00:00Z",
            &[
                "2026-05-31T00:00:00Z",
                "2026-07-31T00:00:00Z",
                "2026-08-31T00:00:00Z",
            ],
        );
        assert_ticks(
            &cron("0 0 L * *", "UTC"),
            "2026-01-31T00:00:00Z",
            &[
                "2026-02-28T00:00:00Z",
                "2026-03-31T00:00:00Z",
                "2026-04-30T00:00:00Z",
            ],
        );
        assert_next(
            &cron("0 0 L * *", "UTC"),
            "2028-02-01T00:00:00Z",
            "2028-02-29T00:00:00Z",
        );
        assert_next(
            &cron("0 0 L 2 *", "UTC"),
            "2026-03-01T00:00:00Z",
            "2027-02-28T00:00:00Z",
        );
    }

    #[test]
    fn leap_years() {
        assert_ticks(
            &cron("0 0 29 2 *", "UTC"),
            "2026-01-01T00:00:00Z",
            &["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"],
        );
        // 2100 is not a leap year.
        assert_next(
            &cron("0 0 29 2 *", "UTC"),
            "2096-03-01T00:00:00Z",
            "2104-02-29T00:00:00Z",
        );
    }

    #[test]
    fn day_of_week() {
        // 2026-05-15 is a Friday.
        assert_ticks(
            &cron("0 12 * * MON-FRI", "UTC"),
            "2026-05-15T12:00:00Z",
            &["2026-05-18T12:00:00Z", "2026-05-19T12:00:00Z"],
        );
        // 0 and 7 are both Sunday.
        assert_next(
            &cron("0 0 * * 0", "UTC"),
            "2026-05-11T00:00:00Z",
            "2026-05-17T00:00:00Z",
        );
        assert_next(
            &cron("0 0 * * 7", "UTC"),
            "2026-05-11T00:00:00Z",
            "2026-05-17T00:00:00Z",
        );
        // The first Monday of the month; the last Friday.
        assert_next(
            &cron("0 9 * * 1#1", "UTC"),
            "2026-05-10T00:00:00Z",
            "2026-06-01T09:00:00Z",
        );
        assert_next(
            &cron("0 9 * * 5L", "UTC"),
            "2026-05-10T00:00:00Z",
            "2026-05-29T09:00:00Z",
        );
        // Day of month and day of week both set: either matches (as in Vixie
        // cron), unless the day of week starts with '+'.
        assert_ticks(
            &cron("0 0 13 * 5", "UTC"),
            "2026-05-10T00:00:00Z",
            &[
                "2026-05-13T00:00:00Z",
                "2026-05-15T00:00:00Z",
                "2026-05-22T00:00:00Z",
            ],
        );
        assert_next(
            &cron("0 0 13 * +5", "UTC"),
            "2026-05-10T00:00:00Z",
            "2026-11-13T00:00:00Z",
        );
    }

    // ----- cron across daylight-saving changes -----------------------------
    // America/New_York 2026: 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z);
    // 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z).
    // Europe/Berlin 2026: 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z);
    // 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z).

    #[test]
    fn new_york_spring_forward_skips_the_missing_time() {
        let w = cron("30 2 * * *", "America/New_York");
        assert_ticks(
            &w,
            "2026-03-06T12:00:00Z",
            &[
                "2026-03-07T07:30:00Z", // 02:30 EST
                // 2026-03-08 02:30 does not exist: no tick that day.
                "2026-03-09T06:30:00Z", // 02:30 EDT
                "2026-03-10T06:30:00Z",
            ],
        );
        // Nor when asked from inside the day.
        assert_next(&w, "2026-03-08T06:59:59Z", "2026-03-09T06:30:00Z");
        assert_next(&w, "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z");
    }

    #[test]
    fn new_york_fall_back_fires_once_at_the_first_occurrence() {
        let w = cron("30 1 * * *", "America/New_York");
        assert_ticks(
            &w,
            "2026-10-31T05:30:00Z",
            &[
                "2026-11-01T05:30:00Z", // 01:30 EDT, not also 06:30Z (01:30 EST)
                "2026-11-02T06:30:00Z", // 01:30 EST
            ],
        );
        // Asked from the repeated hour's second pass, before its 01:30.
        assert_next(&w, "2026-11-01T06:10:00Z", "2026-11-02T06:30:00Z");
        // Between the two passes.
        assert_next(&w, "2026-11-01T05:45:00Z", "2026-11-02T06:30:00Z");
    }

    #[test]
    fn new_york_ordinary_days() {
        let w = cron("30 2 * * *", "America/New_York");
        assert_next(&w, "2026-01-15T00:00:00Z", "2026-01-15T07:30:00Z");
        assert_next(&w, "2026-07-15T00:00:00Z", "2026-07-15T06:30:00Z");
        assert_next(
            &cron("30 1 * * *", "America/New_York"),
            "2026-11-08T00:00:00Z",
            "2026-11-08T06:30:00Z",
        );
    }

    #[test]
    fn new_york_hourly_across_both_changes() {
        let w = cron("0 * * * *", "America/New_York");
        assert_ticks(
            &w,
            "2026-03-08T04:30:00Z",
            &[
                "2026-03-08T05:00:00Z", // 00:00 EST
                "2026-03-08T06:00:00Z", // 01:00 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT (02:00 never happened)
                "2026-03-08T08:00:00Z", // 04:00 EDT
            ],
        );
        assert_ticks(
            &w,
            "2026-11-01T03:30:00Z",
            &[
                "2026-11-01T04:00:00Z", // 00:00 EDT
                "2026-11-01T05:00:00Z", // 01:00 EDT; 01:00 EST (06:00Z) is a repeat
                "2026-11-01T07:00:00Z", // 02:00 EST
                "2026-11-01T08:00:00Z", // 03:00 EST
            ],
        );
    }

    #[test]
    fn interval_patterns_also_skip_the_repeated_pass() {
        assert_ticks(
            &cron("*/15 * * * *", "America/New_York"),
            "2026-11-01T05:30:00Z",
            &[
                "2026-11-01T05:45:00Z",
                "2026-11-01T07:00:00Z",
                "2026-11-01T07:15:00Z",
            ],
        );
        let every_second = cron("* * * * * *", "America/New_York");
        assert_ticks(
            &every_second,
            "2026-11-01T05:59:58Z",
            &["2026-11-01T05:59:59Z", "2026-11-01T07:00:00Z"],
        );
        // From inside the second pass: on at the end of the repetition.
        assert_next(
            &every_second,
            "2026-11-01T06:10:00Z",
            "2026-11-01T07:00:00Z",
        );
        assert_next(
            &every_second,
            "2026-11-01T06:59:59Z",
            "2026-11-01T07:00:00Z",
        );
        // The spring gap has no wall-clock second to fire.
        assert_ticks(
            &every_second,
            "2026-03-08T06:59:58Z",
            &[
                "2026-03-08T06:59:59Z",
                "2026-03-08T07:00:00Z",
                "2026-03-08T07:00:01Z",
            ],
        );
    }

    #[test]
    fn berlin_both_changes() {
        let w = cron("30 2 * * *", "Europe/Berlin");
        assert_ticks(
            &w,
            "2026-03-28T00:00:00Z",
            &[
                "2026-03-28T01:30:00Z", // 02:30 CET
                // 2026-03-29 02:30 does not exist.
                "2026-03-30T00:30:00Z", // 02:30 CEST
            ],
        );
        assert_ticks(
            &w,
            "2026-10-24T00:00:00Z",
            &[
                "2026-10-24T00:30:00Z", // 02:30 CEST
                "2026-10-25T00:30:00Z", // 02:30 CEST, the first of two
                "2026-10-26T01:30:00Z", // 02:30 CET
            ],
        );
        // An ordinary winter day.
        assert_next(&w, "2026-12-01T00:00:00Z", "2026-12-01T01:30:00Z");
        let hourly = cron("0 * * * *", "Europe/Berlin");
        assert_ticks(
            &hourly,
            "2026-03-28T23:30:00Z",
            &[
                "2026-03-29T00:00:00Z", // 01:00 CET
                "2026-03-29T01:00:00Z", // 03:00 CEST
                "2026-03-29T02:00:00Z",
            ],
        );
        assert_ticks(
            &hourly,
            "2026-10-24T23:30:00Z",
            &[
                "2026-10-25T00:00:00Z", // 02:00 CEST; 02:00 CET (01:00Z) is a repeat
                "2026-10-25T02:00:00Z", // 03:00 CET
                "2026-10-25T03:00:00Z",
            ],
        );
    }

    #[test]
    fn a_skipped_midnight_skips_the_daily_tick() {
        // America/Santiago 2026-09-06: 00:00 -04 -> 01:00 -03.
        assert_ticks(
            &cron("@daily", "America/Santiago"),
            "2026-09-05T00:00:00Z",
            &[
                "2026-09-05T04:00:00Z", // 2026-09-05 00:00 -04
                "2026-09-07T03:00:00Z", // 2026-09-07 00:00 -03
            ],
        );
    }

    #[test]
    fn a_zone_without_daylight_saving() {
        assert_next(
            &cron("0 9 * * *", "Asia/Kolkata"),
            "2026-05-10T00:00:00Z",
            "2026-05-10T03:30:00Z",
        );
    }

    /// Every tick, found second by second (or minute by minute) the slow way
    /// from the rules themselves: an instant fires when its wall-clock time
    /// matches and no earlier instant had that wall-clock time.
    fn brute_force(w: &When, after: u64, until: u64, step_s: usize) -> Vec<u64> {
        let Kind::Cron { cron, tz, .. } = &w.kind else {
            panic!("not a cron schedule")
        };
        let (after, until) = ((after / 1_000) as i64, (until / 1_000) as i64);
        let first = (after / step_s as i64 + 1) * step_s as i64;
        (first..=until)
            .step_by(step_s)
            .filter(|&i| {
                let wall = local(*tz, i).expect("in range");
                cron.is_time_matching(&wall.and_utc()).expect("valid")
                    && tz
                        .from_local_datetime(&wall)
                        .earliest()
                        .map(|e| e.timestamp())
                        == Some(i)
            })
            .map(|i| i as u64 * 1_000)
            .collect()
    }

    #[test]
    fn matches_brute_force_around_zone_changes() {
        // Days with a change, and the kind of change.
        let days = [
            ("America/New_York", "2026-03-08"),    // 02:00 -> 03:00
            ("America/New_York", "2026-11-01"),    // 02:00 -> 01:00
            ("Europe/Berlin", "2026-03-29"),       // 02:00 -> 03:00
            ("Europe/Berlin", "2026-10-25"),       // 03:00 -> 02:00
            ("Australia/Lord_Howe", "2026-04-05"), // 02:00 -> 01:30
            ("Australia/Lord_Howe", "2026-10-04"), // 02:00 -> 02:30
            ("America/Santiago", "2026-04-05"),    // 00:00 -> 23:00 the day before
            ("America/Santiago", "2026-09-06"),    // 00:00 -> 01:00: no midnight
            ("Pacific/Apia", "2011-12-30"),        // a whole day skipped
            ("UTC", "2026-05-10"),
        ];
        let exprs = [
            "0 * * * *",
            "*/15 * * * *",
            "*/7 * * * *",
            "30 2 * * *",
            "30 1 * * *",
            "59 1 * * *",
            "0 0 * * *",
            "45 23 * * *",
            "0,30 0-3 * * *",
            "* 2 * * *",
            "* 1 * * *",
            "*/5 0,1,2,23 * * 0",
            "0 0 30 12 *",
        ];
        for (tz, day) in days {
            let mid = ms(&format!("{day}T12:00:00Z"));
            let (after, until) = (mid - 2 * 86_400_000, mid + 2 * 86_400_000);
            for expr in exprs {
                let w = cron(expr, tz);
                let mut got = Vec::new();
                let mut at = after;
                while let Some(next) = w.next_after(at).filter(|&t| t <= until) {
                    got.push(next);
                    at = next;
                }
                assert_eq!(
                    isos(&got),
                    isos(&brute_force(&w, after, until, 60)),
                    "{expr} in {tz} around {day}"
                );
            }
            // Seconds, over the change itself.
            let w = cron("*/20 * * * * *", tz);
            let (after, until) = (mid - 86_400_000, mid + 86_400_000);
            let (n, last) = w.ticks_between(after, until, usize::MAX, u64::MAX);
            assert_eq!(
                isos(&last),
                isos(&brute_force(&w, after, until, 1)),
                "*/20 s in {tz} around {day}"
            );
            assert_eq!(n, last.len() as u64);
        }
    }

    #[test]
    fn a_time_only_ever_in_a_gap_ends_the_schedule_quickly() {
        // 02:30 on the second Sunday of March has not existed in New York
        // since 2007: no tick, and no long search either. (chrono-tz's
        // tables stop at 2100, after which a zone keeps its last offset and
        // the time exists again.)
        let w = cron("30 2 * 3 0#2", "America/New_York");
        assert_next(&w, "2006-01-01T00:00:00Z", "2006-03-12T07:30:00Z");
        let started = Instant::now();
        let next = w.next_after(ms("2026-01-01T00:00:00Z"));
        assert!(
            next.is_none_or(|t| t >= ms("2100-01-01T00:00:00Z")),
            "{:?}",
            next.map(iso)
        );
        assert!(
            started.elapsed().as_millis() < 2_000,
            "took {:?}",
            started.elapsed()
        );
    }

    // ----- intervals -------------------------------------------------------

    #[test]
    fn intervals_are_aligned_to_the_epoch() {
        let thirty = When::every(30_000).expect("valid");
        assert_ticks(
            &thirty,
            "2026-05-10T09:30:10.500Z",
            &["2026-05-10T09:30:30Z", "2026-05-10T09:31:00Z"],
        );
        // Strictly after.
        assert_next(&thirty, "2026-05-10T09:30:30Z", "2026-05-10T09:31:00Z");
        assert_next(
            &When::every(3_600_000).expect("valid"),
            "2026-05-10T09:30:00Z",
            "2026-05-10T10:00:00Z",
        );
        // 90 min divides a day: 00:00, 01:30, ..., 09:00, 10:30.
        assert_next(
            &When::every(5_400_000).expect("valid"),
            "2026-05-10T09:30:00Z",
            "2026-05-10T10:30:00Z",
        );
        // The epoch was a Thursday; 2026-05-14 is one.
        assert_next(
            &When::every(7 * 86_400_000).expect("valid"),
            "2026-05-10T09:30:00Z",
            "2026-05-14T00:00:00Z",
        );
        assert_eq!(thirty.next_after(0), Some(30_000));
    }

    #[test]
    fn intervals_ignore_daylight_saving() {
        // Every hour stays every hour through New York's fall-back night.
        let hourly = When::every(3_600_000).expect("valid");
        assert_ticks(
            &hourly,
            "2026-11-01T04:30:00Z",
            &[
                "2026-11-01T05:00:00Z",
                "2026-11-01T06:00:00Z",
                "2026-11-01T07:00:00Z",
            ],
        );
    }

    // ----- grace -----------------------------------------------------------

    #[test]
    fn grace_is_the_gap_to_the_next_tick_up_to_a_minute() {
        assert_eq!(
            cron("* * * * * *", "UTC").grace_ms(ms("2026-05-10T09:30:00Z")),
            1_000
        );
        assert_eq!(
            cron("*/20 * * * * *", "UTC").grace_ms(ms("2026-05-10T09:30:00Z")),
            20_000
        );
        assert_eq!(
            cron("0 * * * *", "UTC").grace_ms(ms("2026-05-10T09:00:00Z")),
            60_000
        );
        assert_eq!(When::every(1_500).expect("valid").grace_ms(3_000), 1_500);
        assert_eq!(When::every(30_000).expect("valid").grace_ms(30_000), 30_000);
        assert_eq!(
            When::every(3_600_000).expect("valid").grace_ms(3_600_000),
            60_000
        );
        // An every-second schedule's last tick before the repeated pass
        // (01:59:59 EDT): the next is 02:00:00 EST, an hour and a second on.
        let every_second = cron("* * * * * *", "America/New_York");
        assert_eq!(every_second.grace_ms(ms("2026-11-01T05:59:59Z")), 60_000);
        // With no next tick the grace is the full minute.
        assert_eq!(
            When::every(1_000).expect("valid").grace_ms(END_MS - 1_000),
            60_000
        );
    }

    // ----- ticks_between ---------------------------------------------------

    #[test]
    fn ticks_between_small_exact() {
        let hourly = cron("0 * * * *", "UTC");
        let (after, until) = (ms("2026-05-10T00:00:00Z"), ms("2026-05-10T05:00:00Z"));
        // (after, until]: 01:00 to 05:00.
        assert_eq!(
            hourly.ticks_between(after, until, 2, 100),
            (
                5,
                vec![ms("2026-05-10T04:00:00Z"), ms("2026-05-10T05:00:00Z")]
            )
        );
        let (n, all) = hourly.ticks_between(after, until, 10, 100);
        assert_eq!(
            (n, isos(&all)),
            (
                5,
                isos(&[
                    ms("2026-05-10T01:00:00Z"),
                    ms("2026-05-10T02:00:00Z"),
                    ms("2026-05-10T03:00:00Z"),
                    ms("2026-05-10T04:00:00Z"),
                    ms("2026-05-10T05:00:00Z"),
                ])
            )
        );
        assert_eq!(hourly.ticks_between(after, until, 0, 100), (5, vec![]));
        // Cap reached: the count stops, the last ticks are still exact.
        assert_eq!(
            hourly.ticks_between(after, until, 2, 3),
            (
                3,
                vec![ms("2026-05-10T04:00:00Z"), ms("2026-05-10T05:00:00Z")]
            )
        );
        assert_eq!(hourly.ticks_between(after, until, 2, 5).0, 5);
        assert_eq!(hourly.ticks_between(after, after + 1, 3, 100), (0, vec![]));
        assert_eq!(hourly.ticks_between(until, after, 3, 100), (0, vec![]));
        assert_eq!(hourly.ticks_between(after, after, 3, 100), (0, vec![]));
        // New York's fall-back night: 06:00Z is a repeat.
        let (n, last) = cron("0 * * * *", "America/New_York").ticks_between(
            ms("2026-11-01T03:30:00Z"),
            ms("2026-11-01T08:30:00Z"),
            10,
            100,
        );
        assert_eq!(
            (n, isos(&last)),
            (
                4,
                isos(&[
                    ms("2026-11-01T04:00:00Z"),
                    ms("2026-11-01T05:00:00Z"),
                    ms("2026-11-01T07:00:00Z"),
                    ms("2026-11-01T08:00:00Z"),
                ])
            )
        );
    }

    #[test]
    fn ticks_between_cap_every_second_for_a_month() {
        let w = cron("* * * * * *", "UTC");
        let started = Instant::now();
        let (n, last) = w.ticks_between(
            ms("2026-04-01T00:00:00Z"),
            ms("2026-05-01T00:00:00.999Z"),
            3,
            1_000,
        );
        assert_eq!(n, 1_000);
        assert_eq!(
            isos(&last),
            isos(&[
                ms("2026-04-30T23:59:58Z"),
                ms("2026-04-30T23:59:59Z"),
                ms("2026-05-01T00:00:00Z"),
            ])
        );
        // 2.6 million steps would take seconds even in a release build.
        assert!(
            started.elapsed().as_millis() < 1_000,
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn ticks_between_cap_ending_in_daylight_saving_changes() {
        let every_second = cron("* * * * * *", "America/New_York");
        // Ending in the repeated pass: its seconds are repeats, so the last
        // ticks are the first pass's.
        let (n, last) = every_second.ticks_between(
            ms("2026-10-01T00:00:00Z"),
            ms("2026-11-01T06:00:05Z"),
            3,
            10,
        );
        assert_eq!(n, 10);
        assert_eq!(
            isos(&last),
            isos(&[
                ms("2026-11-01T05:59:57Z"),
                ms("2026-11-01T05:59:58Z"),
                ms("2026-11-01T05:59:59Z"),
            ])
        );
        // Ending just after the spring gap, looking back over it.
        let (n, last) = cron("*/30 * * * *", "America/New_York").ticks_between(
            ms("2026-03-01T00:00:00Z"),
            ms("2026-03-08T07:10:00Z"),
            3,
            2,
        );
        assert_eq!(n, 2);
        assert_eq!(
            isos(&last),
            isos(&[
                ms("2026-03-08T06:00:00Z"), // 01:00 EST
                ms("2026-03-08T06:30:00Z"), // 01:30 EST
                ms("2026-03-08T07:00:00Z"), // 03:00 EDT
            ])
        );
        // Fewer ticks than `keep` before `after`: only those in range.
        let (n, last) = cron("0 0 * * *", "UTC").ticks_between(
            ms("2026-05-10T12:00:00Z"),
            ms("2026-05-12T12:00:00Z"),
            5,
            1,
        );
        assert_eq!(
            (n, isos(&last)),
            (
                1,
                isos(&[ms("2026-05-11T00:00:00Z"), ms("2026-05-12T00:00:00Z")])
            )
        );
    }

    #[test]
    fn ticks_between_interval() {
        let second = When::every(1_000).expect("valid");
        let (after, until) = (ms("2026-04-01T00:00:00Z"), ms("2026-05-01T00:00:00Z"));
        assert_eq!(
            second.ticks_between(after, until, 2, 500),
            (
                500,
                vec![ms("2026-04-30T23:59:59Z"), ms("2026-05-01T00:00:00Z")]
            )
        );
        assert_eq!(
            second.ticks_between(after, until, 0, u64::MAX),
            (30 * 86_400, vec![])
        );
        let thirty = When::every(30_000).expect("valid");
        assert_eq!(
            thirty.ticks_between(
                ms("2026-05-10T09:30:00Z"),
                ms("2026-05-10T09:31:29.999Z"),
                usize::MAX,
                100
            ),
            (
                2,
                vec![ms("2026-05-10T09:30:30Z"), ms("2026-05-10T09:31:00Z")]
            )
        );
        assert_eq!(
            thirty.ticks_between(ms("2026-05-10T09:30:01Z"), ms("2026-05-10T09:30:29Z"), 5, 5),
            (0, vec![])
        );
    }

    /// The backward search (taken when the count hits the cap) gives the
    /// same ticks as stepping forward, for the patterns most likely to
    /// differ: month ends, nth weekdays, nearest weekdays, and zones.
    #[test]
    fn backward_matches_forward() {
        let cases = [
            (
                "0 0 L * *",
                "UTC",
                "2026-01-01T00:00:00Z",
                "2029-01-01T00:00:00Z",
            ),
            (
                "0 9 * * 1#1",
                "UTC",
                "2026-01-01T00:00:00Z",
                "2028-01-01T00:00:00Z",
            ),
            (
                "0 9 * * 5L",
                "UTC",
                "2026-01-01T00:00:00Z",
                "2028-01-01T00:00:00Z",
            ),
            (
                "0 0 15W * *",
                "UTC",
                "2026-01-01T00:00:00Z",
                "2028-01-01T00:00:00Z",
            ),
            (
                "0 0 1W * *",
                "UTC",
                "2026-01-01T00:00:00Z",
                "2028-01-01T00:00:00Z",
            ),
            (
                "0 0 29 2 *",
                "UTC",
                "2000-01-01T00:00:00Z",
                "2110-01-01T00:00:00Z",
            ),
            (
                "0 0 13 * 5",
                "UTC",
                "2026-01-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            (
                "0 0 13 * +5",
                "UTC",
                "2000-01-01T00:00:00Z",
                "2030-01-01T00:00:00Z",
            ),
            (
                "7 */7 1-2 * * *",
                "UTC",
                "2026-05-01T00:00:00Z",
                "2026-05-02T00:00:00Z",
            ),
            (
                "30 2 * * *",
                "America/New_York",
                "2026-01-01T00:00:00Z",
                "2028-01-01T00:00:00Z",
            ),
            (
                "30 1 * * *",
                "America/New_York",
                "2026-01-01T00:00:00Z",
                "2028-01-01T00:00:00Z",
            ),
            (
                "*/10 * * * *",
                "America/New_York",
                "2026-10-31T12:00:00Z",
                "2026-11-01T12:00:00Z",
            ),
            (
                "*/10 * * * *",
                "America/New_York",
                "2026-03-07T12:00:00Z",
                "2026-03-08T12:00:00Z",
            ),
            (
                "*/10 * * * *",
                "Europe/Berlin",
                "2026-10-24T12:00:00Z",
                "2026-10-25T12:00:00Z",
            ),
            (
                "*/10 * * * *",
                "Europe/Berlin",
                "2026-03-28T12:00:00Z",
                "2026-03-29T12:00:00Z",
            ),
            (
                "0 * * * *",
                "Australia/Lord_Howe",
                "2026-04-04T00:00:00Z",
                "2026-04-06T00:00:00Z",
            ),
            (
                "0 0 * * *",
                "Pacific/Apia",
                "2011-12-25T00:00:00Z",
                "2012-01-05T00:00:00Z",
            ),
        ];
        for (expr, tz, after, until) in cases {
            let w = cron(expr, tz);
            let (after, until) = (ms(after), ms(until));
            let mut forward = Vec::new();
            let mut at = after;
            while let Some(next) = w.next_after(at).filter(|&t| t <= until) {
                forward.push(next);
                at = next;
            }
            assert!(!forward.is_empty(), "{expr} in {tz}");
            // cap 0: all of `keep` comes from the backward search.
            let (n, backward) = w.ticks_between(after, until, forward.len() + 1, 0);
            assert_eq!(n, 0);
            assert_eq!(isos(&backward), isos(&forward), "{expr} in {tz}");
            // And the forward count agrees.
            assert_eq!(
                w.ticks_between(after, until, 0, u64::MAX).0,
                forward.len() as u64,
                "{expr} in {tz}"
            );
        }
    }

    // ----- horizon ---------------------------------------------------------

    #[test]
    fn nothing_past_the_horizon() {
        assert_eq!(ms("5000-01-01T00:00:00Z"), END_MS);
        assert_eq!(
            cron("0 0 1 1 *", "UTC").next_after(ms("4999-06-01T00:00:00Z")),
            None
        );
        assert_eq!(cron("* * * * * *", "UTC").next_after(u64::MAX), None);
        assert_eq!(
            When::every(1_000)
                .expect("valid")
                .next_after(END_MS - 1_000),
            None
        );
        assert_eq!(
            When::every(1_000).expect("valid").next_after(u64::MAX),
            None
        );
        assert_next(
            &cron("0 0 1 1 *", "UTC"),
            "4998-06-01T00:00:00Z",
            "4999-01-01T00:00:00Z",
        );
        assert_eq!(
            When::every(1_000)
                .expect("valid")
                .ticks_between(END_MS - 3_000, u64::MAX, 5, 5)
                .0,
            2
        );
    }

    // ----- invalid input ---------------------------------------------------

    #[track_caller]
    fn cron_err(expr: &str, tz: Option<&str>) -> String {
        match When::cron(expr, tz) {
            Ok(w) => panic!("{expr:?} in {tz:?} was accepted as {}", w.describe()),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_expressions() {
        for expr in [
            "",
            "hello",
            "* * * *",
            "0 0 0 1 1 * 2026", // croner's optional year field is not offered
            "61 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "@reboot",
            "@every 5m",
            "0 9 * * MON#6",
        ] {
            let e = cron_err(expr, None);
            assert!(
                e.starts_with(&format!("cron expression \"{}\": ", expr.trim())),
                "{e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(cron_err("* * * *", None).contains("found 4"));
        assert!(cron_err("@reboot", None).contains("unknown alias"));
    }

    #[test]
    fn never_firing_expressions() {
        for expr in [
            "0 0 30 2 *",
            "0 0 31 4 *",
            "0 0 31 2,4,6,9,11 *",
            "0 0 30,31 2 *",
        ] {
            let started = Instant::now();
            let e = cron_err(expr, Some("Europe/Paris"));
            assert_eq!(e, format!("cron expression \"{expr}\": never fires"));
            assert!(
                started.elapsed().as_millis() < 1_000,
                "{expr} took {:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn bad_zones() {
        assert_eq!(
            cron_err("0 9 * * *", Some("Mars/Olympus_Mons")),
            "unknown time zone \"Mars/Olympus_Mons\" (expected an IANA name such as \"Europe/Paris\")"
        );
        assert!(cron_err("0 9 * * *", Some("+02:00")).starts_with("unknown time zone"));
        assert!(When::cron("0 9 * * *", Some("Etc/UTC")).is_ok());
    }

    #[test]
    fn odd_input_is_an_error_not_a_panic() {
        let parts = [
            "*", "L", "W", "#", "?", "-", "/", ",", "0", "59", "99", "1-", "L-2", "5#L", "1W", "é",
            "@",
        ];
        for a in parts {
            for b in parts {
                for expr in [
                    format!("{a} {b} * * *"),
                    format!("0 0 {a} * {b}"),
                    format!("{a}{b} 0 0 * * *"),
                ] {
                    let _ = When::cron(&expr, None);
                }
            }
        }
    }

    #[test]
    fn intervals_out_of_range() {
        assert_eq!(
            When::every(999).err().as_deref(),
            Some("interval of 999 ms: must be at least 1 s")
        );
        assert!(When::every(0).is_err());
        assert!(When::every(1_000).is_ok());
        assert!(When::every(366 * 86_400_000).is_ok());
        assert_eq!(
            When::every(366 * 86_400_000 + 1).err().as_deref(),
            Some("interval of 31622400001 ms: must be at most 366 days")
        );
    }

    // ----- describe --------------------------------------------------------

    #[test]
    fn describe() {
        assert_eq!(
            cron(" 0 9 * * 1-5 ", "Europe/Paris").describe(),
            "0 9 * * 1-5 (Europe/Paris)"
        );
        let every = |ms| When::every(ms).expect("valid").describe();
        assert_eq!(every(30_000), "every 30s");
        assert_eq!(every(5_400_000), "every 1h30m");
        assert_eq!(every(1_500), "every 1s500ms");
        assert_eq!(every(86_400_000), "every 1d");
        assert_eq!(every(90_061_000), "every 1d1h1m1s");
    }
}
