//! `--config FILE`: every command-line flag as a TOML key, plus queues to
//! create at start.
//!
//! ```toml
//! listen = "0.0.0.0:50051"
//! data-dir = "/var/lib/sluice"
//! fsync = "interval:10ms"
//! auth-file = "/etc/sluice/auth.toml"
//! max-memory-bytes = 4294967296
//!
//! [[queues]]
//! name = "orders"
//! durable = true
//! capacity = 50000
//! order = "priority"
//! ack-deadline = "1m"
//! max-attempts = 8
//! dead-letter = "orders.dead"
//!
//! [[schedules]]
//! name = "nightly-report"
//! queue = "orders"
//! cron = "0 3 * * *"         # or every = "30s"
//! tz = "Europe/Paris"
//! missed = "catch-up:3"      # or "skip" (the default)
//! payload = "report"
//! headers = { kind = "daily" }
//! job = "report-{tick}"
//! ```
//!
//! Declared queues and schedules are brought to the file's definition at
//! every start: one changed at runtime (`sluice queue update`, `sluice
//! schedule pause`) is set back, one defined differently is replaced.
//!
//! Precedence: a flag on the command line, then its `SLUICE_*` environment
//! variable, then the file, then the default. Keys may be written with `-`
//! or `_`. An unknown key, or a value the flag refuses, stops the start
//! with a message naming the key.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use serde::Deserialize;

use crate::args::Args;

/// A queue declared in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct QueueDecl {
    pub name: String,
    #[serde(default)]
    pub durable: bool,
    pub capacity: Option<u64>,
    /// fifo | lifo | priority
    pub order: Option<String>,
    /// A duration, e.g. "30s".
    pub ack_deadline: Option<String>,
    pub max_attempts: Option<u32>,
    pub dead_letter: Option<String>,
    pub retry_initial: Option<String>,
    pub retry_max: Option<String>,
    pub retry_multiplier: Option<f64>,
    pub key_window: Option<String>,
    /// Leased tasks at most, over all consumers.
    pub max_in_flight: Option<u64>,
    /// Deliveries per time: "20/s", "100/m", "5/500ms".
    pub rate: Option<String>,
    /// Deliveries at once under `rate`.
    pub burst: Option<u64>,
    /// Leased tasks at most per group.
    pub max_in_flight_per_group: Option<u64>,
    /// Created paused (nothing delivered until resumed).
    #[serde(default)]
    pub paused: bool,
}

/// A schedule declared in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ScheduleDecl {
    pub name: String,
    pub queue: String,
    pub cron: Option<String>,
    /// A duration, e.g. "30s".
    pub every: Option<String>,
    pub tz: Option<String>,
    /// "skip" or "catch-up:N".
    pub missed: Option<String>,
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub headers: std::collections::HashMap<String, String>,
    #[serde(default)]
    pub priority: i32,
    pub group: Option<String>,
    pub job: Option<String>,
    #[serde(default)]
    pub paused: bool,
}

/// What the file declares besides flags.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    pub queues: Vec<QueueDecl>,
    pub schedules: Vec<ScheduleDecl>,
}

impl Declared {
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty() && self.schedules.is_empty()
    }
}

/// A schedule's missed-tick policy as people write it: `skip` or
/// `catch-up:N` (N from 1 to 100); the number of ticks to catch up.
pub fn parse_missed(s: &str) -> Result<u32, String> {
    if s == "skip" {
        return Ok(0);
    }
    let n = s
        .strip_prefix("catch-up:")
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| (1..=100).contains(n));
    n.ok_or_else(|| format!("{s:?} is not skip or catch-up:N with N from 1 to 100"))
}

/// The proto definition of a declared schedule; errors name the schedule
/// and key.
pub fn schedule_spec(s: &ScheduleDecl) -> Result<sluice_proto::v1::ScheduleSpec, String> {
    let every_ms = match &s.every {
        None => 0,
        Some(d) => humantime::parse_duration(d)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| format!("schedules.{}.every: {e}", s.name))?,
    };
    let catch_up = match &s.missed {
        None => 0,
        Some(m) => parse_missed(m).map_err(|e| format!("schedules.{}.missed: {e}", s.name))?,
    };
    Ok(sluice_proto::v1::ScheduleSpec {
        name: s.name.clone(),
        queue: s.queue.clone(),
        cron: s.cron.clone().unwrap_or_default(),
        every_ms,
        time_zone: s.tz.clone().unwrap_or_default(),
        catch_up,
        task: Some(sluice_proto::v1::ScheduledTask {
            payload: s.payload.clone().into(),
            headers: s.headers.clone(),
            priority: s.priority,
            group: s.group.clone().unwrap_or_default(),
            job_id: s.job.clone().unwrap_or_default(),
        }),
    })
}

/// A rate as people write it: `N/s`, `N/m`, `N/h` or `N/<duration>`
/// (`5/500ms`); a bare `N` is per second. Returns (tasks, per_ms).
pub fn parse_rate(s: &str) -> Result<(u64, u64), String> {
    let (n, per) = s.split_once('/').unwrap_or((s, "s"));
    let tasks: u64 = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate like 20/s (a whole number of tasks per time)"))?;
    let per_ms = match per.trim() {
        "s" | "sec" | "second" => 1000,
        "m" | "min" | "minute" => 60_000,
        "h" | "hour" => 3_600_000,
        d => humantime::parse_duration(d)
            .map_err(|e| format!("{s:?}: {d:?} is not s, m, h or a duration ({e})"))?
            .as_millis() as u64,
    };
    if tasks == 0 || per_ms == 0 {
        return Err(format!(
            "{s:?}: a rate needs at least 1 task per at least 1 ms"
        ));
    }
    Ok((tasks, per_ms))
}

/// Why the configuration could not be read.
#[derive(Debug)]
pub enum ConfigError {
    /// clap's own outcome (usage errors, --help, --version): exit with it.
    Clap(clap::Error),
    /// A problem with the file, naming it and the key.
    File(String),
}

/// Parses the command line, folding in `--config` when given. Returns the
/// arguments and the queues the file declares.
pub fn parse() -> Result<(Args, Declared), ConfigError> {
    parse_from(std::env::args_os().collect())
}

/// [`parse`] on explicit arguments (for tests).
pub fn parse_from(argv: Vec<OsString>) -> Result<(Args, Declared), ConfigError> {
    let cmd = Args::command();
    let matches = cmd
        .clone()
        .try_get_matches_from(&argv)
        .map_err(ConfigError::Clap)?;
    let first = Args::from_arg_matches(&matches).map_err(ConfigError::Clap)?;
    let Some(path) = first.config.clone() else {
        return Ok((first, Declared::default()));
    };
    let (table, declared) = read(&path).map_err(ConfigError::File)?;
    // Flags the user did not set (neither on the command line nor in the
    // environment) take the file's value.
    let mut extra: Vec<OsString> = Vec::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        let Some(arg) = cmd.get_arguments().find(|a| a.get_id().as_str() == id) else {
            return Err(ConfigError::File(format!(
                "config {}: unknown key {key:?}",
                path.display()
            )));
        };
        if id == "config" || id == "print_config" {
            return Err(ConfigError::File(format!(
                "config {}: key {key:?} cannot be set in a file",
                path.display()
            )));
        }
        if matches!(
            matches.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flag = format!("--{}", arg.get_long().unwrap_or(&id));
        match value {
            toml::Value::Boolean(true) => extra.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => {
                extra.push(flag.into());
                extra.push(s.into());
            }
            toml::Value::Integer(i) => {
                extra.push(flag.into());
                extra.push(i.to_string().into());
            }
            toml::Value::Float(f) => {
                extra.push(flag.into());
                extra.push(f.to_string().into());
            }
            other => {
                return Err(ConfigError::File(format!(
                    "config {}: key {key:?} has a {} value; expected a string, number or boolean",
                    path.display(),
                    other.type_str()
                )));
            }
        }
    }
    let mut all = argv;
    all.extend(extra);
    let matches = cmd.try_get_matches_from(all).map_err(|e| {
        ConfigError::File(format!(
            "config {}: {}",
            path.display(),
            e.to_string().lines().next().unwrap_or_default()
        ))
    })?;
    let args = Args::from_arg_matches(&matches).map_err(ConfigError::Clap)?;
    Ok((args, declared))
}

fn read(path: &Path) -> Result<(toml::Table, Declared), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))?;
    let queues = entries(table.remove("queues"), "queues")
        .map_err(|e| format!("config {}: {e}", path.display()))?;
    let schedules = entries(table.remove("schedules"), "schedules")
        .map_err(|e| format!("config {}: {e}", path.display()))?;
    Ok((table, Declared { queues, schedules }))
}

/// The entries of a `[[queues]]` or `[[schedules]]` array, each read on
/// its own so that an error names the one at fault (`schedules.nightly:
/// unknown field ...`), as the checks after reading do; an entry without
/// a name is named by its place (`schedules #2`).
fn entries<T: serde::de::DeserializeOwned>(
    value: Option<toml::Value>,
    key: &str,
) -> Result<Vec<T>, String> {
    let items = match value {
        None => return Ok(Vec::new()),
        Some(toml::Value::Array(items)) => items,
        Some(other) => {
            return Err(format!(
                "{key}: expected an array of tables ([[{key}]]), found {}",
                other.type_str()
            ));
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let name = match item.get("name").and_then(toml::Value::as_str) {
                Some(name) => format!("{key}.{name}"),
                None => format!("{key} #{}", i + 1),
            };
            // The message alone: the error's Display ends in a newline.
            item.try_into()
                .map_err(|e: toml::de::Error| format!("{name}: {}", e.message().trim_end()))
        })
        .collect()
}

/// The effective configuration as TOML (for `--print-config`).
pub fn print(args: &Args, declared: &Declared) -> String {
    let queues = &declared.queues;
    let mut out = String::from("# effective configuration (flags > SLUICE_* > file > defaults)\n");
    let d = |d: &std::time::Duration| humantime::format_duration(*d).to_string();
    let opt = |v: Option<String>| v.map_or("# (not set)".to_owned(), |v| format!("{v:?}"));
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let lines = [
        ("listen", format!("{:?}", args.listen.to_string())),
        (
            "data-dir",
            format!("{:?}", args.data_dir.display().to_string()),
        ),
        ("in-memory", args.in_memory.to_string()),
        ("fsync", format!("{:?}", args.fsync.to_string())),
        ("repair", args.repair.to_string()),
        (
            "max-disk-bytes",
            opt(args.max_disk_bytes.map(|v| v.to_string())).replace('"', ""),
        ),
        ("segment-bytes", args.segment_bytes.to_string()),
        ("shutdown-grace", format!("{:?}", d(&args.shutdown_grace))),
        ("job-ttl", format!("{:?}", d(&args.job_ttl))),
        (
            "publish-idle-timeout",
            format!("{:?}", d(&args.publish_idle_timeout)),
        ),
        ("tls-cert", opt(path(&args.tls_cert))),
        ("tls-key", opt(path(&args.tls_key))),
        ("tls-client-ca", opt(path(&args.tls_client_ca))),
        (
            "metrics-listen",
            opt(args.metrics_listen.map(|a| a.to_string())),
        ),
        ("http-listen", opt(args.http_listen.map(|a| a.to_string()))),
        ("auth-file", opt(path(&args.auth_file))),
        (
            "allow-unauthenticated",
            args.allow_unauthenticated.to_string(),
        ),
        ("max-payload-bytes", args.max_payload_bytes.to_string()),
        ("max-memory-bytes", args.max_memory_bytes.to_string()),
        ("max-queues", args.max_queues.to_string()),
        ("max-schedules", args.max_schedules.to_string()),
        (
            "max-consumers-per-queue",
            args.max_consumers_per_queue.to_string(),
        ),
        ("max-consumers", args.max_consumers.to_string()),
        ("max-credit", args.max_credit.to_string()),
        ("max-batch", args.max_batch.to_string()),
        (
            "max-streams-per-connection",
            args.max_streams_per_connection.to_string(),
        ),
        (
            "node-id",
            opt(args.node_id.map(|v| v.to_string())).replace('"', ""),
        ),
        ("peers", opt(args.peers.as_ref().map(|p| p.to_string()))),
        ("cluster-secret-file", opt(path(&args.cluster_secret_file))),
        ("join", args.join.to_string()),
        ("snapshot-every", args.snapshot_every.to_string()),
    ];
    for (k, v) in lines {
        if v.starts_with('#') {
            out.push_str(&format!("{v} {k}\n"));
        } else {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    for q in queues {
        out.push_str(&format!(
            "\n[[queues]]\nname = {:?}\ndurable = {}\n",
            q.name, q.durable
        ));
        let fields = [
            ("capacity", q.capacity.map(|v| v.to_string())),
            ("order", q.order.as_ref().map(|v| format!("{v:?}"))),
            (
                "ack-deadline",
                q.ack_deadline.as_ref().map(|v| format!("{v:?}")),
            ),
            ("max-attempts", q.max_attempts.map(|v| v.to_string())),
            (
                "dead-letter",
                q.dead_letter.as_ref().map(|v| format!("{v:?}")),
            ),
            (
                "retry-initial",
                q.retry_initial.as_ref().map(|v| format!("{v:?}")),
            ),
            ("retry-max", q.retry_max.as_ref().map(|v| format!("{v:?}"))),
            (
                "retry-multiplier",
                q.retry_multiplier.map(|v| v.to_string()),
            ),
            (
                "key-window",
                q.key_window.as_ref().map(|v| format!("{v:?}")),
            ),
            ("max-in-flight", q.max_in_flight.map(|v| v.to_string())),
            ("rate", q.rate.as_ref().map(|v| format!("{v:?}"))),
            ("burst", q.burst.map(|v| v.to_string())),
            (
                "max-in-flight-per-group",
                q.max_in_flight_per_group.map(|v| v.to_string()),
            ),
            ("paused", q.paused.then(|| "true".to_owned())),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
    }
    for s in &declared.schedules {
        out.push_str(&format!(
            "\n[[schedules]]\nname = {:?}\nqueue = {:?}\n",
            s.name, s.queue
        ));
        let quoted = |v: &Option<String>| v.as_ref().map(|v| format!("{v:?}"));
        let fields = [
            ("cron", quoted(&s.cron)),
            ("every", quoted(&s.every)),
            ("tz", quoted(&s.tz)),
            ("missed", quoted(&s.missed)),
            ("payload", Some(format!("{:?}", s.payload))),
            (
                "priority",
                (s.priority != 0).then(|| s.priority.to_string()),
            ),
            ("group", quoted(&s.group)),
            ("job", quoted(&s.job)),
            ("paused", s.paused.then(|| "true".to_owned())),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        if !s.headers.is_empty() {
            let mut headers: Vec<_> = s.headers.iter().collect();
            headers.sort();
            let inline: Vec<String> = headers
                .iter()
                .map(|(k, v)| format!("{k:?} = {v:?}"))
                .collect();
            out.push_str(&format!("headers = {{ {} }}\n", inline.join(", ")));
        }
    }
    out
}

/// The proto options of a declared queue; errors name the queue and key.
pub fn queue_options(q: &QueueDecl) -> Result<sluice_proto::v1::QueueOptions, String> {
    use sluice_proto::v1::{QueueOptions, QueueOrder};
    let ms = |key: &str, v: &Option<String>| -> Result<Option<u64>, String> {
        v.as_ref()
            .map(|s| {
                humantime::parse_duration(s)
                    .map(|d| d.as_millis() as u64)
                    .map_err(|e| format!("queues.{}.{key}: {e}", q.name))
            })
            .transpose()
    };
    let order = match q.order.as_deref() {
        None | Some("fifo") => QueueOrder::Fifo,
        Some("lifo") => QueueOrder::Lifo,
        Some("priority") => QueueOrder::Priority,
        Some(o) => {
            return Err(format!(
                "queues.{}.order: {o:?} is not fifo, lifo or priority",
                q.name
            ));
        }
    };
    Ok(QueueOptions {
        capacity: q.capacity.unwrap_or(0),
        order: order as i32,
        durable: q.durable,
        ack_deadline_ms: ms("ack-deadline", &q.ack_deadline)?.unwrap_or(0),
        max_attempts: q.max_attempts,
        dead_letter: q.dead_letter.clone().unwrap_or_default(),
        retry_initial_ms: ms("retry-initial", &q.retry_initial)?,
        retry_max_ms: ms("retry-max", &q.retry_max)?.unwrap_or(0),
        retry_multiplier: q.retry_multiplier.unwrap_or(0.0),
        idempotency_window_ms: ms("key-window", &q.key_window)?.unwrap_or(0),
        max_in_flight: q.max_in_flight.unwrap_or(0),
        rate_limit: match &q.rate {
            None => None,
            Some(r) => {
                let (tasks, per_ms) =
                    parse_rate(r).map_err(|e| format!("queues.{}.rate: {e}", q.name))?;
                Some(sluice_proto::v1::RateLimit {
                    tasks,
                    per_ms,
                    burst: q.burst.unwrap_or(0),
                })
            }
        },
        max_in_flight_per_group: q.max_in_flight_per_group.unwrap_or(0),
        paused: q.paused,
    })
}
