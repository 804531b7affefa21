//! `sluice join`: wait until a queue has no unfinished task.

use std::time::Duration;

use clap::Args;
use serde_json::json;
use sluice_client::{Client, Code};

use super::exit::Failure;
use super::{human, parse, print, print_json};

/// Wait until a queue is drained.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Queue name.
    queue: String,
    /// Give up after this long ("timed out: N tasks still unfinished",
    /// exit 1). Default: wait as long as it takes.
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    timeout: Option<Duration>,
}

/// Runs the command.
pub async fn run(client: &Client, args: JoinArgs, as_json: bool) -> Result<(), Failure> {
    let queue = &args.queue;
    match client.join(queue, args.timeout).await {
        Ok(acked_total) if as_json => {
            print_json(&json!({ "queue": queue, "acked_total": acked_total }))
        }
        Ok(_) => print(&format!("queue {queue} is drained\n")),
        Err(e) if e.code() == Code::DeadlineExceeded && args.timeout.is_some() => {
            // Say how far from drained it is; the count is a moment later
            // than the deadline, which is close enough for a person.
            let message = match client.get_queue(queue).await {
                Ok(info) => format!(
                    "timed out: {} still unfinished in queue {queue:?}",
                    human::tasks(info.stats.map_or(0, |s| s.unfinished))
                ),
                Err(_) => format!("timed out waiting for queue {queue:?} to drain"),
            };
            Err(Failure::TimedOut(message))
        }
        Err(e) => Err(e.into()),
    }
}
