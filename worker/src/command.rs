//! Runs one command per task: the handler of `sluice-worker`.
//!
//! The payload goes to the command's stdin; `SLUICE_TASK_ID`,
//! `SLUICE_QUEUE`, `SLUICE_ATTEMPT` and one `SLUICE_HEADER_<NAME>` per
//! header are in its environment. Exit 0 acks with stdout as the result;
//! anything else nacks (retried by the broker). Each command runs in its
//! own process group, so a Ctrl-C meant for the worker does not kill the
//! tasks it is finishing, and a timeout kills everything the command
//! started. With [`CommandSpec::shim`] the command runs under the task shim
//! (see [`crate::shim`]), so it does not outlive a worker that dies.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tracing::{info, warn};

use crate::{Outcome, Task};

/// Results longer than this are cut (the broker's default payload limit).
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;

/// What to run per task.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    /// Kill and nack a task that runs longer.
    pub task_timeout: Option<Duration>,
    /// The `sluice-worker` binary to run the command through as its task
    /// shim, so it dies with this process; `None` runs it directly. Only
    /// the binary knows the shim's flag: a library user's own executable
    /// does not.
    pub shim: Option<PathBuf>,
}

/// `SLUICE_HEADER_` + the header name upper-cased, with anything but
/// letters and digits turned into `_`.
pub fn header_env_name(name: &str) -> String {
    let mut s = String::from("SLUICE_HEADER_");
    s.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    s
}

/// Runs the command for one task and turns its exit into an outcome.
pub async fn run(spec: &CommandSpec, task: Task) -> Outcome {
    let mut cmd = command(spec);
    cmd.env("SLUICE_TASK_ID", &task.id)
        .env("SLUICE_QUEUE", &task.queue)
        .env("SLUICE_ATTEMPT", task.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in &task.headers {
        cmd.env(header_env_name(k), v);
    }
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::retry(format!("cannot start {}: {e}", spec.program)),
    };
    let mut group = ProcessGroup(child.id());

    // Feed stdin from its own task: a command that never reads it must not
    // block us.
    if let Some(mut stdin) = child.stdin.take() {
        let payload = task.payload.clone();
        tokio::spawn(async move {
            let _ = stdin.write_all(&payload).await;
        });
    }
    let stdout = child.stdout.take().map(|mut out| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let mut cut = false;
            loop {
                match out.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) if buf.len() + n <= MAX_RESULT_BYTES => {
                        buf.extend_from_slice(&chunk[..n])
                    }
                    Ok(_) => cut = true,
                }
            }
            (buf, cut)
        })
    });
    let id = task.id.clone();
    let stderr = child.stderr.take().map(|err| {
        tokio::spawn(async move {
            let mut last = String::new();
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                info!(task = %id, "{line}");
                last = line;
            }
            last
        })
    });

    let status = match spec.task_timeout {
        Some(t) => match tokio::time::timeout(t, child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                drop(group);
                let _ = child.wait().await;
                warn!(task = %task.id, timeout = ?t, "task timed out; killed");
                return Outcome::retry(format!(
                    "timed out after {}",
                    humantime::format_duration(t)
                ));
            }
        },
        None => child.wait().await,
    };
    // It exited by itself: leave anything it started in the background.
    group.0 = None;
    let status = match status {
        Ok(s) => s,
        Err(e) => return Outcome::retry(format!("waiting for the command failed: {e}")),
    };
    let (result, cut) = match stdout {
        Some(h) => h.await.unwrap_or_default(),
        None => (Vec::new(), false),
    };
    if cut {
        warn!(task = %task.id, limit = MAX_RESULT_BYTES, "result cut at the limit");
    }
    let last_err = match stderr {
        Some(h) => h.await.unwrap_or_default(),
        None => String::new(),
    };
    if status.success() {
        Outcome::Ack {
            result: Bytes::from(result),
        }
    } else {
        let how = match status.code() {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_owned(),
        };
        let error = if last_err.is_empty() {
            how
        } else {
            format!("{how}: {last_err}")
        };
        Outcome::retry(error)
    }
}

/// The command, or the shim that runs it: the process the worker spawns,
/// waits for and whose group it kills.
fn command(spec: &CommandSpec) -> Command {
    #[cfg(target_os = "linux")]
    if let Some(shim) = &spec.shim {
        let mut cmd = Command::new(shim);
        // `ps` shows a worker's shims as such, whatever path ran them.
        cmd.arg0("sluice-worker")
            .arg(crate::shim::FLAG)
            .arg(std::process::id().to_string())
            .arg("--")
            .arg(&spec.program)
            .args(&spec.args);
        return cmd;
    }
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args);
    cmd
}

/// Kills the command's whole process group when dropped before it exited
/// (timeout, or the worker abandoning the task).
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pid) = self.0
            && let Ok(pid) = i32::try_from(pid)
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names() {
        assert_eq!(header_env_name("trace-id"), "SLUICE_HEADER_TRACE_ID");
        assert_eq!(header_env_name("a.b"), "SLUICE_HEADER_A_B");
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

    fn sh(script: &str) -> CommandSpec {
        CommandSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            task_timeout: Some(Duration::from_secs(10)),
            shim: None,
        }
    }

    #[tokio::test]
    async fn exit_zero_acks_with_stdout() {
        let out = run(
            &sh("read x; echo \"$x $SLUICE_ATTEMPT $SLUICE_HEADER_TRACE_ID\""),
            task("hi"),
        )
        .await;
        assert_eq!(
            out,
            Outcome::Ack {
                result: Bytes::from("hi 2 abc\n")
            }
        );
    }

    #[tokio::test]
    async fn failure_nacks_with_the_last_stderr_line() {
        let out = run(&sh("echo oops >&2; exit 3"), task("")).await;
        assert_eq!(out, Outcome::retry("exit status 3: oops"));
    }

    #[tokio::test]
    async fn timeout_kills_and_nacks() {
        let mut spec = sh("sleep 30");
        spec.task_timeout = Some(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let out = run(&spec, task("")).await;
        assert!(matches!(out, Outcome::Retry { ref error, .. } if error.starts_with("timed out")));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
