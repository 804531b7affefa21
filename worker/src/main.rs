//! `sluice-worker`: consume a queue and run a command once per task, or
//! POST each task to a URL (`--http-post`).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use sluice_worker::command::{self, CommandSpec};
use sluice_worker::http::HttpPost;
use sluice_worker::{Config, Worker};

/// Consume a sluice queue: run CMD once per task, or POST each task to a URL.
///
/// With `-- CMD ARGS...`: the task's payload is CMD's stdin; SLUICE_TASK_ID,
/// SLUICE_QUEUE, SLUICE_ATTEMPT and SLUICE_HEADER_<NAME> (one per header,
/// upper-cased) are in its environment. Exit status 0 acks the task with
/// CMD's stdout as the result; any other status nacks it and the broker
/// retries it later. CMD's stderr goes to this worker's log.
///
/// With --http-post URL: each task is a POST to URL, the payload its body,
/// with the headers Sluice-Task-Id (the same on every attempt), Sluice-Queue,
/// Sluice-Attempt, Sluice-Group (when the task has one) and
/// Sluice-Header-<name> per task header. A 2xx answer acks the task, its
/// body (up to 1 MiB) the result. 429 or 503 retries it after the answer's
/// Retry-After (seconds or an HTTP date; 1 s without one) and holds the
/// whole queue as long, for every worker: the service is not sent more
/// meanwhile. Another 4xx sends the task to the dead letter queue, the
/// status and the start of the body its error. Another answer, a failed
/// connection or a request running past --timeout retries it after the
/// queue's backoff.
///
/// Give exactly one of --http-post and a command.
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

    /// Tasks run (or requests sent) at once, and so the most this worker
    /// holds.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,

    /// Name shown in `sluice stats` (default: worker-<pid>).
    #[arg(long)]
    name: Option<String>,

    /// Kill and nack a task whose command runs longer than this (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    task_timeout: Option<Duration>,

    /// POST each task to this http:// or https:// URL instead of running a
    /// command.
    #[arg(long, value_name = "URL")]
    http_post: Option<String>,

    /// With --http-post: the longest one request may take, from connecting
    /// to the answer's last byte, before the task is retried [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,

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

    /// The command to run per task, after `--` (unless --http-post).
    #[arg(last = true, num_args = 1..)]
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

    let handler = match handler(&args) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("sluice-worker: {e}");
            return ExitCode::from(2);
        }
    };
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
    let worker = Worker::new(config);
    let run = match handler {
        Handler::Command(spec) => {
            let spec = Arc::new(spec);
            let handler = move |task| {
                let spec = Arc::clone(&spec);
                async move { command::run(&spec, task).await }
            };
            worker.run(handler, shutdown).await
        }
        Handler::Http(post) => {
            tracing::info!(url = %post.url(), "posting tasks");
            let post = Arc::new(post);
            let handler = move |task| {
                let post = Arc::clone(&post);
                async move { post.run(task).await }
            };
            worker.run(handler, shutdown).await
        }
    };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-worker: {e}");
            ExitCode::from(1)
        }
    }
}

/// What the worker does with each task.
enum Handler {
    Command(CommandSpec),
    Http(HttpPost),
}

/// The handler the arguments ask for; a one-line complaint when they ask
/// for none, both, or options of the other one.
fn handler(args: &Args) -> Result<Handler, String> {
    match (&args.http_post, args.cmd.split_first()) {
        (Some(_), Some(_)) => {
            Err("give either --http-post URL or a command after --, not both".into())
        }
        (None, None) => Err("give a command to run after --, or --http-post URL".into()),
        (Some(_), None) if args.task_timeout.is_some() => {
            Err("--task-timeout is for commands; with --http-post, use --timeout".into())
        }
        (Some(url), None) => {
            let timeout = args.timeout.unwrap_or(Duration::from_secs(30));
            HttpPost::new(url, timeout)
                .map(Handler::Http)
                .map_err(|e| e.to_string())
        }
        (None, Some(_)) if args.timeout.is_some() => {
            Err("--timeout is for --http-post; a command's limit is --task-timeout".into())
        }
        (None, Some((program, rest))) => Ok(Handler::Command(CommandSpec {
            program: program.clone(),
            args: rest.to_vec(),
            task_timeout: args.task_timeout,
            // Itself, even if the file was replaced or removed since it
            // started (an upgrade in place): /proc/self/exe names this
            // process's image.
            shim: cfg!(target_os = "linux").then(|| "/proc/self/exe".into()),
        })),
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
