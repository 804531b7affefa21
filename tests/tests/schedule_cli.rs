//! Schedules as a user drives them with the `sluice` CLI: `schedule create`
//! with --every and with --cron and --tz, the task each tick enqueues (its
//! NAME@TICK key and headers), `schedule list` as a table and as JSON,
//! pause, resume, delete, and the CLI's refusals.

use std::time::{SystemTime, UNIX_EPOCH};

use sluice_tests::{Broker, DEADLINE, Value, cli, eventually, num};

/// Waits until schedule `name` has fired at least `n` ticks; returns it.
fn fired_at_least(b: &Broker, name: &str, n: u64) -> Value {
    let mut seen = Value::Null;
    eventually(
        DEADLINE,
        &format!("schedule {name} fired {n} ticks"),
        || {
            seen = b.listed_schedule(&[], name);
            num(&seen, &["fired"]) >= n
        },
    );
    seen
}

/// The cells of a `schedule list` line: columns are two or more spaces
/// apart, and no cell holds two spaces in a row.
fn cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The `schedule list` row of schedule `name`, as cells.
fn row(b: &Broker, name: &str) -> Vec<String> {
    let text = b.ok(&["schedule", "list"]);
    let mut lines = text.lines();
    let header = lines.next().map(cells).unwrap_or_default();
    assert_eq!(
        header,
        [
            "NAME", "QUEUE", "WHEN", "NEXT", "LAST", "RESULT", "STATE", "FIRED", "MISSED", "FAILED"
        ],
        "{text}"
    );
    lines
        .map(cells)
        .find(|c| c.first().is_some_and(|n| n == name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{text}"))
}

/// Asserts a refusal: exit `code`, one line on stderr containing `says`.
fn refused(b: &Broker, args: &[&str], code: i32, says: &str) {
    let out = b.cli(args);
    assert_eq!(out.code, code, "sluice {args:?}: {out:?}");
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "one-line error for {args:?}: {out:?}"
    );
    assert!(
        out.stderr.contains(says),
        "sluice {args:?} should say {says:?}: {out:?}"
    );
}

/// Where a printed time should be relative to now.
#[derive(Clone, Copy, Debug)]
enum Off {
    Ahead,
    Behind,
    /// Either: an every-1s schedule's next tick is less than a second
    /// ahead, and a loaded machine may print it after it came due.
    Either,
}

/// A time as `schedule list` and `schedule create` print it: RFC 3339 in
/// UTC to the second, then how far off in parentheses.
fn assert_moment(cell: &str, want: Off) {
    let (at, off) = cell
        .split_once(" (")
        .unwrap_or_else(|| panic!("{cell:?} is not TIME (OFFSET)"));
    assert!(
        humantime::parse_rfc3339(at).is_ok() && at.ends_with('Z') && !at.contains('.'),
        "{cell:?}: not RFC 3339 in UTC to the second"
    );
    let off = off
        .strip_suffix(')')
        .unwrap_or_else(|| panic!("{cell:?}: no closing parenthesis"));
    let ahead = off.starts_with("in ");
    let behind = off.ends_with(" ago");
    let ok = match want {
        _ if off == "now" => true,
        Off::Ahead => ahead,
        Off::Behind => behind,
        Off::Either => ahead || behind,
    };
    assert!(ok, "{cell:?}: not {want:?}");
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[test]
fn every_tick_enqueues_a_task_keyed_by_its_tick_and_list_shows_how_it_went() {
    let b = Broker::start();
    b.ok(&["queue", "create", "polls"]);
    let out = b.ok(&[
        "schedule",
        "create",
        "poll",
        "--queue",
        "polls",
        "--every",
        "1s",
        "--header",
        "kind=poll",
        "--priority",
        "3",
        "--group",
        "acme",
        "hello",
    ]);
    let next = out
        .strip_prefix("created schedule poll: next tick ")
        .unwrap_or_else(|| panic!("{out:?}"));
    assert_moment(next.trim_end(), Off::Either);

    // The tick's task: the payload and options given, the schedule's
    // headers, and the key NAME@TICK.
    let task = b.json(&["get", "polls", "--wait", "10s"]);
    assert_eq!(task["payload"], "hello", "{task}");
    assert_eq!(task["headers"]["kind"], "poll", "{task}");
    assert_eq!(task["headers"]["x-sluice-schedule"], "poll", "{task}");
    assert_eq!(task["priority"], 3, "{task}");
    assert_eq!(task["group"], "acme", "{task}");
    let tick = task["headers"]["x-sluice-tick"]
        .as_str()
        .unwrap_or_else(|| panic!("no x-sluice-tick in {task}"));
    assert_eq!(task["key"], format!("poll@{tick}"), "{task}");
    let at = humantime::parse_rfc3339(tick).unwrap_or_else(|e| panic!("{tick}: {e}"));
    assert_eq!(unix_ms(at) % 1000, 0, "every 1s ticks on whole seconds");

    let s = fired_at_least(&b, "poll", 2);
    assert_eq!(s["spec"]["every_ms"], 1000, "{s}");
    assert_eq!(s["spec"]["cron"], "", "{s}");
    assert_eq!(s["spec"]["catch_up"], 0, "skip by default: {s}");
    assert_eq!(s["spec"]["task"]["payload"], "hello", "{s}");
    assert_eq!(s["paused"], false, "{s}");
    assert_eq!(s["last_error"], "", "{s}");

    let r = row(&b, "poll");
    assert_eq!(r.len(), 10, "{r:?}");
    assert_eq!(r[1], "polls");
    assert_eq!(r[2], "every 1s");
    assert_moment(&r[3], Off::Either);
    assert_moment(&r[4], Off::Behind);
    // RESULT: the id of a task the schedule enqueued.
    assert!(
        r[5] != "-" && !r[5].starts_with("failed"),
        "a task id, not {:?}",
        r[5]
    );
    assert_eq!(r[6], "running");
    assert!(r[7].parse::<u64>().is_ok_and(|n| n >= 2), "{r:?}");
    assert_eq!(r[9], "0", "nothing failed: {r:?}");

    // The same definition again changes nothing; another is refused.
    let again = b.ok(&[
        "schedule",
        "create",
        "poll",
        "--queue",
        "polls",
        "--every",
        "1s",
        "--header",
        "kind=poll",
        "--priority",
        "3",
        "--group",
        "acme",
        "hello",
    ]);
    assert_eq!(again, "schedule poll exists with the same definition\n");
    let answer = b.json(&[
        "schedule",
        "create",
        "poll",
        "--queue",
        "polls",
        "--every",
        "1s",
        "--header",
        "kind=poll",
        "--priority",
        "3",
        "--group",
        "acme",
        "hello",
    ]);
    assert_eq!(answer["created"], false, "{answer}");
    assert_eq!(answer["schedule"]["spec"]["name"], "poll", "{answer}");
    refused(
        &b,
        &[
            "schedule", "create", "poll", "--queue", "polls", "--every", "2s",
        ],
        1,
        "ALREADY_EXISTS",
    );
}

#[test]
fn cron_in_a_time_zone_ticks_at_local_times_and_list_filters_by_queue() {
    let b = Broker::start();
    b.ok(&["queue", "create", "reports"]);
    b.ok(&["queue", "create", "other"]);
    let out = b.ok(&[
        "schedule",
        "create",
        "nightly",
        "--queue",
        "reports",
        "--cron",
        "0 3 * * *",
        "--tz",
        "Europe/Paris",
        "--missed",
        "catch-up:3",
        "--job",
        "report-{tick}",
    ]);
    let next = out
        .strip_prefix("created schedule nightly: next tick ")
        .unwrap_or_else(|| panic!("{out:?}"));
    assert_moment(next.trim_end(), Off::Ahead);

    let s = b.listed_schedule(&[], "nightly");
    assert_eq!(s["spec"]["cron"], "0 3 * * *", "{s}");
    assert_eq!(s["spec"]["time_zone"], "Europe/Paris", "{s}");
    assert_eq!(s["spec"]["every_ms"], 0, "{s}");
    assert_eq!(s["spec"]["catch_up"], 3, "{s}");
    assert_eq!(s["spec"]["task"]["job_id"], "report-{tick}", "{s}");
    assert_eq!(s["spec"]["task"]["payload"], "", "no PAYLOAD: empty: {s}");
    // 03:00 in Paris is 01:00 or 02:00 UTC (summer or winter time), within
    // the day to come.
    let next = num(&s, &["next_tick_unix_ms"]);
    let now = unix_ms(SystemTime::now());
    assert!(next > now && next <= now + 86_400_000, "{s}");
    let secs = next / 1000;
    assert_eq!(secs % 3600, 0, "on the hour: {s}");
    assert!(matches!(secs % 86_400 / 3600, 1 | 2), "{s}");
    assert_eq!(num(&s, &["last_tick_unix_ms"]), 0, "{s}");

    let r = row(&b, "nightly");
    assert_eq!(r[2], "0 3 * * * (Europe/Paris)", "{r:?}");
    assert_moment(&r[3], Off::Ahead);
    assert_eq!(&r[4..], ["-", "-", "running", "0", "0", "0"], "{r:?}");

    // Without --tz: UTC.
    b.ok(&[
        "schedule", "create", "hourly", "--queue", "other", "--cron", "@hourly",
    ]);
    assert_eq!(row(&b, "hourly")[2], "@hourly (UTC)");

    let names = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .map(|s| s["spec"]["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        names(b.json(&["schedule", "list"])),
        ["hourly", "nightly"],
        "by name"
    );
    assert_eq!(
        names(b.json(&["schedule", "list", "--queue", "other"])),
        ["hourly"]
    );
    let text = b.ok(&["schedule", "list", "--queue", "reports"]);
    assert_eq!(text.lines().count(), 2, "header and nightly:\n{text}");
    assert!(text.contains("nightly"), "{text}");
}

#[test]
fn pause_stops_the_ticks_resume_starts_them_and_delete_ends_the_schedule() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    b.ok(&["queue", "create", "clock"]);
    b.ok(&["schedule", "create", "s", "--queue", "q", "--every", "1s"]);
    // A second schedule keeps time for the test: its ticks say that ticks
    // came due, without sleeping.
    b.ok(&[
        "schedule", "create", "clock", "--queue", "clock", "--every", "1s",
    ]);
    fired_at_least(&b, "s", 1);

    let out = b.ok(&["schedule", "pause", "s"]);
    assert_eq!(
        out,
        "paused schedule s: no tick fires until `sluice schedule resume s`\n"
    );
    let paused = b.listed_schedule(&[], "s");
    assert_eq!(paused["paused"], true, "{paused}");
    assert_eq!(paused["next_tick_unix_ms"], 0, "{paused}");
    let r = row(&b, "s");
    assert_eq!(r[3], "-", "no next tick: {r:?}");
    assert_eq!(r[6], "paused", "{r:?}");
    // Pausing again is fine.
    b.ok(&["schedule", "pause", "s"]);

    // Two more ticks of the clock, none of the paused schedule.
    let fired = num(&paused, &["fired"]);
    let enqueued = num(&b.stats("q"), &["stats", "enqueued_total"]);
    let clock = num(&b.listed_schedule(&[], "clock"), &["fired"]);
    fired_at_least(&b, "clock", clock + 2);
    assert_eq!(num(&b.listed_schedule(&[], "s"), &["fired"]), fired);
    assert_eq!(num(&b.stats("q"), &["stats", "enqueued_total"]), enqueued);

    let out = b.ok(&["schedule", "resume", "s"]);
    let next = out
        .strip_prefix("resumed schedule s: next tick ")
        .unwrap_or_else(|| panic!("{out:?}"));
    assert_moment(next.trim_end(), Off::Either);
    let answer = b.json(&["schedule", "resume", "s"]);
    assert_eq!(answer["schedule"]["paused"], false, "{answer}");
    fired_at_least(&b, "s", fired + 1);
    assert_eq!(row(&b, "s")[6], "running");

    assert_eq!(b.ok(&["schedule", "delete", "s"]), "deleted schedule s\n");
    let list = b.ok(&["schedule", "list"]);
    assert!(
        !list.lines().any(|l| l.starts_with("s ")),
        "s is gone:\n{list}"
    );
    refused(&b, &["schedule", "delete", "s"], 1, "NOT_FOUND");
    refused(&b, &["schedule", "pause", "s"], 1, "NOT_FOUND");
    refused(&b, &["schedule", "resume", "s"], 1, "NOT_FOUND");
    // The tasks it enqueued stay.
    assert!(num(&b.stats("q"), &["stats", "ready"]) > fired);

    // Created paused: nothing fires until resumed.
    let out = b.ok(&[
        "schedule", "create", "later", "--queue", "q", "--every", "1s", "--paused",
    ]);
    assert_eq!(
        out,
        "created schedule later: paused, no tick fires until `sluice schedule resume later`\n"
    );
    let later = b.listed_schedule(&[], "later");
    assert_eq!(later["paused"], true, "{later}");
    assert_eq!(later["fired"], 0, "{later}");
    b.ok(&["schedule", "delete", "clock"]);
    b.ok(&["schedule", "delete", "later"]);
    assert_eq!(b.ok(&["schedule", "list"]), "no schedules\n");
    assert_eq!(b.json(&["schedule", "list"]), serde_json::json!([]));
}

#[test]
fn bad_input_is_refused_before_anything_is_sent_or_by_the_broker() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    let create = |extra: &[&str]| -> Vec<String> {
        ["schedule", "create", "s", "--queue", "q"]
            .iter()
            .chain(extra)
            .map(|s| (*s).to_owned())
            .collect()
    };
    // Caught by the CLI: one-line usage errors (exit 2). Against a port
    // nobody listens on they are the same, not "cannot reach broker"
    // (exit 69): nothing was sent.
    let nobody = "http://127.0.0.1:1";
    for (extra, says) in [
        (
            &["--every", "500ms"][..],
            "invalid --every \"500ms\": the shortest interval is 1s",
        ),
        (&["--every", "soon"], "invalid --every \"soon\""),
        (&["--every", "400days"], "366 days"),
        (
            &["--every", "1s", "--missed", "catch-up:0"],
            "invalid --missed",
        ),
        (
            &["--every", "1s", "--missed", "catch-up:101"],
            "invalid --missed",
        ),
        (
            &["--every", "1s", "--missed", "sometimes"],
            "invalid --missed",
        ),
        (
            &["--every", "1s", "--header", "oops"],
            "invalid header \"oops\"",
        ),
        (&["--cron", ""], "--cron needs an expression"),
    ] {
        let argv = create(extra);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        refused(&b, &argv, 2, says);
        let out = cli(nobody, &argv, None);
        assert_eq!(out.code, 2, "{argv:?}: {out:?}");
    }
    // Which of --cron and --every, and --tz: clap's usage errors (exit 2).
    for extra in [
        &[][..],
        &["--cron", "@daily", "--every", "1h"],
        &["--every", "1h", "--tz", "Europe/Paris"],
    ] {
        let argv = create(extra);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = b.cli(&argv);
        assert_eq!(out.code, 2, "{argv:?}: {out:?}");
        assert!(out.stderr.starts_with("error: "), "{argv:?}: {out:?}");
    }

    // Refused by the broker: one line, exit 1, its code named.
    refused(
        &b,
        &[
            "schedule", "create", "s", "--queue", "nope", "--every", "1s",
        ],
        1,
        "NOT_FOUND",
    );
    refused(
        &b,
        &[
            "schedule",
            "create",
            "s",
            "--queue",
            "q",
            "--cron",
            "61 * * * *",
        ],
        1,
        "INVALID_ARGUMENT",
    );
    refused(
        &b,
        &[
            "schedule",
            "create",
            "s",
            "--queue",
            "q",
            "--cron",
            "@daily",
            "--tz",
            "Mars/Olympus",
        ],
        1,
        "INVALID_ARGUMENT",
    );
    refused(
        &b,
        &[
            "schedule", "create", "bad name", "--queue", "q", "--every", "1s",
        ],
        1,
        "INVALID_ARGUMENT",
    );
    // Nothing was created by the failures.
    assert_eq!(b.ok(&["schedule", "list"]), "no schedules\n");
}
