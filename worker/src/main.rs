//! `sluice-worker`: consume a queue and run a command once per task.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use sluice_worker::command::{self, CommandSpec};
use sluice_worker::{Config, Worker};

/// Consume a sluice queue and run CMD once per task.
///
/// The task's payload is CMD's stdin; SLUICE_TASK_ID, SLUICE_QUEUE,
/// SLUICE_ATTEMPT and SLUICE_HEADER_<NAME> (one per header, upper-cased)
/// are in its environment. Exit status 0 acks the task with CMD's stdout as
/// the result; any other status nacks it and the broker retries it later.
/// CMD's stderr goes to this worker's log.
///
/// The worker holds at most --concurrency tasks, reconnects by itself when
/// the broker goes away, and on SIGTERM/SIGINT stops taking tasks, lets
/// running ones finish (up to --shutdown-grace), acks them and exits 0.
/// A command never outlives the worker: if the worker dies (even by
/// SIGKILL), each running command's process group is killed.
#[derive(Debug, Parser)]
#[command(name = "sluice-worker", version)]
struct Args {
    /// Broker URL.
    #[arg(long, env = "SLUICE_BROKER", default_value = "http://127.0.0.1:50051")]
    broker: String,

    /// Queue to consume.
    #[arg(long)]
    queue: String,

    /// Tasks run at once (and so the most this worker holds).
    #[arg(long, default_value_t = 1)]
    concurrency: u32,

    /// Name shown in `sluice stats` (default: worker-<pid>).
    #[arg(long)]
    name: Option<String>,

    /// Kill and nack a task whose command runs longer than this (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    task_timeout: Option<Duration>,

    /// On shutdown, how long running tasks get to finish.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    shutdown_grace: Duration,

    /// For an https:// broker: trust this CA certificate (PEM).
    #[arg(long, env = "SLUICE_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for a broker that wants one; with
    /// --client-key.
    #[arg(long, env = "SLUICE_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<std::path::PathBuf>,

    /// The private key of --client-cert (PEM).
    #[arg(long, env = "SLUICE_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<std::path::PathBuf>,

    /// Read the broker token from this file (first line); or set
    /// SLUICE_TOKEN.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,

    /// The command to run per task, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    cmd: Vec<String>,
}

fn main() -> ExitCode {
    // The task shim (see `sluice_worker::shim`) is this binary run by
    // itself; it needs none of the worker's set-up.
    #[cfg(target_os = "linux")]
    {
        let mut argv = std::env::args_os().skip(1);
        if argv.next().as_deref() == Some(sluice_worker::shim::FLAG.as_ref()) {
            sluice_worker::shim::main(argv);
        }
    }
    worker(Args::parse())
}

#[tokio::main]
async fn worker(args: Args) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let Some((program, rest)) = args.cmd.split_first() else {
        eprintln!("sluice-worker: no command given after --");
        return ExitCode::from(2);
    };
    let spec = Arc::new(CommandSpec {
        program: program.clone(),
        args: rest.to_vec(),
        task_timeout: args.task_timeout,
        // Itself, even if the file was replaced or removed since it started
        // (an upgrade in place): /proc/self/exe names this process's image.
        shim: cfg!(target_os = "linux").then(|| "/proc/self/exe".into()),
    });
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let tls = (|| -> Result<sluice_client::TlsOptions, String> {
        let token = match &args.token_file {
            Some(p) => Some(
                String::from_utf8_lossy(&read(p)?)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var("SLUICE_TOKEN").ok(),
        };
        Ok(sluice_client::TlsOptions {
            token,
            ca_cert_pem: args.ca_cert.as_ref().map(read).transpose()?,
            identity_pem: match (&args.client_cert, &args.client_key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            },
        })
    })();
    let tls = match tls {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = Config::new(args.broker, args.queue);
    config.tls = tls;
    config.concurrency = args.concurrency;
    config.shutdown_grace = args.shutdown_grace;
    if let Some(name) = args.name {
        config.name = name;
    }

    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    let handler = move |task| {
        let spec = Arc::clone(&spec);
        async move { command::run(&spec, task).await }
    };
    match Worker::new(config).run(handler, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-worker: {e}");
            ExitCode::from(1)
        }
    }
}

/// First SIGINT/SIGTERM: drain. Second: exit at once.
async fn on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    token.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal, exiting now");
    std::process::exit(130);
}
