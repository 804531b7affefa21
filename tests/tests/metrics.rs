//! Prometheus metrics: the broker's counters as a scrape sees them.

use sluice_tests::{Broker, DEADLINE, eventually, num, scrape};

#[test]
fn metrics_show_depths_and_counters_per_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().display().to_string();
    let b = Broker::start_on(
        "127.0.0.1:0",
        &["--data-dir", &data, "--metrics-listen", "127.0.0.1:0"],
    );
    let addr = b.metrics_addr();
    b.ok(&["queue", "create", "q", "--durable"]);
    b.ok(&["enqueue", "q", "a", "b"]);
    b.ok(&["get", "q"]);
    b.ok(&["queue", "create", "p", "--paused"]);
    b.ok(&["enqueue", "p", "--group", "tenant-1", "x"]);
    let text = scrape(&addr);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for line in [
        "# TYPE sluice_queue_ready_tasks gauge",
        "sluice_queue_ready_tasks{queue=\"q\"} 1",
        "sluice_queue_enqueued_tasks_total{queue=\"q\"} 2",
        "sluice_queue_acked_tasks_total{queue=\"q\"} 1",
        "# TYPE sluice_log_fsyncs_total counter",
        "# TYPE sluice_log_fsync_seconds histogram",
        "sluice_enqueue_wait_seconds_count 2",
        "sluice_queue_held{queue=\"p\",reason=\"paused\"} 1",
        "sluice_queue_held{queue=\"q\",reason=\"paused\"} 0",
        "sluice_queue_groups{queue=\"p\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(
        text.contains("sluice_process_resident_memory_bytes "),
        "{text}"
    );
}

#[test]
fn metrics_count_schedules_and_their_ticks() {
    let b = Broker::start_on("127.0.0.1:0", &["--metrics-listen", "127.0.0.1:0"]);
    let addr = b.metrics_addr();
    b.ok(&["queue", "create", "q"]);
    b.ok(&[
        "schedule", "create", "beat", "--queue", "q", "--every", "1s",
    ]);
    b.ok(&[
        "schedule", "create", "held", "--queue", "q", "--every", "1h", "--paused",
    ]);
    // Two ticks stored: the counter says at least that many fired.
    eventually(DEADLINE, "two ticks stored", || {
        num(&b.stats("q"), &["stats", "ready"]) >= 2
    });
    let text = scrape(&addr);
    for line in [
        "sluice_schedules{state=\"running\"} 1",
        "sluice_schedules{state=\"paused\"} 1",
        "# TYPE sluice_schedule_ticks_total counter",
        "sluice_schedule_ticks_total{result=\"failed\"} 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let fired = text
        .lines()
        .find_map(|l| l.strip_prefix("sluice_schedule_ticks_total{result=\"fired\"} "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(fired >= 2, "fired {fired}:\n{text}");
}
