//! Queue-level flow control as a user drives it with the `sluice` CLI:
//! the options of `queue create`, `queue update` (kept across a restart),
//! `queue pause` / `resume`, task groups, what `stats` and `queue show`
//! say about holds and groups, and the CLI's refusals.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_tests::{Broker, DEADLINE, Value, num};

/// `sluice --json ARGS...`, parsed.
fn json(b: &Broker, args: &[&str]) -> Value {
    let argv: Vec<&str> = std::iter::once("--json")
        .chain(args.iter().copied())
        .collect();
    let out = b.ok(&argv);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("sluice {args:?}: {e}: {out}"))
}

/// The queue's options as `queue show --json` reports them.
fn options(b: &Broker, q: &str) -> Value {
    json(b, &["queue", "show", q])["options"].clone()
}

/// The reasons in `stats.holds` ("paused", "no_credit", ...).
fn holds(stats: &Value) -> Vec<String> {
    stats["stats"]["holds"]
        .as_array()
        .unwrap_or_else(|| panic!("no stats.holds in {stats}"))
        .iter()
        .map(|h| h["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn rate(tasks: u64, per_ms: u64, burst: u64) -> Value {
    serde_json::json!({ "tasks": tasks, "per_ms": per_ms, "burst": burst })
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[test]
fn create_sets_flow_control_and_show_reports_it() {
    let b = Broker::start();
    b.ok(&[
        "queue",
        "create",
        "api",
        "--max-in-flight",
        "50",
        "--rate",
        "10/s",
        "--burst",
        "20",
        "--max-in-flight-per-group",
        "5",
        "--paused",
    ]);
    let o = options(&b, "api");
    assert_eq!(o["max_in_flight"], 50, "{o}");
    assert_eq!(o["rate_limit"], rate(10, 1000, 20), "{o}");
    assert_eq!(o["max_in_flight_per_group"], 5, "{o}");
    assert_eq!(o["paused"], true, "{o}");

    // Periods as units or durations; a bare count is per second.
    for (flag, tasks, per_ms) in [
        ("600/m", 600, 60_000),
        ("3/h", 3, 3_600_000),
        ("5/500ms", 5, 500),
        ("7", 7, 1000),
    ] {
        let name = format!("r{tasks}");
        b.ok(&["queue", "create", &name, "--rate", flag]);
        let o = options(&b, &name);
        assert_eq!(o["rate_limit"]["tasks"], tasks, "{flag}: {o}");
        assert_eq!(o["rate_limit"]["per_ms"], per_ms, "{flag}: {o}");
    }
    // Without the flags: no limits, not paused.
    b.ok(&["queue", "create", "plain"]);
    let o = options(&b, "plain");
    assert_eq!(o["max_in_flight"], 0, "{o}");
    assert_eq!(o["rate_limit"], Value::Null, "{o}");
    assert_eq!(o["max_in_flight_per_group"], 0, "{o}");
    assert_eq!(o["paused"], false, "{o}");

    // The human form says the same.
    let show = b.ok(&["queue", "show", "api"]);
    for want in ["50 leased at once", "10/s, burst 20", "5 leased per group"] {
        assert!(show.contains(want), "{want:?} not in:\n{show}");
    }
    assert!(
        show.lines()
            .any(|l| l.split_whitespace().eq(["paused", "yes"])),
        "{show}"
    );
}

#[test]
fn update_changes_options_and_a_durable_queue_keeps_them_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Broker::start_durable(dir.path());
    b.ok(&["queue", "create", "dlq", "--durable"]);
    b.ok(&["queue", "create", "q", "--durable", "--capacity", "10"]);
    b.ok(&["enqueue", "q", "a", "b"]);

    let answer = json(
        &b,
        &[
            "queue",
            "update",
            "q",
            "--capacity",
            "20",
            "--ack-deadline",
            "5s",
            "--max-attempts",
            "3",
            "--dead-letter",
            "dlq",
            "--retry-initial",
            "2s",
            "--retry-max",
            "1m",
            "--retry-multiplier",
            "3",
            "--max-in-flight",
            "7",
            "--rate",
            "100/m",
            "--burst",
            "4",
            "--max-in-flight-per-group",
            "2",
        ],
    );
    let want = |o: &Value| {
        assert_eq!(o["capacity"], 20, "{o}");
        assert_eq!(o["ack_deadline_ms"], 5000, "{o}");
        assert_eq!(o["max_attempts"], 3, "{o}");
        assert_eq!(o["dead_letter"], "dlq", "{o}");
        assert_eq!(o["retry_initial_ms"], 2000, "{o}");
        assert_eq!(o["retry_max_ms"], 60_000, "{o}");
        assert_eq!(o["retry_multiplier"], 3.0, "{o}");
        assert_eq!(o["max_in_flight"], 7, "{o}");
        assert_eq!(o["rate_limit"], rate(100, 60_000, 4), "{o}");
        assert_eq!(o["max_in_flight_per_group"], 2, "{o}");
        // What update cannot change stays.
        assert_eq!(o["durable"], true, "{o}");
        assert_eq!(o["order"], "fifo", "{o}");
    };
    // The answer is the queue with its new options; show agrees.
    want(&answer["queue"]["options"]);
    want(&options(&b, "q"));
    // Tasks already stored stay.
    assert_eq!(num(&b.stats("q"), &["stats", "ready"]), 2);

    // --burst alone keeps the rate; --rate alone keeps the burst.
    b.ok(&["queue", "update", "q", "--burst", "9"]);
    assert_eq!(options(&b, "q")["rate_limit"], rate(100, 60_000, 9));
    b.ok(&["queue", "update", "q", "--rate", "30/s"]);
    assert_eq!(options(&b, "q")["rate_limit"], rate(30, 1000, 9));
    // The human answer lists the new options.
    let text = b.ok(&["queue", "update", "q", "--max-in-flight", "8"]);
    assert!(text.starts_with("updated queue q\n"), "{text}");
    assert!(text.contains("8 leased at once"), "{text}");
    assert!(text.contains("30/s, burst 9"), "{text}");
    b.ok(&["queue", "pause", "q"]);

    // A restart replays the changes from the log.
    b.proc.signal("TERM");
    assert_eq!(b.proc.wait_exit(DEADLINE), Some(0));
    drop(b);
    let b = Broker::start_durable(dir.path());
    let o = options(&b, "q");
    assert_eq!(o["capacity"], 20, "{o}");
    assert_eq!(o["ack_deadline_ms"], 5000, "{o}");
    assert_eq!(o["max_attempts"], 3, "{o}");
    assert_eq!(o["dead_letter"], "dlq", "{o}");
    assert_eq!(o["retry_initial_ms"], 2000, "{o}");
    assert_eq!(o["retry_max_ms"], 60_000, "{o}");
    assert_eq!(o["retry_multiplier"], 3.0, "{o}");
    assert_eq!(o["max_in_flight"], 8, "{o}");
    assert_eq!(o["rate_limit"], rate(30, 1000, 9), "{o}");
    assert_eq!(o["max_in_flight_per_group"], 2, "{o}");
    assert_eq!(o["paused"], true, "{o}");
    assert_eq!(num(&b.stats("q"), &["stats", "ready"]), 2);

    // Limits come off: no rate limit, no dead letter queue, no caps.
    b.ok(&[
        "queue",
        "update",
        "q",
        "--rate",
        "none",
        "--no-dead-letter",
        "--max-in-flight",
        "0",
        "--max-in-flight-per-group",
        "0",
    ]);
    let o = options(&b, "q");
    assert_eq!(o["rate_limit"], Value::Null, "{o}");
    assert_eq!(o["dead_letter"], "", "{o}");
    assert_eq!(o["max_in_flight"], 0, "{o}");
    assert_eq!(o["max_in_flight_per_group"], 0, "{o}");
    assert_eq!(o["capacity"], 20, "untouched: {o}");
}

#[test]
fn a_paused_queue_delivers_nothing_until_resumed() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    b.ok(&["enqueue", "q", "a", "b"]);
    let text = b.ok(&["queue", "pause", "q"]);
    assert!(text.starts_with("paused queue q"), "{text}");

    let s = b.stats("q");
    assert_eq!(s["options"]["paused"], true, "{s}");
    assert!(holds(&s).contains(&"paused".to_owned()), "{s}");
    let human = b.ok(&["stats", "q"]);
    let delivery = human
        .lines()
        .find(|l| l.trim_start().starts_with("delivery"))
        .unwrap_or_else(|| panic!("no delivery line in:\n{human}"));
    assert!(delivery.contains("paused"), "{human}");

    // Tasks are ready, but a get takes none; enqueues still go in.
    let out = b.cli(&["get", "q"]);
    assert_eq!(out.code, 3, "{out:?}");
    let out = b.cli(&["get", "q", "--wait", "200ms"]);
    assert_eq!(out.code, 3, "{out:?}");
    b.ok(&["enqueue", "q", "c"]);
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "ready"]), 3, "{s}");
    assert_eq!(num(&s, &["stats", "delivered_total"]), 0, "{s}");

    let answer = json(&b, &["queue", "resume", "q"]);
    assert_eq!(answer["queue"]["options"]["paused"], false, "{answer}");
    assert_eq!(b.ok(&["get", "q", "--wait", "10s"]), "a\n");
    let s = b.stats("q");
    assert!(!holds(&s).contains(&"paused".to_owned()), "{s}");
}

#[test]
fn pause_waits_out_a_get_that_is_already_waiting() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    b.ok(&["queue", "pause", "q"]);
    // A get waiting on a paused queue is not handed what arrives...
    let mut waiting = b.cli_spawn(&["get", "q", "--wait", "30s"]);
    b.wait_stat("q", "consumers", 1);
    b.ok(&["enqueue", "q", "x"]);
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "ready"]), 1, "{s}");
    assert_eq!(num(&s, &["stats", "delivered_total"]), 0, "{s}");
    assert!(waiting.running(), "a paused queue delivered");
    // ...until the queue is resumed.
    b.ok(&["queue", "resume", "q"]);
    assert_eq!(waiting.wait_exit(DEADLINE), Some(0));
    assert_eq!(num(&b.stats("q"), &["stats", "acked_total"]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_ends_a_throttle_a_nack_put_on_the_queue() {
    use sluice_client::DeliveryExt;
    use sluice_client::proto::NackAction;

    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    b.ok(&["enqueue", "q", "a", "b"]);
    let client = sluice_client::Client::connect(&b.url())
        .await
        .expect("connect");
    let taken = client.get("q", Duration::ZERO, 1).await.expect("get");
    let d = taken.first().expect("a delivery");
    // Downstream said 429: hold the whole queue for a minute.
    let mut nack = d.nack_item(NackAction::Retry, "429");
    nack.delay_ms = Some(0);
    nack.throttle_ms = 60_000;
    let refused = client.nack("q", vec![nack]).await.expect("nack");
    assert!(refused.is_empty(), "{refused:?}");

    let s = b.stats("q");
    assert!(
        num(&s, &["stats", "throttled_until_unix_ms"]) > now_ms(),
        "{s}"
    );
    assert!(holds(&s).contains(&"throttled".to_owned()), "{s}");
    let human = b.ok(&["stats", "q"]);
    assert!(human.contains("throttled until "), "{human}");
    assert_eq!(b.cli(&["get", "q"]).code, 3, "throttled: nothing delivered");

    b.ok(&["queue", "resume", "q"]);
    assert_eq!(num(&b.stats("q"), &["stats", "throttled_until_unix_ms"]), 0);
    // Either task: where a retried one goes back in line is not the point.
    let got = b.ok(&["get", "q", "--wait", "10s"]);
    assert!(got == "a\n" || got == "b\n", "{got:?}");
}

#[test]
fn enqueue_group_reaches_the_delivered_task_and_show_lists_groups() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    b.ok(&["enqueue", "q", "--group", "tenant-a", "x"]);
    // From stdin (the Publish stream), every line in the group.
    let out = b.cli_stdin(&["enqueue", "q", "--group", "tenant-b"], "y\nz\n");
    assert_eq!(out.code, 0, "{out:?}");
    b.ok(&["enqueue", "q", "no-group"]);

    let show = json(&b, &["queue", "show", "q"]);
    assert_eq!(num(&show, &["stats", "groups"]), 3, "{show}");
    let groups: Vec<(String, u64)> = show["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("no groups in {show}"))
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap_or_default().to_owned(),
                g["ready"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    // Most ready first.
    assert_eq!(groups.first(), Some(&("tenant-b".to_owned(), 2)), "{show}");
    assert!(groups.contains(&("tenant-a".to_owned(), 1)), "{show}");
    assert!(groups.contains(&(String::new(), 1)), "{show}");
    let human = b.ok(&["queue", "show", "q"]);
    assert!(human.contains("tenant-b"), "{human}");
    assert!(human.contains("(default)"), "{human}");

    let mut got: Vec<(String, String)> = (0..4)
        .map(|_| {
            let d = json(&b, &["get", "q"]);
            (
                d["payload"].as_str().unwrap_or_default().to_owned(),
                d["group"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    got.sort();
    let want = [
        ("no-group", ""),
        ("x", "tenant-a"),
        ("y", "tenant-b"),
        ("z", "tenant-b"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(p, g)| ((*p).to_owned(), (*g).to_owned()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn stats_and_show_say_which_cap_holds_the_queue() {
    let b = Broker::start();
    b.ok(&["queue", "create", "capped", "--max-in-flight", "1"]);
    b.ok(&["enqueue", "capped", "a", "b"]);
    b.ok(&["get", "capped", "--no-ack"]);
    assert_eq!(b.cli(&["get", "capped"]).code, 3, "at the in-flight cap");
    let s = b.stats("capped");
    assert!(holds(&s).contains(&"in_flight_cap".to_owned()), "{s}");
    let human = b.ok(&["stats", "capped"]);
    assert!(human.contains("in-flight cap reached (1)"), "{human}");

    b.ok(&[
        "queue",
        "create",
        "grouped",
        "--max-in-flight-per-group",
        "1",
    ]);
    b.ok(&["enqueue", "grouped", "--group", "acme", "a1", "a2"]);
    b.ok(&["get", "grouped", "--no-ack"]);
    assert_eq!(b.cli(&["get", "grouped"]).code, 3, "acme at its cap");
    let show = json(&b, &["queue", "show", "grouped"]);
    assert!(holds(&show).contains(&"groups_held".to_owned()), "{show}");
    assert_eq!(num(&show, &["stats", "groups_held"]), 1, "{show}");
    let acme = &show["groups"][0];
    assert_eq!(acme["name"], "acme", "{show}");
    assert_eq!(acme["ready"], 1, "{show}");
    assert_eq!(acme["leased"], 1, "{show}");
    assert_eq!(acme["at_cap"], true, "{show}");
    let human = b.ok(&["queue", "show", "grouped"]);
    assert!(
        human.contains("groups held (1 at cap or throttled)"),
        "{human}"
    );
}

#[test]
fn bad_flow_control_input_is_a_one_line_error() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    // Caught by the CLI: usage errors (exit 2), nothing sent.
    refused(
        &b,
        &["queue", "create", "x", "--rate", "0/s"],
        2,
        "invalid rate",
    );
    refused(
        &b,
        &["queue", "create", "x", "--rate", "abc"],
        2,
        "invalid rate",
    );
    refused(&b, &["queue", "create", "x", "--burst", "3"], 2, "--rate");
    refused(
        &b,
        &["queue", "update", "q", "--rate", "0/s"],
        2,
        "invalid rate",
    );
    refused(
        &b,
        &["queue", "update", "q", "--rate", "abc"],
        2,
        "invalid rate",
    );
    refused(&b, &["queue", "update", "q"], 2, "nothing to change");
    // Needs the queue's current rate, which it does not have.
    refused(
        &b,
        &["queue", "update", "q", "--burst", "3"],
        2,
        "no rate limit",
    );
    // Refused by the broker.
    refused(
        &b,
        &["queue", "update", "nope", "--capacity", "5"],
        1,
        "NOT_FOUND",
    );
    refused(&b, &["queue", "pause", "nope"], 1, "NOT_FOUND");
    refused(&b, &["queue", "resume", "nope"], 1, "NOT_FOUND");
    refused(
        &b,
        &["queue", "update", "q", "--rate", "2000000/s"],
        1,
        "INVALID_ARGUMENT",
    );
    // Nothing was created or changed by the failures.
    assert_eq!(b.cli(&["stats", "x"]).code, 1);
    let o = options(&b, "q");
    assert_eq!(o["rate_limit"], Value::Null, "{o}");
    assert_eq!(o["paused"], false, "{o}");
}
