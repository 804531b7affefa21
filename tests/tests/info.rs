//! `sluice info` (GetBrokerInfo): a broker tells its version, the limits
//! its flags set, its storage and security, and what it serves; any valid
//! token may ask, an unknown one may not.

use sluice_tests::{Broker, Value, cli, num};

fn info_json(b: &Broker, extra: &[&str]) -> Value {
    let mut args = extra.to_vec();
    args.extend(["--json", "info"]);
    let out = cli(&b.url(), &args, None);
    assert_eq!(out.code, 0, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("info --json: {e}: {out:?}"))
}

fn features(info: &Value) -> Vec<&str> {
    info["features"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn info_reads_back_the_limits_and_set_up_the_broker_runs_with() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start_on(
        "127.0.0.1:0",
        &[
            "--data-dir",
            &dir.path().display().to_string(),
            "--fsync",
            "interval:50ms",
            "--max-batch",
            "77",
            "--max-payload-bytes",
            "4096",
            "--max-disk-bytes",
            "100000000",
        ],
    );
    let info = info_json(&b, &[]);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"), "{info}");
    assert_eq!(num(&info, &["limits", "max_batch"]), 77, "{info}");
    assert_eq!(num(&info, &["limits", "max_payload_bytes"]), 4096);
    assert_eq!(num(&info, &["limits", "max_disk_bytes"]), 100_000_000);
    assert_eq!(num(&info, &["limits", "max_credit"]), 100_000, "a default");
    assert_eq!(
        num(&info, &["limits", "consume_frame_payload_bytes"]),
        1 << 20
    );
    // 16 MiB at least, whatever the payload limit.
    assert_eq!(num(&info, &["limits", "max_request_bytes"]), 16 << 20);
    assert_eq!(info["in_memory"], false);
    assert_eq!(info["fsync"], "interval");
    assert_eq!(num(&info, &["fsync_interval_ms"]), 50);
    assert_eq!(
        (info["auth"].clone(), info["tls"].clone()),
        (false.into(), false.into())
    );
    for f in ["enqueue", "publish", "consume", "jobs", "durable"] {
        assert!(features(&info).contains(&f), "{f}: {info}");
    }

    // The human form names the flag beside its value.
    let human = b.ok(&["info"]);
    assert!(
        human
            .lines()
            .any(|l| l.split_whitespace().eq(["--max-batch", "77"])),
        "{human}"
    );
    assert!(human.contains("fsync every 50ms"), "{human}");
}

#[test]
fn an_in_memory_broker_lists_no_durable_feature() {
    let b = Broker::start();
    let info = info_json(&b, &[]);
    assert_eq!(info["in_memory"], true);
    assert_eq!(info["fsync"], Value::Null);
    assert!(!features(&info).contains(&"durable"), "{info}");
    assert!(features(&info).contains(&"publish"), "{info}");
}

#[test]
fn any_valid_token_may_ask_and_an_unknown_one_may_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.toml");
    std::fs::write(
        &auth,
        r#"
[tokens.billing-worker]
token = "worker-0123456789abcdef"
consume = ["billing"]
"#,
    )
    .expect("write");
    let b = Broker::start_on("127.0.0.1:0", &["--auth-file", &auth.display().to_string()]);

    // A token with rights on one queue only still may: info names none.
    let info = info_json(&b, &["--token", "worker-0123456789abcdef"]);
    assert_eq!(info["auth"], true, "{info}");

    for extra in [vec![], vec!["--token", "nope-0123456789abcdef"]] {
        let mut args = extra.clone();
        args.push("info");
        let out = cli(&b.url(), &args, None);
        assert_eq!(out.code, 1, "{extra:?}: {out:?}");
        assert!(out.stderr.contains("UNAUTHENTICATED"), "{extra:?}: {out:?}");
    }
}
