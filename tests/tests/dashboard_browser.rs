//! The dashboard in a real browser: a broker with traffic made by the
//! CLI, opened in Debian's headless Chromium by `tests/browser/dashboard.mjs`
//! (playwright-core), which checks what a person would see — the queue's
//! row with its depth, a chart drawn on the queue page, pause asking
//! first, a dead letter with its origin, "redrive all" moving it back —
//! and leaves screenshots in `target/dashboard-screenshots/` for a
//! reviewer. The CLI then confirms the move. A schedule made with the CLI:
//! its row, its FIRED count growing, pause by its button (asked first),
//! which `sluice schedule list` then agrees with. With `--auth-file`, the
//! sign-in: nothing shows without a token, a reader sees its queues and
//! their schedules and no buttons, an admin has them.
//!
//! `./scripts/test.sh` installs what it needs: Chromium (Debian's
//! `chromium` package) and playwright-core (`npm ci` in tests/browser).
//! Without them the test fails, saying so: it is not skipped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sluice_tests::{Broker, bin, eventually, num, root};

const CHROMIUM: &str = "/usr/bin/chromium";

/// The browser script's own steps wait at most 30 s each; this bounds the
/// whole (a browser that hangs at start).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(240);

/// Kills the browser script if the test ends early (its Chromium exits
/// when the pipe playwright drives it through closes).
struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `target/` of this build (the shared target directory, wherever it is).
fn target_dir() -> PathBuf {
    let broker = bin("sluice-broker");
    broker
        .parent()
        .and_then(Path::parent)
        .expect("binaries are in target/<profile>/")
        .to_path_buf()
}

/// Fails the test, saying what to install, when the browser or the
/// script's packages are missing.
fn browser_dir() -> PathBuf {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} not found: the dashboard's browser test drives Debian's Chromium; \
         install it with `apt-get install chromium` (./scripts/test.sh does)"
    );
    let dir = root().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules/playwright-core not found: run ./scripts/test.sh \
         (it runs npm ci in tests/browser)"
    );
    dir
}

/// Runs `tests/browser/dashboard.mjs` in `mode` against `b`'s dashboard;
/// fails the test with the script's account if it fails. Returns where
/// the screenshots are.
fn run_script(b: &Broker, mode: &str, env: &[(&str, &str)]) -> PathBuf {
    let dir = browser_dir();
    let shots = target_dir().join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let logs = tempfile::tempdir().expect("tempdir");
    let out_path = logs.path().join("stdout");
    let err_path = logs.path().join("stderr");
    let mut script = Script(
        Command::new("node")
            .arg("dashboard.mjs")
            .current_dir(&dir)
            .env("SLUICE_DASHBOARD", format!("http://{}", b.dashboard_addr()))
            .env("CHROMIUM", CHROMIUM)
            .env("SCREENSHOTS", &shots)
            .env("MODE", mode)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file"))
            .spawn()
            .expect("node (the browser test runs tests/browser/dashboard.mjs with it)"),
    );
    let mut status = None;
    eventually(SCRIPT_DEADLINE, "the browser script finishes", || {
        status = script.0.try_wait().expect("wait for node");
        status.is_some()
    });
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, stderr) = (read(&out_path), read(&err_path));
    assert!(
        status.is_some_and(|s| s.success()) && stdout.lines().any(|l| l == "ok"),
        "the browser check ({mode}) failed ({status:?}):\n{stdout}\n{stderr}\nscreenshots: {}",
        shots.display()
    );
    shots
}

#[test]
fn a_person_sees_the_queue_a_chart_and_redrives_a_dead_letter() {
    browser_dir();
    let b = Broker::start_on("127.0.0.1:0", &["--http-listen", "127.0.0.1:0"]);

    // Three calls, one of which runs out of its single attempt: its lease
    // of 100 ms expires and it goes to the dead letter queue.
    b.ok(&["queue", "create", "dlq"]);
    b.ok(&[
        "queue",
        "create",
        "calls",
        "--dead-letter",
        "dlq",
        "--max-attempts",
        "1",
        "--ack-deadline",
        "100ms",
    ]);
    b.ok(&[
        "enqueue",
        "calls",
        "--header",
        "source=browser-test",
        r#"{"to": "alice"}"#,
        r#"{"to": "bob"}"#,
        r#"{"to": "<carol>"}"#,
    ]);
    b.ok(&["get", "calls", "--no-ack"]);
    b.wait_stat("dlq", "ready", 1);
    b.wait_stat("calls", "ready", 2);

    let shots = run_script(
        &b,
        "walkthrough",
        &[("QUEUE", "calls"), ("DLQ", "dlq"), ("READY", "2")],
    );

    // What the page showed is what the broker holds.
    b.wait_stat("calls", "ready", 3);
    assert_eq!(num(&b.stats("dlq"), &["stats", "ready"]), 0);
    for shot in ["overview.png", "queue.png", "dead-letters.png"] {
        assert!(
            shots.join(shot).exists(),
            "no {shot} in {}",
            shots.display()
        );
    }
}

/// With `--auth-file`, nothing shows before sign-in; a token sees the
/// queues it may read and acts on those it administers.
#[test]
fn a_token_signs_in_and_sees_what_it_may() {
    browser_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.toml");
    std::fs::write(
        &auth,
        r#"
[tokens.ops]
token = "ops-0123456789abcdef"
admin = ["*"]
produce = ["*"]
consume = ["*"]

[tokens.reader]
token = "reader-0123456789abcdef"
consume = ["calls"]
"#,
    )
    .expect("auth file");
    let b = Broker::start_on(
        "127.0.0.1:0",
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--auth-file",
            &auth.display().to_string(),
        ],
    );
    let ops = ["--token", "ops-0123456789abcdef"];
    b.ok(&[&ops[..], &["queue", "create", "calls"]].concat());
    b.ok(&[&ops[..], &["queue", "create", "payroll"]].concat());
    b.ok(&[&ops[..], &["enqueue", "calls", "hello"]].concat());
    for (name, queue) in [("calls-hourly", "calls"), ("payroll-hourly", "payroll")] {
        let create = [
            "schedule", "create", name, "--queue", queue, "--every", "1h",
        ];
        b.ok(&[&ops[..], &create].concat());
    }

    run_script(
        &b,
        "sign-in",
        &[
            ("QUEUE", "calls"),
            ("HIDDEN", "payroll"),
            ("SCHEDULE", "calls-hourly"),
            ("HIDDEN_SCHEDULE", "payroll-hourly"),
            ("ADMIN_TOKEN", "ops-0123456789abcdef"),
            ("READER_TOKEN", "reader-0123456789abcdef"),
        ],
    );
}

/// A schedule made with the CLI, seen firing on the schedules page and
/// paused by its button; the CLI agrees.
#[test]
fn a_person_watches_a_schedule_fire_and_pauses_it() {
    browser_dir();
    let b = Broker::start_on("127.0.0.1:0", &["--http-listen", "127.0.0.1:0"]);
    b.ok(&["queue", "create", "api"]);
    b.ok(&[
        "schedule", "create", "poll", "--queue", "api", "--every", "1s",
    ]);

    let shots = run_script(&b, "schedules", &[("QUEUE", "api"), ("SCHEDULE", "poll")]);

    // What the page showed is what the broker holds.
    let row = b
        .ok(&["schedule", "list"])
        .lines()
        .find(|l| l.starts_with("poll "))
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .unwrap_or_default();
    assert!(row.iter().any(|c| c == "paused"), "schedule list: {row:?}");
    let list: serde_json::Value =
        serde_json::from_str(&b.ok(&["--json", "schedule", "list"])).unwrap_or_default();
    assert_eq!(list[0]["paused"], true, "{list}");
    assert!(num(&list[0], &["fired"]) >= 2, "{list}");
    for shot in ["schedules.png", "schedules-paused.png"] {
        assert!(
            shots.join(shot).exists(),
            "no {shot} in {}",
            shots.display()
        );
    }
}
