//! Command-line arguments; the doc comments are the `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The sluice broker: named bounded task queues with flow-control credits,
/// served over gRPC.
///
/// Prints `listening on <addr>` on stdout once it serves; logs go to stderr
/// (set RUST_LOG, e.g. RUST_LOG=sluice_broker=debug). SIGINT or SIGTERM
/// shuts it down.
#[derive(Debug, Parser)]
#[command(name = "sluice-broker", version)]
pub struct Args {
    /// Address to serve gRPC on; port 0 picks a free port.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Keep every queue in memory only. This version has no durable
    /// storage yet, so this is also what happens without the flag.
    #[arg(long)]
    pub in_memory: bool,

    /// Directory for durable state. Not available in this version: the
    /// broker refuses to start with it rather than pretend to persist.
    #[arg(long, env = "SLUICE_DATA_DIR", conflicts_with = "in_memory")]
    pub data_dir: Option<PathBuf>,

    /// Largest task accepted: payload plus header names and values, in
    /// bytes.
    #[arg(long, env = "SLUICE_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024)]
    pub max_payload_bytes: usize,
}
