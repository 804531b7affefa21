//! A short smoke run of `sluice bench`: it completes, every task is acked
//! once, none lost. No timing is asserted — figures come from real runs
//! (see README), not from tests.

use sluice_tests::{bin, num};

/// Runs `sluice --json bench --spawn ARGS` to completion; its JSON report.
fn bench(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(bin("sluice"))
        .args(["--json", "bench", "--spawn"])
        .args(args)
        .output()
        .expect("run sluice bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).expect("json report")
}

/// Both runs (sluice and the baseline) sent `n` tasks, and each was acked
/// exactly once.
fn every_task_acked_once(report: &serde_json::Value, n: u64) {
    for run in ["sluice", "baseline"] {
        let r = &report[run];
        assert_eq!(num(r, &["sent"]), n, "{run}: {r}");
        assert_eq!(num(r, &["acked"]), n, "{run}: {r}");
        assert_eq!(num(r, &["lost"]), 0, "{run}: {r}");
        assert_eq!(num(r, &["duplicates"]), 0, "{run}: {r}");
    }
}

#[test]
fn bench_smoke_run_loses_and_duplicates_nothing() {
    let report = bench(&[
        "--tasks",
        "20000",
        "--producers",
        "2",
        "--consumers",
        "3",
        "--credit",
        "64",
        "--queues",
        "2",
        "--baseline",
    ]);
    every_task_acked_once(&report, 20_000);
    assert_eq!(num(&report["sluice"], &["redeliveries"]), 0);
    assert!(report["sluice"]["broker_peak_rss_bytes"].as_u64().is_some());
}

#[test]
fn durable_publish_one_task_per_frame_loses_and_duplicates_nothing() {
    let report = bench(&[
        "--durable",
        "--mode",
        "publish",
        "--batch",
        "1",
        "--window",
        "256",
        "--tasks",
        "20000",
        "--producers",
        "2",
        "--baseline",
    ]);
    every_task_acked_once(&report, 20_000);
}

#[test]
fn durable_bench_smoke_run_survives_its_own_crash() {
    let report = bench(&[
        "--durable",
        "--tasks",
        "5000",
        "--backlog",
        "2000",
        "--measure-recovery",
    ]);
    let r = &report["sluice"];
    // The backlog was queued, the broker SIGKILLed and restarted, and
    // every task still came through exactly once.
    assert_eq!(num(r, &["sent"]), 7_000, "{r}");
    assert_eq!(num(r, &["acked"]), 7_000, "{r}");
    assert_eq!(num(r, &["lost"]), 0, "{r}");
    assert_eq!(num(r, &["duplicates"]), 0, "{r}");
    assert!(r["recovery_s"].as_f64().is_some(), "{r}");
}

#[test]
fn schedules_mode_receives_ticks_and_duplicates_none() {
    let report = bench(&["--schedules", "5", "--duration", "3s"]);
    let r = &report["sluice"];
    let t = &r["schedules"];
    assert!(num(t, &["tasks_received"]) > 0, "{r}");
    assert_eq!(num(t, &["duplicates"]), 0, "{r}");
    assert_eq!(num(r, &["duplicates"]), 0, "{r}");
    assert_eq!(num(r, &["lost"]), 0, "{r}");
    // Every tick the broker fired arrived, each under one task.
    assert_eq!(num(t, &["distinct_ticks"]), num(t, &["fired"]), "{r}");
    assert!(t["tick_to_enqueue"]["max_us"].as_u64().is_some(), "{r}");
    assert!(r["broker_peak_rss_bytes"].as_u64().is_some(), "{r}");
}
