//! The `sluice` command line: arguments (their doc comments are the
//! `--help`), and one module per command.
//!
//! - `exit.rs`     — exit codes and failure messages (the only place);
//! - `parse.rs`    — durations, headers and rates;
//! - `batch.rs`    — cutting payloads into Enqueue batches;
//! - `progress.rs` — the enqueue progress bar;
//! - `json.rs`, `human.rs` — the two output formats;
//! - `queue.rs`, `schedule.rs`, `enqueue.rs`, `get.rs`, `join.rs`,
//!   `stats.rs`, `info.rs` — commands.

mod batch;
mod bench;
mod cluster;
mod dlq;
mod enqueue;
pub mod exit;
mod get;
mod human;
mod info;
mod join;
mod json;
mod parse;
mod progress;
mod queue;
mod schedule;
mod stats;
mod watch;

use std::io::Write;

use clap::{Parser, Subcommand};
use sluice_client::Client;

use exit::Failure;

/// The broker address used when neither --broker nor SLUICE_BROKER is set.
pub const DEFAULT_BROKER: &str = "http://127.0.0.1:50051";

/// Command-line client of the sluice task-queue broker.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, after_long_help = exit::HELP)]
pub struct Args {
    /// Broker address (http://HOST:PORT); for a cluster, its members'
    /// addresses separated by commas (the leader is found through them).
    #[arg(
        long,
        global = true,
        env = "SLUICE_BROKER",
        default_value = DEFAULT_BROKER,
        value_name = "URL"
    )]
    broker: String,
    /// Print results as JSON on stdout (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// For an https:// broker: trust this CA certificate (PEM) instead of
    /// the built-in web roots.
    #[arg(long, global = true, env = "SLUICE_CA_CERT", value_name = "PATH")]
    ca_cert: Option<std::path::PathBuf>,
    /// For a broker that wants client certificates (mutual TLS): this
    /// certificate (PEM), with --client-key.
    #[arg(
        long,
        global = true,
        env = "SLUICE_CLIENT_CERT",
        value_name = "PATH",
        requires = "client_key"
    )]
    client_cert: Option<std::path::PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(
        long,
        global = true,
        env = "SLUICE_CLIENT_KEY",
        value_name = "PATH",
        requires = "client_cert"
    )]
    client_key: Option<std::path::PathBuf>,
    /// Read the broker token from this file (first line).
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "token")]
    token_file: Option<std::path::PathBuf>,
    /// The broker token (prefer --token-file: command lines are visible to
    /// other users).
    #[arg(
        long,
        global = true,
        env = "SLUICE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, show, update, pause, resume, delete and purge queues.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Create, list, pause, resume and delete schedules: a task the broker
    /// enqueues on every tick of a cron expression or an interval.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Add tasks to a queue and print their ids.
    ///
    /// One task per PAYLOAD argument or, with none, per line of stdin, sent
    /// in batches. Waits while the queue is full, unless --no-wait; after a
    /// second of waiting it says so on stderr, with the queue's depth and
    /// capacity. Ids go to stdout as tasks are stored.
    Enqueue(enqueue::EnqueueArgs),
    /// Take one task, print its payload, ack it.
    ///
    /// The payload is written to stdout followed by a line break (with
    /// --raw: its exact bytes, nothing added), and acked only once written.
    /// Exit 3 when the queue is empty.
    Get(get::GetArgs),
    /// Wait until a queue has no unfinished task (ready, delayed or leased).
    Join(join::JoinArgs),
    /// Show depths, counters and consumers of one queue or of all.
    Stats(stats::StatsArgs),
    /// Follow a job: each task's outcome as it completes, then the summary.
    ///
    /// A watcher that connects late first gets what already happened. Exit
    /// 1 when any task of the job failed.
    Watch(watch::WatchArgs),
    /// Show the broker's version, limits, storage, security and features.
    ///
    /// With --json, the limits are numbers under "limits", named as in the
    /// proto's BrokerLimits; scripts can fit their batches to max_batch.
    Info,
    /// Dead letter queues: move dead tasks back to work.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// A cluster of brokers: its members, leader and lag.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Measure throughput, latency and resource use (like `nats bench`).
    ///
    /// P producers and C consumers against --broker, or against a broker it
    /// starts with --spawn. Every task is acked individually; the report
    /// gives tasks/s, MB/s, enqueue->delivery and enqueue->ack latency
    /// percentiles, the broker's CPU time and peak memory, and redeliveries,
    /// duplicates and lost tasks (the run fails if any were lost or
    /// duplicated). --baseline runs the same load against a bare gRPC
    /// server that does no queueing, for the ratio.
    Bench(bench::BenchArgs),
    /// The baseline server of `bench --baseline` (internal).
    #[command(hide = true)]
    BenchBaselineServer,
}

impl Args {
    /// Worker threads the command wants: the bench measures with several,
    /// everything else is one call at a time.
    pub fn threads(&self) -> usize {
        match &self.command {
            Command::Bench(b) => b.threads,
            Command::BenchBaselineServer => 2,
            _ => 1,
        }
    }
}

/// Runs the parsed command line.
pub async fn run(args: Args) -> Result<(), Failure> {
    let Args {
        broker,
        json,
        command,
        ca_cert,
        client_cert,
        client_key,
        token_file,
        token,
    } = args;
    let mut tls = tls_options(ca_cert, client_cert, client_key)?;
    tls.token = match (token_file, token) {
        (Some(p), _) => Some(
            std::fs::read_to_string(&p)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", p.display())))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
        ),
        (None, t) => t,
    };
    match command {
        Command::Queue(cmd) => {
            cmd.check()?;
            queue::run(&connect(&broker, &tls).await?, cmd, json).await
        }
        Command::Schedule(cmd) => {
            cmd.check()?;
            schedule::run(&connect(&broker, &tls).await?, cmd, json).await
        }
        Command::Enqueue(cmd) => {
            // Argument errors first: they must not depend on the broker.
            let plan = cmd.plan()?;
            enqueue::run(&connect(&broker, &tls).await?, plan, json).await
        }
        Command::Get(cmd) => {
            cmd.check(json)?;
            get::run(&connect(&broker, &tls).await?, cmd, json).await
        }
        Command::Join(cmd) => join::run(&connect(&broker, &tls).await?, cmd, json).await,
        Command::Stats(cmd) => stats::run(&connect(&broker, &tls).await?, cmd, json).await,
        Command::Watch(cmd) => watch::run(&connect(&broker, &tls).await?, cmd, json).await,
        Command::Dlq(cmd) => dlq::run(&connect(&broker, &tls).await?, cmd, json).await,
        Command::Info => info::run(&connect(&broker, &tls).await?, json).await,
        Command::Cluster(cmd) => cluster::run(&connect(&broker, &tls).await?, cmd, json).await,
        Command::Bench(cmd) => bench::run(&broker, cmd, json).await,
        Command::BenchBaselineServer => bench::serve_baseline().await,
    }
}

/// Reads the TLS files named on the command line.
fn tls_options(
    ca: Option<std::path::PathBuf>,
    cert: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
) -> Result<sluice_client::TlsOptions, Failure> {
    let read = |p: std::path::PathBuf| {
        std::fs::read(&p).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", p.display())))
    };
    Ok(sluice_client::TlsOptions {
        token: None,
        ca_cert_pem: ca.map(read).transpose()?,
        identity_pem: match (cert, key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        },
    })
}

async fn connect(broker: &str, tls: &sluice_client::TlsOptions) -> Result<Client, Failure> {
    Ok(Client::connect_with(broker, tls).await?)
}

/// Writes `bytes` to stdout and flushes. Not `print!`, which panics when
/// stdout is closed (`sluice ... | head -1`).
fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Io("writing to stdout", e))
}

/// Writes `text` to stdout.
fn print(text: &str) -> Result<(), Failure> {
    write_stdout(text.as_bytes())
}

/// Writes `value` to stdout as indented JSON and a line break.
fn print_json(value: &serde_json::Value) -> Result<(), Failure> {
    print(&format!("{value:#}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let args = Args::try_parse_from(["sluice", "stats", "--json", "--broker", "http://h:1"])
            .expect("valid");
        assert!(args.json);
        assert_eq!(args.broker, "http://h:1");
    }

    #[test]
    fn help_lists_exit_codes() {
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"));
        assert!(help.contains("75"));
    }
}
