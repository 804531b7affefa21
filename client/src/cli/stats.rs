//! `sluice stats`: depths, counters and consumers of one queue or all.

use clap::Args;
use sluice_client::Client;

use super::exit::Failure;
use super::{human, json, print, print_json};

/// Show queue statistics.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Queue name; all queues when omitted.
    queue: Option<String>,
}

/// Runs the command. `--json` gives each queue's whole `QueueInfo`: an
/// object for one queue, an array for all.
pub async fn run(client: &Client, args: StatsArgs, as_json: bool) -> Result<(), Failure> {
    if let Some(name) = args.queue {
        let queue = client.get_queue(&name).await?;
        if as_json {
            return print_json(&json::queue(&queue));
        }
        return print(&human::queue_stats(&queue));
    }
    let queues = client.list_queues().await?;
    if as_json {
        let list: Vec<_> = queues.iter().map(json::queue).collect();
        return print_json(&list.into());
    }
    if queues.is_empty() {
        return print("no queues\n");
    }
    let blocks: Vec<String> = queues.iter().map(human::queue_stats).collect();
    print(&blocks.join("\n"))
}
