//! `sluice-broker`: parse args, set up logging, bind, serve until a signal.

use std::io::{IsTerminal, Write};

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use sluice_broker::args::Args;
use sluice_broker::validate::Limits;
use sluice_broker::{server, signal};

// glibc's malloc keeps per-thread arenas whose freed memory is rarely
// returned; a broker that holds millions of small tasks and then drains them
// wants an allocator that gives memory back and fragments less.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    if let Some(dir) = &args.data_dir {
        eprintln!(
            "sluice-broker: --data-dir {}: durable storage is not available in this version; \
             run with --in-memory",
            dir.display()
        );
        return std::process::ExitCode::from(2);
    }
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sluice-broker: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::from(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sluice-broker: cannot read the bound address: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    tracing::info!(%addr, "all queues are in memory: they are lost when the broker stops");
    // Tests and scripts read the port from this line: exactly one, flushed.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();

    let shutdown = CancellationToken::new();
    tokio::spawn(signal::on_signal(shutdown.clone()));
    let limits = Limits {
        max_payload_bytes: args.max_payload_bytes,
    };
    match server::run(listener, limits, shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice-broker: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
