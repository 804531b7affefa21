//! `sluice get`: take one task, print it, ack it.

use std::time::Duration;

use clap::Args;
use sluice_client::proto::SettleErrorCode;
use sluice_client::{Client, DeliveryExt};

use super::exit::Failure;
use super::{json, parse, print_json, write_stdout};

/// Take one task from a queue.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Queue name.
    queue: String,
    /// Wait this long for a task when the queue is empty (at most 20m).
    #[arg(long, value_parser = parse::duration, default_value = "0", value_name = "DURATION")]
    wait: Duration,
    /// Do not ack: leave the lease to expire, after which the task is
    /// delivered again (to test redelivery).
    #[arg(long)]
    no_ack: bool,
    /// Write the payload's exact bytes, without the line break added after
    /// it.
    #[arg(long)]
    raw: bool,
}

impl GetArgs {
    /// Checks what clap could not, before any network traffic.
    pub fn check(&self, as_json: bool) -> Result<(), Failure> {
        if self.raw && as_json {
            return Err(Failure::Usage(
                "--raw writes the bare payload; it does not go with --json".into(),
            ));
        }
        Ok(())
    }
}

/// Runs the command: the payload and a line break (or its exact bytes with
/// `--raw`, or with `json` the task as an object) on stdout, then the ack.
/// The line break is always added, even after a payload that ends in one,
/// so removing one gives the payload back: what `$(sluice get q)` does.
/// The ack comes only after stdout took the output, so a failed write
/// leaves the task to be delivered again.
pub async fn run(client: &Client, args: GetArgs, as_json: bool) -> Result<(), Failure> {
    let deliveries = client.get(&args.queue, args.wait, 1).await?;
    let Some(delivery) = deliveries.into_iter().next() else {
        return Err(Failure::QueueEmpty);
    };
    if as_json {
        print_json(&json::delivery(&delivery))?;
    } else {
        let payload = delivery
            .task
            .as_ref()
            .map(|t| t.payload.as_ref())
            .unwrap_or_default();
        if args.raw {
            write_stdout(payload)?;
        } else {
            // One write: a reader of a pipe never sees the payload without
            // its line.
            let mut line = Vec::with_capacity(payload.len() + 1);
            line.extend_from_slice(payload);
            line.push(b'\n');
            write_stdout(&line)?;
        }
    }
    if args.no_ack {
        return Ok(());
    }
    let refused = client.ack(&args.queue, vec![delivery.ack_item()]).await?;
    match refused.into_iter().next() {
        None => Ok(()),
        Some(e) => Err(Failure::Refused(format!(
            "error: ack of task {} refused: {} ({})",
            delivery.lease().task_id,
            e.message,
            settle_code_name(e.code)
        ))),
    }
}

/// "STALE_LEASE" for `SETTLE_ERROR_CODE_STALE_LEASE`.
fn settle_code_name(code: i32) -> String {
    match SettleErrorCode::try_from(code) {
        Ok(c) => c
            .as_str_name()
            .trim_start_matches("SETTLE_ERROR_CODE_")
            .to_owned(),
        Err(_) => code.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_codes_are_short() {
        assert_eq!(
            settle_code_name(SettleErrorCode::StaleLease as i32),
            "STALE_LEASE"
        );
        assert_eq!(settle_code_name(42), "42");
    }
}
