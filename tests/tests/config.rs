//! `--config`: flags as keys, queues created at start, precedence, and
//! errors that name the key.

use sluice_tests::{Broker, bin, broker_refuses, num};

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
