//! Command-line arguments; the doc comments are the `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::storage::FsyncPolicy;

/// The sluice broker: named bounded task queues with flow-control credits,
/// served over gRPC.
///
/// Prints `listening on <addr>` on stdout once it serves; logs go to stderr
/// (set RUST_LOG, e.g. RUST_LOG=sluice_broker=debug). SIGINT or SIGTERM
/// shuts it down.
#[derive(Debug, Parser)]
#[command(name = "sluice-broker", version)]
pub struct Args {
    /// Read settings from this TOML file: every flag as a key (`data-dir =
    /// "..."`), and `[[queues]]` to create at start. Flags and SLUICE_*
    /// variables override it.
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (after flags, environment and
    /// file) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Address to serve gRPC on; port 0 picks a free port.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory of the write-ahead log that keeps durable queues (created
    /// if missing; one broker at a time).
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./sluice-data")]
    pub data_dir: PathBuf,

    /// Keep everything in memory: no data directory, and durable queues
    /// are refused.
    #[arg(long, conflicts_with_all = ["fsync", "repair", "max_disk_bytes", "segment_bytes"])]
    pub in_memory: bool,

    /// When an enqueue to a durable queue is confirmed: `always` (after
    /// fdatasync: survives power loss), `interval:<dur>` (after the write,
    /// synced at most that much later: a power loss may lose the last
    /// interval), `never` (after the write; the OS syncs: a power loss may
    /// lose more). A crash of the broker alone loses nothing confirmed
    /// under any of them.
    #[arg(long, env = "SLUICE_FSYNC", default_value = "always")]
    pub fsync: FsyncPolicy,

    /// Start even if the log is damaged in the middle: each damaged file is
    /// copied aside (`*.corrupt-<time>`) and its records from the damage
    /// on are skipped. Tasks in them are lost; use only after reading the
    /// error that made the broker refuse to start.
    #[arg(long)]
    pub repair: bool,

    /// Disk quota for the log in bytes: beyond it, enqueues to durable
    /// queues fail with RESOURCE_EXHAUSTED as on a full disk.
    #[arg(long, env = "SLUICE_MAX_DISK_BYTES")]
    pub max_disk_bytes: Option<u64>,

    /// Size at which the log starts a new segment file. Old segments are
    /// deleted once compaction has rewritten what is still live in them;
    /// compaction runs when the log outgrows twice its live data plus one
    /// segment.
    #[arg(long, env = "SLUICE_SEGMENT_BYTES", default_value_t = 64 << 20)]
    pub segment_bytes: u64,

    /// On SIGTERM/SIGINT, how long consumers get to finish and ack the
    /// tasks they hold (new enqueues and subscriptions are refused at once);
    /// what is still held then goes back to the queue.
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, default_value = "30s")]
    pub shutdown_grace: std::time::Duration,

    /// How long a job's outcomes are kept for watchers after its last
    /// activity. A job's tasks on durable queues, their outcomes and its
    /// seal are in the write-ahead log: such a job comes back after a
    /// restart and goes on; the rest is kept in memory only.
    #[arg(long, env = "SLUICE_JOB_TTL", value_parser = humantime::parse_duration, default_value = "1h")]
    pub job_ttl: std::time::Duration,

    /// How long a Publish stream may hold credit (reserved space) without
    /// sending while other producers wait for space; then the broker ends
    /// the stream (ABORTED) and frees the space for them.
    #[arg(long, env = "SLUICE_PUBLISH_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub publish_idle_timeout: std::time::Duration,

    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "SLUICE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: accept only clients with a certificate signed by this CA
    /// (PEM).
    #[arg(long, env = "SLUICE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve Prometheus metrics on this address (GET /metrics); port 0
    /// picks a free port, printed as `metrics on <addr>` on stderr.
    #[arg(long, env = "SLUICE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve the web dashboard (and its JSON API, and /metrics) on this
    /// address; port 0 picks a free port, printed as `dashboard on
    /// <addr>` on stderr. Plain HTTP: keep it on loopback or behind a TLS
    /// proxy. With --auth-file, visitors sign in with a token.
    #[arg(long, env = "SLUICE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// Tokens and what they may do (TOML; see the README). Without it the
    /// broker is open to anyone who can reach it, and says so.
    #[arg(long, env = "SLUICE_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// Serve without an auth file on a non-loopback address (refused
    /// otherwise).
    #[arg(long)]
    pub allow_unauthenticated: bool,

    /// Largest task accepted: payload plus header names and values, in
    /// bytes.
    #[arg(long, env = "SLUICE_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024)]
    pub max_payload_bytes: usize,

    /// Memory budget: payload bytes of all queued tasks together. Beyond
    /// it, enqueues get RESOURCE_EXHAUSTED (the broker does not run out of
    /// memory because producers were fast); consumers are still served.
    #[arg(long, env = "SLUICE_MAX_MEMORY_BYTES", default_value_t = 2 << 30)]
    pub max_memory_bytes: u64,

    /// Queues the broker holds at most.
    #[arg(long, env = "SLUICE_MAX_QUEUES", default_value_t = 100_000)]
    pub max_queues: usize,

    /// Schedules the broker holds at most.
    #[arg(long, env = "SLUICE_MAX_SCHEDULES", default_value_t = 1_000)]
    pub max_schedules: usize,

    /// Consume streams per queue at most.
    #[arg(long, env = "SLUICE_MAX_CONSUMERS_PER_QUEUE", default_value_t = 10_000)]
    pub max_consumers_per_queue: u64,

    /// Consume streams in the broker at most.
    #[arg(long, env = "SLUICE_MAX_CONSUMERS", default_value_t = 100_000)]
    pub max_consumers: u64,

    /// Unspent credit a consumer may hold.
    #[arg(long, env = "SLUICE_MAX_CREDIT", default_value_t = 100_000)]
    pub max_credit: u64,

    /// Tasks per enqueue or publish frame (and items per ack, nack or
    /// extend call) at most.
    #[arg(long, env = "SLUICE_MAX_BATCH", default_value_t = 10_000)]
    pub max_batch: usize,

    /// This broker's id in a cluster (its key in --peers). With --peers,
    /// durable queues are replicated on the cluster (Raft); without, the
    /// broker runs alone.
    #[arg(
        long,
        env = "SLUICE_NODE_ID",
        requires = "peers",
        conflicts_with = "in_memory"
    )]
    pub node_id: Option<u64>,

    /// The cluster's members, this one included, as ID=HOST:PORT,...
    /// (their gRPC addresses; Raft runs on the same port). Every member is
    /// started with the same list; the cluster forms once a majority is up.
    #[arg(long, env = "SLUICE_PEERS", requires = "node_id")]
    pub peers: Option<Peers>,

    /// In a cluster: Raft log entries between snapshots. A snapshot holds
    /// every durable queue with its task bodies; the log behind it is
    /// dropped (all but the last min(1000, half) entries), and a member
    /// that fell further behind, or lost its disk, installs it. Entries
    /// since the last snapshot are also kept in memory: fewer means less
    /// memory and smaller catch-ups, more means fewer snapshots.
    #[arg(
        long,
        env = "SLUICE_SNAPSHOT_EVERY",
        default_value_t = 50_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub snapshot_every: u64,

    /// Join a running cluster instead of forming one: the member waits
    /// until the leader adds it (`sluice cluster add-node ID HOST:PORT`).
    /// Only its first start needs it; once added, it is a member.
    #[arg(long, env = "SLUICE_JOIN", requires = "node_id")]
    pub join: bool,

    /// A file holding the cluster's secret (one line): members then accept
    /// Raft calls only from members that know it. Without it, anyone who
    /// can reach a member's port can speak Raft to it.
    #[arg(long, env = "SLUICE_CLUSTER_SECRET_FILE", requires = "node_id")]
    pub cluster_secret_file: Option<PathBuf>,

    /// Concurrent streams (calls) per client connection.
    #[arg(
        long,
        env = "SLUICE_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 65_536
    )]
    pub max_streams_per_connection: u32,
}

/// A cluster's members: id -> HOST:PORT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers(pub std::collections::BTreeMap<u64, String>);

impl std::str::FromStr for Peers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut peers = std::collections::BTreeMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (id, addr) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not ID=HOST:PORT"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("{id:?} in {item:?} is not a node id (a number)"))?;
            let addr = addr.trim();
            let port = addr.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
            if !matches!(port, Some(Ok(_))) {
                return Err(format!("{addr:?} in {item:?} is not HOST:PORT"));
            }
            if peers.insert(id, addr.to_owned()).is_some() {
                return Err(format!("node id {id} is listed twice"));
            }
        }
        if peers.is_empty() {
            return Err("no members listed".into());
        }
        Ok(Peers(peers))
    }
}

impl std::fmt::Display for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = self.0.iter().map(|(id, a)| format!("{id}={a}")).collect();
        f.write_str(&items.join(","))
    }
}

impl Args {
    /// How the broker was started, as GetBrokerInfo tells it.
    pub fn setup(&self) -> crate::api::info::Setup {
        crate::api::info::Setup {
            in_memory: self.in_memory,
            fsync: self.fsync,
            max_disk_bytes: self.max_disk_bytes,
            auth: self.auth_file.is_some(),
            tls: self.tls_cert.is_some(),
            tls_client_certificates: self.tls_cert.is_some() && self.tls_client_ca.is_some(),
            max_streams_per_connection: self.max_streams_per_connection,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The help once said jobs never survive a restart, while those of
    /// durable queues do (README, "Producers and jobs").
    #[test]
    fn job_ttl_help_says_jobs_of_durable_queues_survive_a_restart() {
        let cmd = Args::command();
        let help = cmd
            .get_arguments()
            .find(|a| a.get_id() == "job_ttl")
            .and_then(|a| a.get_long_help().or(a.get_help()))
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(help.contains("comes back after a"), "{help}");
        assert!(!help.contains("do not survive"), "{help}");
    }
}
