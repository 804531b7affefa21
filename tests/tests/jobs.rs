//! Jobs: a producer enqueues a batch under a job id and follows each
//! task's outcome (with the worker's result) and then the job's summary —
//! as does a watcher that connects halfway.

use std::collections::HashSet;

use sluice_tests::{Broker, DEADLINE, cli, eventually, num};

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Checks 1,000 outcomes with their results, then the summary.
fn check_job_output(stdout: &str) {
    let lines = json_lines(stdout);
    assert_eq!(lines.len(), 1001, "1000 outcomes and a summary");
    let (summary, outcomes) = lines.split_last().expect("lines");
    assert_eq!(summary["succeeded"], 1000, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    let mut payloads = HashSet::new();
    for o in outcomes {
        assert_eq!(o["outcome"], "succeeded", "{o}");
        let payload = o["payload"].as_str().expect("payload");
        assert_eq!(o["result"], format!("done-{payload}\n"), "{o}");
        assert_eq!(o["result_encoding"], "utf8");
        payloads.insert(payload.to_owned());
    }
    assert_eq!(payloads.len(), 1000, "each task once");
}

#[test]
fn a_job_of_a_thousand_tasks_reports_every_result_then_a_summary() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--capacity", "300"]);
    let _workers: Vec<_> = (0..3)
        .map(|i| {
            b.worker(
                "q",
                &["--concurrency", "4", "--name", &format!("w{i}")],
                &["sh", "-c", "read x; echo \"done-$x\""],
            )
        })
        .collect();
    let url = b.url();
    let input: String = (0..1000).map(|i| format!("t{i}\n")).collect();
    let producer = std::thread::spawn(move || {
        cli(
            &url,
            &["--json", "enqueue", "q", "--job", "j1", "--wait"],
            Some(&input),
        )
    });
    // A watcher that comes halfway gets what already happened, then the rest.
    eventually(DEADLINE, "half the job done", || {
        num(&b.stats("q"), &["stats", "acked_total"]) >= 500
    });
    let late = b.cli(&["--json", "watch", "j1"]);
    assert_eq!(late.code, 0, "{late:?}");
    check_job_output(&late.stdout);

    let out = producer.join().expect("producer thread");
    assert_eq!(out.code, 0, "{out:?}");
    check_job_output(&out.stdout);
}

#[test]
fn a_failing_task_shows_up_as_failed_in_the_summary() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--max-attempts", "1"]);
    let _w = b.worker(
        "q",
        &[],
        &[
            "sh",
            "-c",
            "read x; [ \"$x\" != bad ] || { echo 'cannot do bad' >&2; exit 1; }; echo ok",
        ],
    );
    let out = cli(
        &b.url(),
        &["--json", "enqueue", "q", "--job", "j2", "--wait"],
        Some("good-1\nbad\ngood-2\n"),
    );
    assert_eq!(out.code, 1, "a failed task fails the command: {out:?}");
    let lines = json_lines(&out.stdout);
    let summary = lines.last().expect("summary");
    assert_eq!(summary["succeeded"], 2, "{summary}");
    assert_eq!(summary["failed"], 1, "{summary}");
    let failed: Vec<_> = lines.iter().filter(|l| l["outcome"] == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["payload"], "bad");
    assert_eq!(failed[0]["error"], "exit status 1: cannot do bad");
    assert!(out.stderr.contains("1 of 3 tasks failed"), "{out:?}");
}

#[test]
fn a_durable_jobs_outcomes_and_seal_survive_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start_durable(dir.path());
    let addr = b.addr.clone();
    let data = dir.path().display().to_string();
    b.ok(&["queue", "create", "q", "--durable"]);
    // Four tasks under job k, sealed by the CLI with its total.
    let out = cli(
        &b.url(),
        &["enqueue", "q", "--job", "k"],
        Some("a\nb\nc\nd\n"),
    );
    assert_eq!(out.code, 0, "{out:?}");
    // Two are done before the crash (`get` acks with an empty result).
    b.ok(&["get", "q"]);
    b.ok(&["get", "q"]);
    drop(b); // SIGKILL

    let b = Broker::start_on(&addr, &["--data-dir", &data]);
    let _w = b.worker("q", &[], &["sh", "-c", "read x; echo \"done-$x\""]);
    let out = b.cli(&["--json", "watch", "k"]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines = json_lines(&out.stdout);
    let summary = lines.last().expect("summary");
    assert_eq!(summary["succeeded"], 4, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    let results: HashSet<String> = lines[..lines.len() - 1]
        .iter()
        .map(|o| {
            format!(
                "{}={}",
                o["payload"].as_str().unwrap_or(""),
                o["result"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        results,
        ["a=", "b=", "c=done-c\n", "d=done-d\n"]
            .into_iter()
            .map(String::from)
            .collect(),
        "outcomes from before the crash kept, the rest after it"
    );
    assert_eq!(num(&b.stats("q"), &["stats", "unfinished"]), 0);
}
