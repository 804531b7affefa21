//! `sluice queue create|list|show|update|pause|resume|delete|purge`: queue
//! administration.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use sluice_client::proto::{QueueInfo, QueueOptions, QueueOrder, RateLimit, UpdateQueueRequest};
use sluice_client::{Client, duration_ms};

use super::exit::Failure;
use super::parse::Rate;
use super::{human, json, parse, print, print_json};

/// Queue administration.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create a queue.
    ///
    /// Succeeds without change if it exists with the same options; fails
    /// (ALREADY_EXISTS) if it exists with other options.
    Create(CreateArgs),
    /// List every queue with its depth.
    List,
    /// Show a queue's options, counters, consumers, and its groups with
    /// ready tasks.
    Show {
        /// Queue name.
        name: String,
    },
    /// Change a queue's options while it runs; the options not given keep
    /// their value.
    ///
    /// Takes effect at once: a raised cap delivers, a raised capacity
    /// admits waiting producers; nothing already stored or leased is taken
    /// back. Order, --durable and --key-window are fixed at creation.
    Update(UpdateArgs),
    /// Stop delivering a queue's tasks until `queue resume`.
    ///
    /// Enqueues are still accepted; leases already out run their course.
    Pause {
        /// Queue name.
        name: String,
    },
    /// Deliver a paused queue's tasks again; also ends any throttle a
    /// nack put on the queue or its groups.
    Resume {
        /// Queue name.
        name: String,
    },
    /// Delete a queue and every task in it.
    Delete {
        /// Queue name.
        name: String,
        /// Only if no task is unfinished (ready, delayed or leased);
        /// FAILED_PRECONDITION otherwise.
        #[arg(long)]
        if_empty: bool,
    },
    /// Remove every ready and delayed task. Leased tasks stay with their
    /// consumers.
    Purge {
        /// Queue name.
        name: String,
    },
}

/// Options of `queue create`; unset ones take the broker's defaults.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Queue name: 1 to 128 characters from [A-Za-z0-9._-].
    name: String,
    /// Delivery order (default: fifo).
    #[arg(long, value_enum)]
    order: Option<Order>,
    /// Keep the queue and its tasks across broker restarts and crashes (in
    /// the broker's write-ahead log).
    #[arg(long)]
    durable: bool,
    /// How long after a keyed task is done its idempotency key still
    /// dedupes (broker default: 5m).
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    key_window: Option<Duration>,
    /// Create it paused: nothing is delivered until `queue resume`.
    #[arg(long)]
    paused: bool,
    #[command(flatten)]
    tunables: Tunables,
}

/// Options of `queue update`: the options to change.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Queue name.
    name: String,
    /// Drop tasks that failed for good instead of dead-lettering them.
    #[arg(long, conflicts_with = "dead_letter")]
    no_dead_letter: bool,
    #[command(flatten)]
    tunables: Tunables,
}

/// The options `queue create` sets and `queue update` changes, with the
/// same flags for both.
#[derive(Debug, Args)]
pub struct Tunables {
    /// How many tasks may wait in the queue, ready or delayed; producers
    /// wait (or fail with --no-wait) while it is full (broker default: 10000).
    #[arg(long, value_name = "N")]
    capacity: Option<u64>,
    /// Lease length: how long a consumer may hold a task before it is given
    /// to another, unless acked or extended (100ms to 24h) (broker default: 30s).
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    ack_deadline: Option<Duration>,
    /// Deliveries after which a failing task is dead-lettered instead of
    /// retried; 0 = retry forever (broker default: 5).
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// Queue that receives tasks that failed for good; without it they are
    /// dropped.
    #[arg(long, value_name = "QUEUE")]
    dead_letter: Option<String>,
    /// First wait before a failed task (nacked, or its lease expired) is
    /// ready again; 0 = at once (broker default: 1s).
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    retry_initial: Option<Duration>,
    /// Longest wait between retries (broker default: 5m).
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    retry_max: Option<Duration>,
    /// Factor between successive retry waits, 1.0 to 100.0 (broker
    /// default: 2).
    #[arg(long, value_name = "FACTOR")]
    retry_multiplier: Option<f64>,
    /// At most N of the queue's tasks leased at once, over all its
    /// consumers ("at most 50 calls in flight to this API"); 0 = no cap
    /// (the default).
    #[arg(long, value_name = "N")]
    max_in_flight: Option<u64>,
    /// Deliveries per period: N/s, N/m, N/h, or N per any duration (5/500ms);
    /// a bare N is per second; none = unlimited (the default). In `update`,
    /// --rate alone keeps the current --burst.
    #[arg(long, value_name = "N/PERIOD")]
    rate: Option<String>,
    /// With a rate: deliveries allowed at once after a quiet spell (default
    /// 1: evenly spaced). In `update`, --burst alone keeps the current rate.
    #[arg(long, value_name = "N")]
    burst: Option<u64>,
    /// At most N leased tasks per group (enqueue --group), so that one
    /// tenant cannot take every worker; 0 = no cap (the default).
    #[arg(long, value_name = "N")]
    max_in_flight_per_group: Option<u64>,
}

impl Tunables {
    /// `--rate`: None when not given, Some(None) for `none`.
    fn rate(&self) -> Result<Option<Option<Rate>>, Failure> {
        self.rate
            .as_deref()
            .map(parse::rate)
            .transpose()
            .map_err(Failure::Usage)
    }
}

/// A queue's delivery order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Order {
    /// First in, first out.
    Fifo,
    /// Last in, first out.
    Lifo,
    /// Lowest --priority first, ties first in first out.
    Priority,
}

impl From<Order> for QueueOrder {
    fn from(order: Order) -> QueueOrder {
        match order {
            Order::Fifo => QueueOrder::Fifo,
            Order::Lifo => QueueOrder::Lifo,
            Order::Priority => QueueOrder::Priority,
        }
    }
}

impl CreateArgs {
    /// The proto options: absent flags stay zero/unset, which the broker
    /// reads as "default".
    fn options(&self) -> Result<QueueOptions, Failure> {
        let t = &self.tunables;
        let rate_limit = match (t.rate()?, t.burst) {
            (Some(Some(rate)), burst) => Some(RateLimit {
                tasks: rate.tasks,
                per_ms: rate.per_ms,
                burst: burst.unwrap_or(0),
            }),
            (Some(None) | None, Some(_)) => {
                return Err(Failure::Usage("--burst goes with a --rate".into()));
            }
            (Some(None) | None, None) => None,
        };
        let mut options = QueueOptions {
            capacity: t.capacity.unwrap_or(0),
            durable: self.durable,
            ack_deadline_ms: t.ack_deadline.map_or(0, duration_ms),
            max_attempts: t.max_attempts,
            dead_letter: t.dead_letter.clone().unwrap_or_default(),
            // Zero is meaningful here (no backoff), so it is sent as set;
            // an absent flag leaves the field unset for the default.
            retry_initial_ms: t.retry_initial.map(duration_ms),
            retry_max_ms: t.retry_max.map_or(0, duration_ms),
            retry_multiplier: t.retry_multiplier.unwrap_or(0.0),
            idempotency_window_ms: self.key_window.map_or(0, duration_ms),
            max_in_flight: t.max_in_flight.unwrap_or(0),
            rate_limit,
            max_in_flight_per_group: t.max_in_flight_per_group.unwrap_or(0),
            paused: self.paused,
            ..QueueOptions::default()
        };
        if let Some(order) = self.order {
            options.set_order(order.into());
        }
        Ok(options)
    }
}

/// A checked `queue update`: the request, and what its rate limit still
/// needs from the queue's current one.
#[derive(Debug, PartialEq)]
struct Update {
    request: UpdateQueueRequest,
    rate: RateChange,
}

/// How `--rate` and `--burst` change the rate limit. UpdateQueue replaces
/// the whole limit, so a flag given alone is sent with the other half of
/// the current limit.
#[derive(Debug, PartialEq)]
enum RateChange {
    /// Neither flag, or both, or `--rate none`: the request says it all.
    Complete,
    /// `--rate` alone: keep the current burst.
    KeepBurst,
    /// `--burst` alone: keep the current rate.
    KeepRate,
}

impl UpdateArgs {
    /// The request (only the options given are set), before any network
    /// traffic: bad values and an empty update are usage errors.
    fn update(&self) -> Result<Update, Failure> {
        let t = &self.tunables;
        let (rate_limit, rate) = match (t.rate()?, t.burst) {
            (None, None) => (None, RateChange::Complete),
            // tasks 0 removes the limit.
            (Some(None), None) => (Some(RateLimit::default()), RateChange::Complete),
            (Some(None), Some(_)) => {
                return Err(Failure::Usage(
                    "--burst does not go with --rate none (no limit, no burst)".into(),
                ));
            }
            (Some(Some(r)), burst) => (
                Some(RateLimit {
                    tasks: r.tasks,
                    per_ms: r.per_ms,
                    burst: burst.unwrap_or(0),
                }),
                match burst {
                    Some(_) => RateChange::Complete,
                    None => RateChange::KeepBurst,
                },
            ),
            (None, Some(burst)) => (
                Some(RateLimit {
                    burst,
                    ..RateLimit::default()
                }),
                RateChange::KeepRate,
            ),
        };
        let dead_letter = match (&t.dead_letter, self.no_dead_letter) {
            (Some(q), _) => Some(q.clone()),
            (None, true) => Some(String::new()),
            (None, false) => None,
        };
        let request = UpdateQueueRequest {
            name: self.name.clone(),
            capacity: t.capacity,
            ack_deadline_ms: t.ack_deadline.map(duration_ms),
            max_attempts: t.max_attempts,
            dead_letter,
            retry_initial_ms: t.retry_initial.map(duration_ms),
            retry_max_ms: t.retry_max.map(duration_ms),
            retry_multiplier: t.retry_multiplier,
            max_in_flight: t.max_in_flight,
            rate_limit,
            max_in_flight_per_group: t.max_in_flight_per_group,
            paused: None,
        };
        let nothing = UpdateQueueRequest {
            name: self.name.clone(),
            ..UpdateQueueRequest::default()
        };
        if request == nothing {
            return Err(Failure::Usage(
                "nothing to change: give at least one option, e.g. --capacity N or \
                 --max-in-flight N (sluice queue update --help lists them)"
                    .into(),
            ));
        }
        Ok(Update { request, rate })
    }
}

impl QueueCommand {
    /// Checks what clap could not (rates, an empty update), before any
    /// network traffic.
    pub fn check(&self) -> Result<(), Failure> {
        match self {
            QueueCommand::Create(args) => args.options().map(drop),
            QueueCommand::Update(args) => args.update().map(drop),
            _ => Ok(()),
        }
    }
}

/// Fills in the half of the rate limit `queue update` was not given from
/// the queue's current one (read just before: a change made in between
/// by someone else is overwritten).
async fn complete_rate(client: &Client, update: &mut Update) -> Result<(), Failure> {
    if update.rate == RateChange::Complete {
        return Ok(());
    }
    let name = &update.request.name;
    let current = client
        .get_queue(name)
        .await?
        .options
        .and_then(|o| o.rate_limit)
        .filter(|r| r.tasks > 0);
    let Some(limit) = update.request.rate_limit.as_mut() else {
        return Ok(());
    };
    match (&update.rate, current) {
        (RateChange::KeepBurst, Some(current)) => limit.burst = current.burst,
        // No limit yet: the new one starts with the default burst.
        (RateChange::KeepBurst, None) => {}
        (RateChange::KeepRate, Some(current)) => {
            limit.tasks = current.tasks;
            limit.per_ms = current.per_ms;
        }
        (RateChange::KeepRate, None) => {
            return Err(Failure::Usage(format!(
                "queue {name} has no rate limit to give a --burst: set one with --rate too"
            )));
        }
        (RateChange::Complete, _) => {}
    }
    Ok(())
}

/// Prints a queue whose options just changed: `human`, or with `--json`
/// the queue (UpdateQueueResponse's shape).
fn print_updated(queue: &QueueInfo, human: String, as_json: bool) -> Result<(), Failure> {
    if as_json {
        return print_json(&json!({ "queue": json::queue(queue) }));
    }
    print(&human)
}

/// Runs a queue command.
pub async fn run(client: &Client, command: QueueCommand, as_json: bool) -> Result<(), Failure> {
    match command {
        QueueCommand::Create(args) => {
            let answer = client.create_queue(&args.name, args.options()?).await?;
            if as_json {
                return print_json(&json!({
                    "created": answer.created,
                    "queue": json::queue(&answer.queue),
                }));
            }
            if answer.created {
                print(&format!("created queue {}\n", answer.queue.name))
            } else {
                print(&format!(
                    "queue {} already exists with the same options\n",
                    answer.queue.name
                ))
            }
        }
        QueueCommand::List => {
            let queues = client.list_queues().await?;
            if as_json {
                let list: Vec<_> = queues.iter().map(json::queue).collect();
                return print_json(&list.into());
            }
            print(&human::queue_list(&queues))
        }
        QueueCommand::Show { name } => {
            let queue = client.get_queue(&name).await?;
            if as_json {
                return print_json(&json::queue(&queue));
            }
            print(&human::queue_show(&queue))
        }
        QueueCommand::Update(args) => {
            let mut update = args.update()?;
            complete_rate(client, &mut update).await?;
            let queue = client.update_queue(update.request).await?;
            print_updated(&queue, human::queue_updated(&queue), as_json)
        }
        QueueCommand::Pause { name } => {
            let queue = client.pause_queue(&name).await?;
            let text = format!(
                "paused queue {name}: nothing is delivered until `sluice queue resume {name}`\n"
            );
            print_updated(&queue, text, as_json)
        }
        QueueCommand::Resume { name } => {
            let queue = client.resume_queue(&name).await?;
            print_updated(&queue, format!("resumed queue {name}\n"), as_json)
        }
        QueueCommand::Delete { name, if_empty } => {
            let discarded = client.delete_queue(&name, if_empty).await?;
            if as_json {
                return print_json(&json!({ "queue": name, "discarded": discarded }));
            }
            match discarded {
                0 => print(&format!("deleted queue {name}\n")),
                n => print(&format!(
                    "deleted queue {name} ({} discarded)\n",
                    human::tasks(n)
                )),
            }
        }
        QueueCommand::Purge { name } => {
            let purged = client.purge_queue(&name).await?;
            if as_json {
                return print_json(&json!({ "queue": name, "purged": purged }));
            }
            print(&format!(
                "purged {} from queue {name}\n",
                human::tasks(purged)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: CreateArgs,
    }

    #[derive(Debug, Parser)]
    struct UpdateCli {
        #[command(flatten)]
        args: UpdateArgs,
    }

    fn try_options(argv: &[&str]) -> Result<QueueOptions, Failure> {
        let argv = std::iter::once("create").chain(argv.iter().copied());
        Cli::try_parse_from(argv)
            .expect("clap accepts")
            .args
            .options()
    }

    fn options(argv: &[&str]) -> QueueOptions {
        try_options(argv).expect("valid")
    }

    fn update(argv: &[&str]) -> Result<Update, Failure> {
        let argv = std::iter::once("update").chain(argv.iter().copied());
        UpdateCli::try_parse_from(argv)
            .expect("clap accepts")
            .args
            .update()
    }

    fn request(argv: &[&str]) -> UpdateQueueRequest {
        update(argv).expect("valid").request
    }

    /// A usage error's line: one line, exit 2.
    fn usage_line(f: Failure) -> String {
        assert_eq!(f.exit() as u8, 2, "{f}");
        let line = f.line();
        assert!(!line.contains('\n'));
        line
    }

    #[test]
    fn absent_flags_mean_broker_defaults() {
        assert_eq!(options(&["q"]), QueueOptions::default());
    }

    #[test]
    fn flags_map_to_options() {
        let o = options(&[
            "q",
            "--capacity",
            "10",
            "--order",
            "priority",
            "--ack-deadline",
            "500ms",
            "--max-attempts",
            "0",
            "--dead-letter",
            "dlq",
        ]);
        assert_eq!(o.capacity, 10);
        assert_eq!(o.order(), QueueOrder::Priority);
        assert_eq!(o.ack_deadline_ms, 500);
        // 0 is a real value (unlimited), distinct from "not given".
        assert_eq!(o.max_attempts, Some(0));
        assert_eq!(o.dead_letter, "dlq");
        assert!(!o.durable);
        assert!(!o.paused);
        assert_eq!(o.rate_limit, None);
    }

    #[test]
    fn flow_control_flags_map_to_options() {
        let o = options(&[
            "q",
            "--max-in-flight",
            "50",
            "--rate",
            "10/500ms",
            "--burst",
            "20",
            "--max-in-flight-per-group",
            "5",
            "--paused",
        ]);
        assert_eq!(o.max_in_flight, 50);
        assert_eq!(
            o.rate_limit,
            Some(RateLimit {
                tasks: 10,
                per_ms: 500,
                burst: 20
            })
        );
        assert_eq!(o.max_in_flight_per_group, 5);
        assert!(o.paused);
        // A bare count is per second; no --burst is the broker's default.
        let o = options(&["q", "--rate", "100"]);
        assert_eq!(
            o.rate_limit,
            Some(RateLimit {
                tasks: 100,
                per_ms: 1000,
                burst: 0
            })
        );
        assert_eq!(options(&["q", "--rate", "none"]).rate_limit, None);
    }

    #[test]
    fn bad_rates_and_a_lone_burst_are_one_line_usage_errors() {
        for (argv, says) in [
            (&["q", "--rate", "0/s"][..], "invalid rate \"0/s\""),
            (&["q", "--rate", "abc"], "invalid rate \"abc\""),
            (&["q", "--burst", "5"], "--burst goes with a --rate"),
            (&["q", "--rate", "none", "--burst", "5"], "--burst"),
        ] {
            let line = usage_line(try_options(argv).expect_err("refused"));
            assert!(line.starts_with("error: "), "{line}");
            assert!(line.contains(says), "{argv:?}: {line}");
        }
    }

    #[test]
    fn bad_order_is_a_usage_error() {
        let err = Cli::try_parse_from(["create", "q", "--order", "random"]).expect_err("bad");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn update_sets_only_what_is_given() {
        let r = request(&["q", "--capacity", "0", "--max-attempts", "0"]);
        assert_eq!(
            r,
            UpdateQueueRequest {
                name: "q".into(),
                capacity: Some(0),
                max_attempts: Some(0),
                ..UpdateQueueRequest::default()
            }
        );
        let r = request(&[
            "q",
            "--ack-deadline",
            "10s",
            "--retry-initial",
            "0",
            "--retry-max",
            "1m",
            "--retry-multiplier",
            "1.5",
            "--max-in-flight",
            "0",
            "--max-in-flight-per-group",
            "3",
            "--dead-letter",
            "dlq",
        ]);
        assert_eq!(r.ack_deadline_ms, Some(10_000));
        assert_eq!(r.retry_initial_ms, Some(0), "0 = no backoff, sent as set");
        assert_eq!(r.retry_max_ms, Some(60_000));
        assert_eq!(r.retry_multiplier, Some(1.5));
        assert_eq!(r.max_in_flight, Some(0), "0 = no cap, sent as set");
        assert_eq!(r.max_in_flight_per_group, Some(3));
        assert_eq!(r.dead_letter.as_deref(), Some("dlq"));
        assert_eq!(r.rate_limit, None);
        assert_eq!(r.paused, None, "pause and resume have their commands");
        assert_eq!(
            request(&["q", "--no-dead-letter"]).dead_letter.as_deref(),
            Some("")
        );
        assert!(
            UpdateCli::try_parse_from(["update", "q", "--dead-letter", "d", "--no-dead-letter"])
                .is_err()
        );
    }

    #[test]
    fn update_rate_flags() {
        // --rate none: tasks 0 removes the limit.
        let u = update(&["q", "--rate", "none"]).expect("valid");
        assert_eq!(u.request.rate_limit, Some(RateLimit::default()));
        assert_eq!(u.rate, RateChange::Complete);
        // Both: sent as given.
        let u = update(&["q", "--rate", "5/m", "--burst", "2"]).expect("valid");
        assert_eq!(
            u.request.rate_limit,
            Some(RateLimit {
                tasks: 5,
                per_ms: 60_000,
                burst: 2
            })
        );
        assert_eq!(u.rate, RateChange::Complete);
        // One alone: the other half comes from the queue.
        let u = update(&["q", "--rate", "5/s"]).expect("valid");
        assert_eq!(u.rate, RateChange::KeepBurst);
        let u = update(&["q", "--burst", "9"]).expect("valid");
        assert_eq!(u.rate, RateChange::KeepRate);
        assert_eq!(u.request.rate_limit.map(|r| r.burst), Some(9));
    }

    #[test]
    fn update_without_options_or_with_bad_ones_is_refused() {
        let line = usage_line(update(&["q"]).expect_err("nothing to change"));
        assert!(line.contains("nothing to change"), "{line}");
        for argv in [
            &["q", "--rate", "0/s"][..],
            &["q", "--rate", "abc"],
            &["q", "--rate", "none", "--burst", "3"],
        ] {
            usage_line(update(argv).expect_err("refused"));
        }
    }

    #[test]
    fn subcommands_parse_through_the_whole_command_line() {
        use crate::cli::{Args, Command};
        let parse = |argv: &[&str]| {
            let argv = ["sluice", "queue"].into_iter().chain(argv.iter().copied());
            match Args::try_parse_from(argv).expect("clap accepts").command {
                Command::Queue(q) => q,
                other => panic!("{other:?}"),
            }
        };
        assert!(matches!(parse(&["pause", "q"]), QueueCommand::Pause { name } if name == "q"));
        assert!(matches!(parse(&["resume", "q"]), QueueCommand::Resume { name } if name == "q"));
        let cmd = parse(&["update", "q", "--rate", "abc"]);
        // clap takes any text; the check before connecting refuses it.
        assert!(cmd.check().is_err());
        assert!(
            parse(&["update", "q", "--max-in-flight", "4"])
                .check()
                .is_ok()
        );
        assert!(parse(&["create", "q", "--rate", "0/s"]).check().is_err());
    }
}
