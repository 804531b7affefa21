//! The task shim is invisible to the command and to the worker: the same
//! stdin, environment, result, errors, exit codes and timeouts as a command
//! run directly; and it refuses to start a command for a worker that is
//! already gone.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_worker::command::{CommandSpec, run};
use sluice_worker::{Outcome, Task};

fn shim() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice-worker"))
}

fn sh(script: &str) -> CommandSpec {
    CommandSpec {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        task_timeout: Some(Duration::from_secs(20)),
        shim: Some(shim()),
    }
}

fn task(payload: &str) -> Task {
    Task {
        id: "t1".into(),
        queue: "q".into(),
        attempt: 2,
        payload: Bytes::from(payload.to_owned()),
        headers: [("trace-id".to_owned(), "abc".to_owned())].into(),
        priority: 0,
        enqueued_at_unix_ms: 0,
        group: String::new(),
    }
}

fn error_of(out: Outcome) -> String {
    match out {
        Outcome::Retry { error, .. } => error,
        other => panic!("expected a retry, got {other:?}"),
    }
}

/// Alive and not a zombie (see the end-to-end harness's `pid_alive`).
fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next());
        !matches!(state, Some("Z" | "X") | None)
    })
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test]
async fn the_command_sees_its_payload_and_environment_and_its_stdout_is_the_result() {
    let script =
        "read x; echo \"$x $SLUICE_TASK_ID $SLUICE_QUEUE $SLUICE_ATTEMPT $SLUICE_HEADER_TRACE_ID\"";
    let out = run(&sh(script), task("hi")).await;
    assert_eq!(
        out,
        Outcome::Ack {
            result: Bytes::from("hi t1 q 2 abc\n")
        }
    );
}

#[tokio::test]
async fn the_command_starts_with_the_same_signal_mask_and_dispositions() {
    // The shim waits for signals; none of that may leak into the command
    // (a blocked mask would survive exec and make it deaf to SIGTERM).
    let spec = |shim| CommandSpec {
        program: "grep".into(),
        args: vec![
            "-E".into(),
            "^Sig(Blk|Ign)".into(),
            "/proc/self/status".into(),
        ],
        task_timeout: None,
        shim,
    };
    let direct = run(&spec(None), task("")).await;
    let shimmed = run(&spec(Some(shim())), task("")).await;
    assert!(matches!(direct, Outcome::Ack { .. }), "{direct:?}");
    assert_eq!(shimmed, direct);
}

#[tokio::test]
async fn exit_codes_and_the_last_stderr_line_pass_through() {
    let out = run(&sh("echo first >&2; echo oops >&2; exit 3"), task("")).await;
    assert_eq!(out, Outcome::retry("exit status 3: oops"));
    let out = run(&sh("exit 0"), task("")).await;
    assert_eq!(out, Outcome::ack());
}

#[tokio::test]
async fn a_command_killed_by_a_signal_is_reported_as_such() {
    // TERM is one the shim waits for, PIPE one Rust ignores: both must still
    // look like a signal death to the worker.
    for sig in ["KILL", "TERM", "USR1", "PIPE"] {
        let out = run(&sh(&format!("kill -{sig} $$")), task("")).await;
        assert_eq!(out, Outcome::retry("killed by a signal"), "SIG{sig}");
    }
}

#[tokio::test]
async fn a_missing_program_fails_the_task() {
    let mut spec = sh("");
    spec.program = "/nonexistent/sluice-test-program".into();
    let error = error_of(run(&spec, task("")).await);
    assert!(
        error.starts_with("exit status 127: cannot start /nonexistent/sluice-test-program"),
        "{error}"
    );
}

#[tokio::test]
async fn a_timeout_kills_the_command_and_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let child = dir.path().join("child.pid");
    let mut spec = sh(&format!("sleep 30 & echo $! > {}; wait", child.display()));
    spec.task_timeout = Some(Duration::from_millis(500));
    let started = Instant::now();
    let error = error_of(run(&spec, task("")).await);
    assert!(error.starts_with("timed out"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid = read_pid(&child).expect("the command wrote its child's pid");
    let end = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        assert!(
            Instant::now() < end,
            "the command's child {pid} outlived the timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_shim_does_not_start_a_command_for_a_worker_that_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    // Our parent is this test, not pid 1: as if the worker died before the
    // shim asked to follow it.
    let out = Command::new(shim())
        .args(["--task-shim", "1", "--", "touch"])
        .arg(&ran)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the worker is gone"),
        "{out:?}"
    );
    assert!(!ran.exists(), "the command ran");
}

#[test]
fn bad_shim_arguments_are_a_one_line_error() {
    let out = Command::new(shim())
        .args(["--task-shim", "nope", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
