//! The broker a bench runs against: one given by URL, one started for the
//! run, or the baseline server; and the CPU time and peak memory of a
//! local one, read from /proc.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::BenchArgs;
use crate::cli::exit::Failure;

/// A broker process's resource use.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// User + system CPU time.
    pub cpu: Duration,
    /// Peak resident memory (VmHWM), bytes.
    pub peak_rss: u64,
}

/// Where the load goes.
pub struct Target {
    pub url: String,
    pid: Option<u32>,
    child: Option<Child>,
}

impl Target {
    /// `--spawn`: a new broker; otherwise `url` (and `--broker-pid`).
    pub async fn open(url: &str, args: &BenchArgs) -> Result<Target, Failure> {
        if !args.spawn {
            return Ok(Target {
                url: url.to_owned(),
                pid: args.broker_pid,
                child: None,
            });
        }
        let bin = sibling("sluice-broker")?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--listen", "127.0.0.1:0", "--in-memory"]);
        start(cmd, &bin.display().to_string()).await
    }

    /// The baseline server, this same binary in another process.
    pub async fn baseline() -> Result<Target, Failure> {
        let bin =
            std::env::current_exe().map_err(|e| Failure::Io("finding the sluice binary", e))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("bench-baseline-server");
        start(cmd, "the baseline server").await
    }

    /// CPU time and peak memory so far, when the broker is local.
    pub fn usage(&self) -> Option<Usage> {
        let pid = self.pid?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses and may
        // itself contain spaces.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the file, 12 and 13 here.
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // Linux reports in USER_HZ, which is 100 on every mainstream build.
        let cpu = Duration::from_millis(ticks * 10);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(Usage {
            cpu,
            peak_rss: kb * 1024,
        })
    }

    /// Stops a process this bench started.
    pub async fn stop(mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill().await;
        }
    }
}

/// A binary installed next to this one.
fn sibling(name: &str) -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe().map_err(|e| Failure::Io("finding the sluice binary", e))?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(Failure::Usage(format!(
            "--spawn: {} not found next to sluice (build it: cargo build --release -p sluice-broker)",
            path.display()
        )))
    }
}

/// Starts `cmd` and reads its `listening on ADDR` line.
async fn start(mut cmd: Command, what: &str) -> Result<Target, Failure> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::Refused(format!("cannot start {what}: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Failure::Refused(format!("{what}: no stdout")))?;
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await;
    let addr = match read {
        Ok(Ok(_)) => line.trim().strip_prefix("listening on ").map(str::to_owned),
        _ => None,
    };
    let Some(addr) = addr else {
        return Err(Failure::Refused(format!(
            "{what} did not say where it listens"
        )));
    };
    Ok(Target {
        url: format!("http://{addr}"),
        pid: child.id(),
        child: Some(child),
    })
}
