//! `sluice bench`: P producers and C consumers against a broker, measuring
//! throughput, latency, the broker's CPU and memory, and correctness
//! (redeliveries, duplicates, lost tasks).
//!
//! - `load.rs`     — producers and consumers, and what they record;
//!   `load/schedules.rs` is schedules mode (`--schedules`), the same
//!   consumers taking what N schedules fire;
//! - `spawn.rs`    — starting a broker (or the baseline) and reading its
//!   CPU time and peak memory from /proc;
//! - `baseline.rs` — the gRPC ceiling: the same frames through a server
//!   that does no queueing;
//! - `report.rs`   — the table and the JSON.

mod baseline;
mod load;
mod report;
mod spawn;

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::exit::Failure;
use super::parse;

pub use baseline::serve as serve_baseline;

/// How producers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProducerMode {
    /// Enqueue calls of --batch tasks.
    Enqueue,
    /// One task per Enqueue call.
    Single,
    /// The Publish stream: frames of --batch tasks (1: one task per frame,
    /// as other brokers' benchmarks send), up to --window unconfirmed.
    Publish,
}

/// Measure throughput, latency and resource use of a broker.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Start a broker for the run (`sluice-broker` next to this binary, on
    /// 127.0.0.1:0) instead of using --broker; its CPU time and peak memory
    /// are reported.
    #[arg(long)]
    pub spawn: bool,
    /// Durable bench queues (the broker needs a data directory: with
    /// --spawn, one is made in the system's temp directory and removed
    /// afterwards, unless --data-dir names one).
    #[arg(long)]
    pub durable: bool,
    /// With --spawn: the broker's data directory (kept afterwards).
    #[arg(long, requires = "spawn")]
    pub data_dir: Option<std::path::PathBuf>,
    /// With --spawn: the broker's --fsync policy (always, interval:<dur>,
    /// never).
    #[arg(long, requires = "spawn", default_value = "always")]
    pub fsync: String,
    /// With --spawn --durable: after queuing --backlog, kill the broker
    /// (SIGKILL), start it again on the same data, and report how long it
    /// took to recover and serve.
    #[arg(long, requires_all = ["spawn", "durable"])]
    pub measure_recovery: bool,
    /// Pid of the broker at --broker, to report its CPU time and memory.
    #[arg(long, conflicts_with = "spawn")]
    pub broker_pid: Option<u32>,

    /// Tasks to send in all (ignored with --duration).
    #[arg(long, default_value_t = 200_000)]
    pub tasks: u64,
    /// Send for this long instead of a fixed number of tasks (e.g. 10s).
    #[arg(long, value_parser = parse::duration)]
    pub duration: Option<Duration>,
    /// Payload bytes per task (at least 20: the bench's own header).
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Queues the tasks are spread over.
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// Capacity of each bench queue.
    #[arg(long, default_value_t = 100_000)]
    pub capacity: u64,
    /// Spread the tasks over this many fairness groups (task n of a
    /// producer goes to group n mod N); 0 = none (the default group).
    #[arg(long, default_value_t = 0)]
    pub groups: u64,
    /// The bench queues' --max-in-flight (0 = no cap).
    #[arg(long, default_value_t = 0)]
    pub max_in_flight: u64,
    /// The bench queues' --max-in-flight-per-group (0 = no cap).
    #[arg(long, default_value_t = 0)]
    pub max_in_flight_per_group: u64,
    /// Producer tasks.
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Consumers; each opens one stream per queue it serves.
    #[arg(long, default_value_t = 2)]
    pub consumers: u32,
    /// Credit each consumer stream grants.
    #[arg(long, default_value_t = 256)]
    pub credit: u32,
    /// How producers send.
    #[arg(long, value_enum, default_value_t = ProducerMode::Enqueue)]
    pub mode: ProducerMode,
    /// Tasks per Enqueue call in `enqueue` mode, per frame in `publish`
    /// mode.
    #[arg(long, default_value_t = 100)]
    pub batch: u32,
    /// Publish mode: tasks each producer may have unconfirmed (the
    /// stream's window: credit held plus sent and not yet confirmed).
    #[arg(long, default_value_t = 1024)]
    pub window: u32,
    /// Enqueue calls each producer keeps in flight.
    #[arg(long, default_value_t = 2)]
    pub pipeline: u32,
    /// Latency mode: pace all producers together at this many tasks/s
    /// (one task per call). Without it: as fast as possible.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Also run the same load against a bare gRPC server that does no
    /// queueing, and report the ratio.
    #[arg(long)]
    pub baseline: bool,
    /// Give up waiting for acks this long after the last enqueue; what is
    /// missing then is reported lost.
    #[arg(long, value_parser = parse::duration, default_value = "60s")]
    pub settle_timeout: Duration,
    /// Tasks queued before the measured run starts (spread over the
    /// queues), consumed with the rest: throughput with a deep queue, and
    /// the broker's memory for that many tasks.
    #[arg(long, default_value_t = 0)]
    pub backlog: u64,
    /// Before sending, hold every queue and consumer stream open and idle
    /// this long, and report the broker's CPU use meanwhile (e.g. 10s).
    #[arg(long, value_parser = parse::duration)]
    pub idle: Option<Duration>,
    /// Schedules mode: instead of producers, create this many schedules
    /// firing every --every on one queue, consume their tasks for
    /// --duration, and report ticks expected, received, duplicated, missed
    /// and failed, and each tick's lateness (its task's enqueue time minus
    /// the tick).
    #[arg(
        long,
        requires = "duration",
        conflicts_with_all = ["baseline", "backlog", "measure_recovery", "idle", "rate", "queues"]
    )]
    pub schedules: Option<u32>,
    /// With --schedules: each schedule's interval (at least 1s, whole
    /// milliseconds).
    #[arg(long, value_parser = parse::duration, default_value = "1s", requires = "schedules")]
    pub every: Duration,
    /// Threads of the bench's own runtime.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Runs the bench (and the baseline, if asked) and prints the report.
pub async fn run(broker: &str, args: BenchArgs, json: bool) -> Result<(), Failure> {
    check(&args)?;
    let real = {
        let mut target = spawn::Target::open(broker, &args).await?;
        let url = target.url.clone();
        let r = if args.schedules.is_some() {
            load::run_schedules(&url, &args, "sluice").await
        } else {
            load::run(&url, &args, "sluice", &mut target).await
        };
        let usage = target.usage();
        target.stop().await;
        r?.with_usage(usage)
    };
    let base = if args.baseline {
        let mut target = spawn::Target::baseline().await?;
        let url = target.url.clone();
        let mut base_args = args.clone();
        // The baseline keeps nothing: durability does not apply to it.
        base_args.durable = false;
        base_args.measure_recovery = false;
        let r = load::run(&url, &base_args, "baseline", &mut target).await;
        target.stop().await;
        Some(r?)
    } else {
        None
    };
    report::print(&args, &real, base.as_ref(), json)
}

fn check(args: &BenchArgs) -> Result<(), Failure> {
    let usage = |m: &str| Err(Failure::Usage(m.to_owned()));
    if args.window == 0 {
        return usage("--window must be at least 1");
    }
    if args.mode == ProducerMode::Publish && args.batch > args.window {
        return usage("--mode publish: --batch must not be more than --window");
    }
    if args.producers == 0 || args.consumers == 0 || args.queues == 0 || args.credit == 0 {
        return usage("--producers, --consumers, --queues and --credit must be at least 1");
    }
    if args.payload < load::HEADER {
        return usage(&format!(
            "--payload must be at least {} bytes (the bench's own header)",
            load::HEADER
        ));
    }
    if args.batch == 0 || args.pipeline == 0 || args.threads == 0 {
        return usage("--batch, --pipeline and --threads must be at least 1");
    }
    if args.rate == Some(0) {
        return usage("--rate must be at least 1 task/s");
    }
    if args.schedules == Some(0) {
        return usage("--schedules must be at least 1");
    }
    if args.every < Duration::from_secs(1) || !args.every.subsec_nanos().is_multiple_of(1_000_000) {
        return usage("--every must be at least 1s, in whole milliseconds");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parsed(argv: &[&str]) -> Result<BenchArgs, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        check(&cli.bench).map_err(|e| format!("{e:?}"))?;
        Ok(cli.bench)
    }

    #[test]
    fn schedules_mode_options_are_checked() {
        let ok = parsed(&["--schedules", "5", "--duration", "3s"]).expect("valid");
        assert_eq!(ok.schedules, Some(5));
        assert_eq!(ok.every, Duration::from_secs(1));
        let ok = parsed(&[
            "--schedules",
            "5",
            "--duration",
            "3s",
            "--every",
            "2s",
            "--durable",
        ])
        .expect("valid");
        assert_eq!(ok.every, Duration::from_secs(2));
        // Without --schedules, --every's default does not count as given.
        assert!(parsed(&["--tasks", "10"]).is_ok());
        // It runs for a duration, not a number of tasks.
        assert!(parsed(&["--schedules", "5"]).is_err());
        assert!(parsed(&["--every", "2s", "--duration", "3s"]).is_err());
        assert!(parsed(&["--schedules", "0", "--duration", "3s"]).is_err());
        assert!(parsed(&["--schedules", "5", "--duration", "3s", "--every", "500ms"]).is_err());
        assert!(parsed(&["--schedules", "5", "--duration", "3s", "--every", "1500us"]).is_err());
        for other in [
            &["--baseline"][..],
            &["--backlog", "10"],
            &["--rate", "100"],
            &["--queues", "2"],
            &["--idle", "1s"],
        ] {
            let mut argv = vec!["--schedules", "5", "--duration", "3s"];
            argv.extend_from_slice(other);
            assert!(parsed(&argv).is_err(), "{argv:?}");
        }
    }
}
