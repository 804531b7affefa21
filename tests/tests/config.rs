//! `--config`: flags as keys, queues and schedules made at start and
//! brought back to the file at each start, precedence, and errors that
//! name the key.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_tests::{Broker, DEADLINE, Value, bin, broker_refuses, eventually, num};

#[test]
fn a_config_file_sets_flags_and_creates_queues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
data-dir = "{}"
max_payload_bytes = 100
job-ttl = "10m"

[[queues]]
name = "orders"
durable = true
capacity = 7
order = "priority"
ack-deadline = "1m"
max-in-flight = 3
rate = "20/s"
burst = 2
"#,
            dir.path().join("data").display()
        ),
    )
    .expect("write");
    let cfg = cfg.display().to_string();
    let b = Broker::start_on("127.0.0.1:0", &["--config", &cfg]);
    let s = b.stats("orders");
    assert_eq!(s["options"]["durable"], true);
    assert_eq!(num(&s, &["options", "capacity"]), 7);
    assert_eq!(s["options"]["order"], "priority");
    assert_eq!(num(&s, &["options", "ack_deadline_ms"]), 60_000);
    assert_eq!(num(&s, &["options", "max_in_flight"]), 3);
    assert_eq!(num(&s, &["options", "rate_limit", "tasks"]), 20);
    assert_eq!(num(&s, &["options", "rate_limit", "burst"]), 2);
    // max_payload_bytes from the file applies.
    let out = b.cli(&["enqueue", "orders", &"x".repeat(101)]);
    assert_eq!(out.code, 1, "{out:?}");

    // A flag beats the file; --print-config shows the result.
    let out = std::process::Command::new(bin("sluice-broker"))
        .args([
            "--config",
            &cfg,
            "--max-payload-bytes",
            "5000",
            "--print-config",
        ])
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max-payload-bytes = 5000"), "{text}");
    assert!(text.contains("job-ttl = \"10m\""), "{text}");
    assert!(text.contains("name = \"orders\""), "{text}");

    // Changed while it runs; the next start brings it back to the file's
    // options, its tasks kept.
    b.ok(&[
        "queue",
        "update",
        "orders",
        "--capacity",
        "9",
        "--max-in-flight",
        "5",
    ]);
    b.ok(&["queue", "pause", "orders"]);
    b.ok(&["enqueue", "orders", "kept"]);
    drop(b);
    let b = Broker::start_on("127.0.0.1:0", &["--config", &cfg]);
    let s = b.stats("orders");
    assert_eq!(num(&s, &["options", "capacity"]), 7, "{s}");
    assert_eq!(num(&s, &["options", "max_in_flight"]), 3, "{s}");
    assert_eq!(s["options"]["paused"], false, "{s}");
    assert_eq!(num(&s, &["stats", "ready"]), 1, "{s}");

    // Its order cannot change: a file that says otherwise stops the start.
    drop(b);
    let text = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(
        &cfg,
        text.replace("order = \"priority\"", "order = \"lifo\""),
    )
    .expect("write");
    let refused = broker_refuses(&["--config", &cfg]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("queues.orders") && refused.stderr.contains("order"),
        "{refused:?}"
    );
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (content, key) in [
        ("listn = \"127.0.0.1:1\"", "listn"),
        ("max-queues = \"many\"", "max-queues"),
        (
            "[[queues]]\nname = \"q\"\norder = \"random\"",
            "queues.q.order",
        ),
        // An unknown key names the entry it is in.
        (
            "[[queues]]\nname = \"q\"\ncolour = 1",
            "queues.q: unknown field `colour`",
        ),
    ] {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, content).expect("write");
        let out = std::process::Command::new(bin("sluice-broker"))
            .args(["--in-memory", "--listen", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{content}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{content}: {err}");
        assert!(out.stdout.is_empty(), "it must not start");
    }
}

/// A config file declaring a durable queue and, on it, an every-second
/// schedule with headers and a job per tick; `{data}` is the data
/// directory, `{every}` the interval.
const SCHEDULED: &str = r#"
data-dir = "{data}"

[[queues]]
name = "reports"
durable = true

[[schedules]]
name = "beat"
queue = "reports"
every = "{every}"
payload = "report"
headers = { kind = "daily" }
job = "r-{tick}"
"#;

/// Writes [`SCHEDULED`] with `every` into `dir`; returns the file's path.
fn scheduled_config(dir: &Path, every: &str) -> String {
    let cfg = dir.join("sluice.toml");
    let text = SCHEDULED
        .replace("{data}", &dir.join("data").display().to_string())
        .replace("{every}", every);
    std::fs::write(&cfg, text).expect("write");
    cfg.display().to_string()
}

/// The next task of `queue` whose tick is after `after` (ms since the
/// epoch); earlier ones are taken and dropped.
fn task_ticked_after(b: &Broker, queue: &str, after: u64) -> Value {
    let mut task = Value::Null;
    eventually(
        DEADLINE,
        &format!("a tick of {queue} after {after}"),
        || {
            // Exit 3, "queue empty", when none came within the wait.
            let out = b.cli(&["--json", "get", queue, "--wait", "5s"]);
            task = serde_json::from_str(&out.stdout).unwrap_or_default();
            task["headers"]["x-sluice-tick"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .is_some_and(|t| unix_ms(t) > after)
        },
    );
    task
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Lines the broker wrote to stderr itself, not through its log (whose
/// lines start with a timestamp).
fn said(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            let first = l.split_whitespace().next().unwrap_or_default();
            humantime::parse_rfc3339(first).is_err()
        })
        .collect()
}

#[test]
fn a_declared_schedule_fires_and_print_config_gives_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = scheduled_config(dir.path(), "1s");
    let b = Broker::start_on("127.0.0.1:0", &["--config", &cfg]);

    // Its tick's task: the file's payload, headers and job, and the
    // schedule's key and headers.
    let task = task_ticked_after(&b, "reports", 0);
    let tick = task["headers"]["x-sluice-tick"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(task["payload"], "report", "{task}");
    assert_eq!(task["headers"]["kind"], "daily", "{task}");
    assert_eq!(task["headers"]["x-sluice-schedule"], "beat", "{task}");
    assert_eq!(task["job_id"], format!("r-{tick}"), "{task}");
    assert_eq!(task["key"], format!("beat@{tick}"), "{task}");
    let before = b.listed_schedule(&[], "beat");
    assert_eq!(before["spec"]["every_ms"], 1000, "{before}");

    // --print-config shows the schedule as the file declares it...
    let out = std::process::Command::new(bin("sluice-broker"))
        .args(["--config", &cfg, "--print-config"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let section: Vec<&str> = printed
        .split("\n\n")
        .find(|s| s.starts_with("[[schedules]]"))
        .unwrap_or_else(|| panic!("no [[schedules]] in:\n{printed}"))
        .lines()
        .collect();
    assert_eq!(
        section,
        [
            "[[schedules]]",
            "name = \"beat\"",
            "queue = \"reports\"",
            "every = \"1s\"",
            "payload = \"report\"",
            "job = \"r-{tick}\"",
            "headers = { \"kind\" = \"daily\" }",
        ],
        "{printed}"
    );
    // ...and, as a config file, declares the very same schedule: a broker
    // started from it keeps the one that exists rather than making it
    // again.
    drop(b);
    let again = dir.path().join("printed.toml");
    std::fs::write(&again, &printed).expect("write");
    let b = Broker::start_on("127.0.0.1:0", &["--config", &again.display().to_string()]);
    let after = b.listed_schedule(&[], "beat");
    assert_eq!(after["spec"], before["spec"], "{after}");
    assert_eq!(
        after["created_at_unix_ms"], before["created_at_unix_ms"],
        "not made again: {after}"
    );
}

#[test]
fn a_declared_schedule_that_cannot_be_made_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (line, says) in [
        ("cron = \"61 * * * *\"", "cron"),
        ("every = \"1s\"\nmissed = \"catch-up:500\"", "missed"),
        ("every = \"1s\"\ncolour = \"red\"", "colour"),
    ] {
        let cfg = dir.path().join("bad.toml");
        let text = format!(
            "[[queues]]\nname = \"q\"\n\n[[schedules]]\nname = \"tick-tock\"\nqueue = \"q\"\n{line}\n"
        );
        std::fs::write(&cfg, &text).expect("write");
        let out = broker_refuses(&["--in-memory", "--config", &cfg.display().to_string()]);
        assert_eq!(out.code, Some(2), "{text}\n{out:?}");
        let said = said(&out.stderr);
        assert_eq!(said.len(), 1, "one line for\n{text}\n{out:?}");
        assert!(
            said[0].starts_with("sluice-broker: ")
                && said[0].contains("schedules.tick-tock")
                && said[0].contains(says),
            "{text}\nsaid: {said:?}"
        );
        assert!(
            !said[0].contains("schedule \"tick-tock\""),
            "the entry is named once: {said:?}"
        );
    }
}

#[test]
fn a_declared_schedule_is_brought_back_to_the_file_at_each_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = scheduled_config(dir.path(), "1s");
    let b = Broker::start_on("127.0.0.1:0", &["--config", &cfg]);
    task_ticked_after(&b, "reports", 0);

    // Paused at runtime; the file says nothing of pausing, so the next
    // start runs it again, from the tick after it.
    b.ok(&["schedule", "pause", "beat"]);
    assert_eq!(b.listed_schedule(&[], "beat")["paused"], true);
    drop(b);
    let restarted = unix_ms(SystemTime::now());
    let b = Broker::start_on("127.0.0.1:0", &["--config", &cfg]);
    let s = b.listed_schedule(&[], "beat");
    assert_eq!(s["paused"], false, "{s}");
    task_ticked_after(&b, "reports", restarted);
    let s = b.listed_schedule(&[], "beat");
    assert_eq!(s["missed"], 0, "ticks while paused are not missed: {s}");

    // Defined otherwise in the file: the next start replaces it.
    let created = num(&s, &["created_at_unix_ms"]);
    drop(b);
    scheduled_config(dir.path(), "2s");
    let restarted = unix_ms(SystemTime::now());
    let b = Broker::start_on("127.0.0.1:0", &["--config", &cfg]);
    let s = b.listed_schedule(&[], "beat");
    assert_eq!(s["spec"]["every_ms"], 2000, "{s}");
    assert_eq!(s["paused"], false, "{s}");
    assert!(num(&s, &["created_at_unix_ms"]) > created, "made anew: {s}");
    let task = task_ticked_after(&b, "reports", restarted);
    let tick = task["headers"]["x-sluice-tick"]
        .as_str()
        .unwrap_or_default();
    let at = humantime::parse_rfc3339(tick).map_or(1, unix_ms);
    assert_eq!(at % 2000, 0, "every 2 s ticks on even seconds: {task}");
}
