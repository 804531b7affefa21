//! `sluice dlq redrive`: move dead-lettered tasks back to work.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use sluice_client::proto::{Delivery, EnqueueMode, NewTask};
use sluice_client::{Client, DeliveryExt};

use super::exit::Failure;
use super::{print, print_json};

/// Header the broker puts on a dead letter naming the queue it died in.
const FROM: &str = "x-sluice-dead-from";

/// Dead letter queue commands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Move tasks from a dead letter queue back to the queue they died in
    /// (or to --to), as new tasks: attempts start again, the x-sluice-dead-*
    /// headers are dropped. Each task is enqueued first and removed from the
    /// dead letter queue after, so an interruption can leave a copy in both,
    /// never in neither.
    Redrive(RedriveArgs),
}

#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// The dead letter queue.
    dlq: String,
    /// Send every task here instead of to the queue it came from.
    #[arg(long, value_name = "QUEUE")]
    to: Option<String>,
    /// Move at most this many tasks (default: all that are ready).
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

pub async fn run(client: &Client, cmd: DlqCommand, as_json: bool) -> Result<(), Failure> {
    let DlqCommand::Redrive(args) = cmd;
    let mut moved = 0u64;
    let mut per_queue: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let want = args.limit.map_or(100, |l| l.saturating_sub(moved).min(100));
        if want == 0 {
            break;
        }
        let batch = client
            .get(&args.dlq, std::time::Duration::ZERO, want as u32)
            .await?;
        if batch.is_empty() {
            break;
        }
        // Group by destination so each gets one enqueue.
        let mut groups: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
        for d in batch {
            let dest = match (&args.to, d.task.as_ref().and_then(|t| t.headers.get(FROM))) {
                (Some(to), _) => to.clone(),
                (None, Some(from)) => from.clone(),
                (None, None) => {
                    return Err(Failure::Usage(format!(
                        "task {} in {} has no {FROM} header: name a queue with --to",
                        d.lease().task_id,
                        args.dlq
                    )));
                }
            };
            groups.entry(dest).or_default().push(d);
        }
        for (dest, deliveries) in groups {
            let tasks = deliveries
                .iter()
                .filter_map(|d| d.task.as_ref())
                .map(|t| NewTask {
                    payload: t.payload.clone(),
                    headers: t
                        .headers
                        .iter()
                        .filter(|(k, _)| !k.starts_with("x-sluice-dead-"))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    priority: t.priority,
                    // Back in its tenant's group, under that group's cap.
                    group: t.group.clone(),
                    ..NewTask::default()
                })
                .collect();
            client
                .enqueue(&dest, tasks, EnqueueMode::Wait, None)
                .await?;
            let acks = deliveries.iter().map(DeliveryExt::ack_item).collect();
            client.ack(&args.dlq, acks).await?;
            moved += deliveries.len() as u64;
            *per_queue.entry(dest).or_default() += deliveries.len() as u64;
        }
    }
    if as_json {
        return print_json(&serde_json::json!({ "moved": moved, "to": per_queue }));
    }
    let mut text = format!("redrove {moved} tasks from {}\n", args.dlq);
    for (q, n) in per_queue {
        text.push_str(&format!("  {n} to {q}\n"));
    }
    print(&text)
}
