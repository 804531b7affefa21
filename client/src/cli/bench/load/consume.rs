//! The consumers' side of the load: which queues each consumer serves,
//! its Consume stream, and the loop that acks every delivery and records
//! its latency from the payload's header.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use sluice_client::Client;
use sluice_client::proto::{AckItem, ConsumeRequest, LeaseRef, Subscribe};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{BenchArgs, Record, Shared, TickDelivery};
use crate::cli::exit::Failure;

/// Which queues consumer `c` serves: its share when there are more queues
/// than consumers, otherwise one queue each, several consumers per queue.
pub(super) fn serves(c: u32, q: u32, args: &BenchArgs) -> bool {
    if args.queues >= args.consumers {
        q % args.consumers == c
    } else {
        q == c % args.queues
    }
}

pub(super) fn opened(
    r: Result<Result<Stream, Failure>, tokio::task::JoinError>,
) -> Result<Stream, Failure> {
    r.map_err(|e| Failure::Refused(format!("subscribe task failed: {e}")))?
}

pub(super) fn header(p: &[u8]) -> Option<(u64, u32, u64)> {
    let t = u64::from_le_bytes(p.get(0..8)?.try_into().ok()?);
    let producer = u32::from_le_bytes(p.get(8..12)?.try_into().ok()?);
    let seq = u64::from_le_bytes(p.get(12..20)?.try_into().ok()?);
    Some((t, producer, seq))
}

pub(super) struct Stream {
    tx: mpsc::Sender<ConsumeRequest>,
    rx: tonic::Streaming<sluice_client::proto::ConsumeResponse>,
}

pub(super) async fn subscribe(
    client: &Client,
    queue: &str,
    c: u32,
    credit: u32,
) -> Result<Stream, Failure> {
    let (tx, rx) = mpsc::channel(64);
    let first = ConsumeRequest {
        subscribe: Some(Subscribe {
            queue: queue.to_owned(),
            consumer_name: format!("bench-{c}"),
        }),
        credit,
        ..Default::default()
    };
    let refused = |m: String| Failure::Refused(format!("subscribing to {queue}: {m}"));
    tx.send(first)
        .await
        .map_err(|_| refused("stream closed".into()))?;
    let mut rx = client
        .raw()
        .consume(ReceiverStream::new(rx))
        .await
        .map_err(|s| refused(s.message().to_owned()))?
        .into_inner();
    match rx.message().await {
        Ok(Some(r)) if r.subscribed.is_some() => Ok(Stream { tx, rx }),
        Ok(_) => Err(refused("no confirmation".into())),
        Err(s) => Err(refused(s.message().to_owned())),
    }
}

/// Takes deliveries, acks each one, and grants one credit per task acked,
/// in one frame per frame received.
pub(super) async fn consume(
    mut s: Stream,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<Record, String> {
    let mut rec = Record::new();
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            m = s.rx.message() => match m {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    if stop.is_cancelled() || shared.producers_done.load(Ordering::SeqCst) {
                        break;
                    }
                    return Err(e.message().to_owned());
                }
            },
        };
        if frame.deliveries.is_empty() {
            continue;
        }
        let now = shared.micros();
        let mut acks = Vec::with_capacity(frame.deliveries.len());
        for d in &frame.deliveries {
            let Some(task) = &d.task else { continue };
            if let Some((t, producer, seq)) = header(&task.payload) {
                // Backlog tasks (t = 0) were queued before the clock started.
                if t > 0 {
                    let _ = rec.delivery.record(now.saturating_sub(t).max(1));
                }
                rec.seen.insert(producer, seq);
            }
            if let (Some(schedule), Some(tick)) = (
                task.headers.get("x-sluice-schedule"),
                task.headers.get("x-sluice-tick"),
            ) {
                rec.ticks.push(TickDelivery {
                    schedule: schedule.clone(),
                    tick: tick.clone(),
                    task_id: task.id.clone(),
                    enqueued_at_unix_ms: task.enqueued_at_unix_ms,
                });
            }
            if d.attempt > 1 {
                rec.redeliveries += 1;
            }
            acks.push(AckItem {
                // On the stream that holds the lease, as the worker
                // runtime settles: no token needed.
                lease: Some(LeaseRef {
                    task_id: task.id.clone(),
                    attempt: d.attempt,
                    ..LeaseRef::default()
                }),
                result: Bytes::new(),
            });
        }
        let n = acks.len() as u32;
        let ack_time = shared.micros();
        for d in &frame.deliveries {
            if let Some((t, _, _)) = d.task.as_ref().and_then(|t| header(&t.payload))
                && t > 0
            {
                let _ = rec.ack.record(ack_time.saturating_sub(t).max(1));
            }
        }
        let reply = ConsumeRequest {
            acks,
            credit: n,
            ..Default::default()
        };
        if s.tx.send(reply).await.is_err() {
            break;
        }
        shared.acked.fetch_add(u64::from(n), Ordering::SeqCst);
    }
    Ok(rec)
}
