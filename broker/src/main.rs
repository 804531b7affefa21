//! `sluice-broker`: parse args, set up logging, open the log, bind, serve
//! until a signal.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use sluice_broker::args::Args;
use sluice_broker::broker::Broker;
use sluice_broker::limits::Limits;
use sluice_broker::{server, signal, wal};

// glibc's malloc keeps per-thread arenas whose freed memory is rarely
// returned; a broker that holds millions of small tasks and then drains them
// wants an allocator that gives memory back and fragments less.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let (args, declared) = match sluice_broker::config::parse() {
        Ok(parsed) => parsed,
        Err(sluice_broker::config::ConfigError::Clap(e)) => e.exit(),
        Err(sluice_broker::config::ConfigError::File(e)) => {
            eprintln!("sluice-broker: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", sluice_broker::config::print(&args, &declared));
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let tokens = match &args.auth_file {
        Some(path) => match sluice_broker::api::auth::Tokens::load(path) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("sluice-broker: {e}");
                return ExitCode::from(2);
            }
        },
        None => {
            let open = [Some(args.listen), args.http_listen]
                .into_iter()
                .flatten()
                .find(|a| !a.ip().is_loopback());
            if let Some(addr) = open
                && !args.allow_unauthenticated
            {
                eprintln!(
                    "sluice-broker: refusing to serve {addr} without --auth-file; \
                     add --allow-unauthenticated to serve it open"
                );
                return ExitCode::from(2);
            }
            tracing::warn!("no --auth-file: anyone who can reach the broker may use it");
            None
        }
    };
    let tls_on = args.tls_cert.is_some();
    let tls = match tls_config(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice-broker: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    let log_options = sluice_broker::storage::LogOptions {
        fsync: args.fsync,
        max_bytes: args.max_disk_bytes,
        repair: args.repair,
        segment_bytes: args.segment_bytes,
        ..Default::default()
    };
    let mut cluster = None;
    let broker = if let (Some(id), Some(peers)) = (args.node_id, &args.peers) {
        let secret = match &args.cluster_secret_file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
                Ok(_) => {
                    eprintln!("sluice-broker: {} is empty", path.display());
                    return ExitCode::from(2);
                }
                Err(e) => {
                    eprintln!("sluice-broker: cannot read {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            },
            None => {
                tracing::warn!(
                    "no --cluster-secret-file: anyone who can reach a member may speak Raft to it"
                );
                None
            }
        };
        let config = sluice_broker::member::MemberConfig {
            id,
            peers: peers.0.clone(),
            dir: args.data_dir.clone(),
            log: log_options,
            secret: secret.clone(),
            tls: tls_on,
            join: args.join,
            snapshot_every: args.snapshot_every,
        };
        match sluice_broker::member::Member::start(config, shutdown.clone()).await {
            Ok(member) => {
                tracing::info!(node = id, peers = %peers, "cluster member: durable queues are replicated");
                let scheme = if tls_on { "https" } else { "http" };
                cluster = Some(server::ClusterServing {
                    current: member.current,
                    secret,
                    own_url: format!(
                        "{scheme}://{}",
                        peers.0.get(&id).cloned().unwrap_or_default()
                    ),
                });
                member.broker
            }
            Err(e) => {
                eprintln!("sluice-broker: {e}");
                return ExitCode::from(1);
            }
        }
    } else if args.in_memory {
        tracing::info!("--in-memory: every queue is lost when the broker stops");
        Broker::new(shutdown.clone())
    } else {
        match wal::open::open(args.data_dir.clone(), log_options).await {
            Ok((log, recovered)) => {
                Broker::with_log(shutdown.clone(), Some(log), recovered, args.segment_bytes)
            }
            Err(e) => {
                eprintln!("sluice-broker: {e}");
                return ExitCode::from(1);
            }
        }
    };

    if cluster.is_some() && !declared.is_empty() {
        eprintln!(
            "sluice-broker: config: [[queues]] and [[schedules]] are not created by cluster \
             members yet; create them with `sluice queue create` and `sluice schedule \
             create` against the cluster"
        );
        return ExitCode::from(2);
    }
    let limits = Limits {
        max_payload_bytes: args.max_payload_bytes,
        max_memory_bytes: args.max_memory_bytes,
        max_queues: args.max_queues,
        max_schedules: args.max_schedules,
        max_consumers_per_queue: args.max_consumers_per_queue,
        max_consumers: args.max_consumers,
        max_credit: args.max_credit,
        max_batch: args.max_batch,
        publish_idle: args.publish_idle_timeout,
    };
    broker.set_limits(limits.clone());
    broker.set_shutdown_grace(args.shutdown_grace);
    broker.jobs().set_ttl(args.job_ttl);
    for q in &declared.queues {
        let created = match sluice_broker::config::queue_options(q) {
            Ok(options) => sluice_broker::api::validate::queue_spec(&q.name, Some(&options))
                .map_err(|e| format!("queues.{}: {e}", q.name)),
            Err(e) => Err(e),
        };
        let created = match created {
            Ok(spec) => broker
                .declare_queue(spec)
                .await
                .map_err(|e| format!("queues.{}: {e}", q.name)),
            Err(e) => Err(e),
        };
        if let Err(e) = created {
            eprintln!("sluice-broker: config: {e}");
            return ExitCode::from(2);
        }
    }
    for s in &declared.schedules {
        let spec = sluice_broker::config::schedule_spec(s).and_then(|spec| {
            sluice_broker::api::validate::schedule_spec(Some(spec), &broker.limits()).map_err(|e| {
                // The API's message names the schedule; the file's names it
                // as its entry.
                let e = e.to_string();
                let own = format!("schedule {:?}: ", s.name);
                format!(
                    "schedules.{}: {}",
                    s.name,
                    e.strip_prefix(&own).unwrap_or(&e)
                )
            })
        });
        let declared = match spec {
            Ok(spec) => broker
                .declare_schedule(spec, s.paused)
                .await
                .map_err(|e| format!("schedules.{}: {e}", s.name)),
            Err(e) => Err(e),
        };
        if let Err(e) = declared {
            eprintln!("sluice-broker: config: {e}");
            return ExitCode::from(2);
        }
    }
    broker.start_schedules();
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sluice-broker: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sluice-broker: cannot read the bound address: {e}");
            return ExitCode::from(1);
        }
    };
    // Tests and scripts read the port from this line: exactly one, flushed.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
    tracing::info!(%addr, tls = tls_on, "serving");

    if let Some(maddr) = args.metrics_listen {
        match TcpListener::bind(maddr).await {
            Ok(l) => {
                let bound = l.local_addr().map_or(maddr, |a| a);
                eprintln!("metrics on {bound}");
                tracing::info!(addr = %bound, "serving metrics");
                tokio::spawn(sluice_broker::metrics::serve(
                    l,
                    broker.clone(),
                    cluster.as_ref().map(|c| c.current.clone()),
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                eprintln!("sluice-broker: cannot listen for metrics on {maddr}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    if let Some(haddr) = args.http_listen {
        match TcpListener::bind(haddr).await {
            Ok(l) => {
                let bound = l.local_addr().map_or(haddr, |a| a);
                eprintln!("dashboard on {bound}");
                tracing::info!(addr = %bound, "serving the dashboard");
                tokio::spawn(sluice_broker::web::serve(
                    l,
                    broker.clone(),
                    tokens.clone().map(std::sync::Arc::new),
                    cluster.as_ref().map(|c| c.current.clone()),
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                eprintln!("sluice-broker: cannot listen for the dashboard on {haddr}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    tokio::spawn(signal::on_signal(shutdown.clone()));
    let served = server::run(
        listener,
        limits,
        broker.clone(),
        tls,
        tokens,
        args.setup(),
        cluster,
    )
    .await;
    if let Some(log) = broker.log()
        && let Err(e) = log.close().await
    {
        eprintln!("sluice-broker: closing the log: {e}");
        return ExitCode::from(1);
    }
    match served {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice-broker: {e}");
            ExitCode::from(1)
        }
    }
}

/// The TLS configuration from --tls-cert/--tls-key/--tls-client-ca, read
/// and checked now so a bad file is a clear error at start.
fn tls_config(args: &Args) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    sluice_broker::tls::server_config(cert, key, args.tls_client_ca.as_deref()).map(Some)
}
