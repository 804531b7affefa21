//! A short smoke run of `sluice bench`: it completes, every task is acked
//! once, none lost. No timing is asserted — figures come from real runs
//! (see README), not from tests.

use sluice_tests::{bin, num};

#[test]
fn bench_smoke_run_loses_and_duplicates_nothing() {
    let out = std::process::Command::new(bin("sluice"))
        .args([
            "--json",
            "bench",
            "--spawn",
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
        ])
        .output()
        .expect("run sluice bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json report");
    for run in ["sluice", "baseline"] {
        let r = &report[run];
        assert_eq!(num(r, &["sent"]), 20_000, "{run}: {r}");
        assert_eq!(num(r, &["acked"]), 20_000, "{run}: {r}");
        assert_eq!(num(r, &["lost"]), 0, "{run}: {r}");
        assert_eq!(num(r, &["duplicates"]), 0, "{run}: {r}");
    }
    assert_eq!(num(&report["sluice"], &["redeliveries"]), 0);
    assert!(report["sluice"]["broker_peak_rss_bytes"].as_u64().is_some());
}
