//! `sluice queue create|list|show|delete|purge`: queue administration.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use sluice_client::proto::{QueueOptions, QueueOrder};
use sluice_client::{Client, duration_ms};

use super::exit::Failure;
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
    /// Show a queue's options, counters and consumers.
    Show {
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
    /// How many tasks may wait in the queue, ready or delayed; producers
    /// wait (or fail with --no-wait) while it is full (broker default: 10000).
    #[arg(long, value_name = "N")]
    capacity: Option<u64>,
    /// Delivery order (default: fifo).
    #[arg(long, value_enum)]
    order: Option<Order>,
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
    /// Keep the queue and its tasks across broker restarts and crashes (in
    /// the broker's write-ahead log).
    #[arg(long)]
    durable: bool,
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
    /// How long after a keyed task is done its idempotency key still
    /// dedupes (broker default: 5m).
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    key_window: Option<Duration>,
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
    fn options(&self) -> QueueOptions {
        let mut options = QueueOptions {
            capacity: self.capacity.unwrap_or(0),
            durable: self.durable,
            ack_deadline_ms: self.ack_deadline.map_or(0, duration_ms),
            max_attempts: self.max_attempts,
            dead_letter: self.dead_letter.clone().unwrap_or_default(),
            // Zero is meaningful here (no backoff), so it is sent as set;
            // an absent flag leaves the field unset for the default.
            retry_initial_ms: self.retry_initial.map(|d| d.as_millis() as u64),
            retry_max_ms: self.retry_max.map_or(0, duration_ms),
            retry_multiplier: self.retry_multiplier.unwrap_or(0.0),
            idempotency_window_ms: self.key_window.map_or(0, duration_ms),
            ..QueueOptions::default()
        };
        if let Some(order) = self.order {
            options.set_order(order.into());
        }
        options
    }
}

/// Runs a queue command.
pub async fn run(client: &Client, command: QueueCommand, as_json: bool) -> Result<(), Failure> {
    match command {
        QueueCommand::Create(args) => {
            let answer = client.create_queue(&args.name, args.options()).await?;
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

    fn options(argv: &[&str]) -> QueueOptions {
        let argv = std::iter::once("create").chain(argv.iter().copied());
        Cli::try_parse_from(argv)
            .expect("clap accepts")
            .args
            .options()
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
    }

    #[test]
    fn bad_order_is_a_usage_error() {
        let err = Cli::try_parse_from(["create", "q", "--order", "random"]).expect_err("bad");
        assert_eq!(err.exit_code(), 2);
    }
}
