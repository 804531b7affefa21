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
    /// How to start it again (recovery measurement): the command line.
    restart: Option<(PathBuf, Vec<String>)>,
    /// A data directory this bench made, removed when it stops.
    temp_dir: Option<PathBuf>,
}

impl Target {
    /// `--spawn`: a new broker; otherwise `url` (and `--broker-pid`).
    pub async fn open(url: &str, args: &BenchArgs) -> Result<Target, Failure> {
        if !args.spawn {
            return Ok(Target {
                url: url.to_owned(),
                pid: args.broker_pid,
                child: None,
                restart: None,
                temp_dir: None,
            });
        }
        let bin = sibling("sluice-broker")?;
        let mut argv: Vec<String> = vec!["--listen".into(), "127.0.0.1:0".into()];
        let mut temp_dir = None;
        if args.durable || args.data_dir.is_some() {
            let dir = match &args.data_dir {
                Some(d) => d.clone(),
                None => {
                    let d =
                        std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
                    temp_dir = Some(d.clone());
                    d
                }
            };
            argv.extend([
                "--data-dir".into(),
                dir.display().to_string(),
                "--fsync".into(),
                args.fsync.clone(),
            ]);
        } else {
            argv.push("--in-memory".into());
        }
        let mut cmd = Command::new(&bin);
        cmd.args(&argv);
        let mut t = start(cmd, &bin.display().to_string()).await?;
        // A restart listens where the first one did, so URLs stay valid.
        if let Some(i) = argv.iter().position(|a| a == "127.0.0.1:0") {
            argv[i] = t.url.trim_start_matches("http://").to_owned();
        }
        t.restart = Some((bin, argv));
        t.temp_dir = temp_dir;
        Ok(t)
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

    /// Kills the broker (SIGKILL) and starts it again on the same data
    /// and address; returns how long until it served again.
    pub async fn crash_and_restart(&mut self) -> Result<Duration, Failure> {
        let Some((bin, argv)) = self.restart.clone() else {
            return Err(Failure::Usage("--measure-recovery needs --spawn".into()));
        };
        if let Some(child) = &mut self.child {
            let _ = child.kill().await;
        }
        let started = std::time::Instant::now();
        let mut cmd = Command::new(&bin);
        cmd.args(&argv);
        let t = start(cmd, "the restarted broker").await?;
        let took = started.elapsed();
        self.pid = t.pid;
        self.child = t.child;
        Ok(took)
    }

    /// Stops a process this bench started, and removes its temporary data.
    pub async fn stop(mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill().await;
        }
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
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
        restart: None,
        temp_dir: None,
    })
}
