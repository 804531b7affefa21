//! The producer's stream: `Publish` is `await queue.put()` across the
//! network, with TCP's window for flow control.
//!
//! The broker reserves capacity for the producer and tells it how much
//! (credit); the producer sends at most that; the broker stores what it
//! sent — never refused for space — and confirms it (after the log write
//! for durable queues). New credit comes as space frees, shared with other
//! producers on the queue, and never takes a producer past its window of
//! unconfirmed tasks. A producer with no credit simply waits.

use std::sync::Arc;

use sluice_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};
use tracing::Instrument;

use crate::engine::{NewTask, PublishError, PublisherId, TaskId};
use crate::error::Error;
use crate::registry::{Broker, QueueHandle};
use crate::validate::{self, Limits};

/// Credit a producer holds when its first frame asks for none.
pub const DEFAULT_WINDOW: u64 = 1000;

type Out = mpsc::Sender<Result<pb::PublishResponse, Status>>;

/// Reads the first frame (the queue), registers the producer and starts
/// its session.
pub async fn start(
    broker: Broker,
    limits: Limits,
    access: crate::auth::Access,
    req: Request<Streaming<pb::PublishRequest>>,
) -> Result<ReceiverStream<Result<pb::PublishResponse, Status>>, Status> {
    let mut inbound = req.into_inner();
    let Some(first) = inbound.message().await? else {
        return Err(Error::FailedPrecondition(
            "the Publish stream ended before its first frame".into(),
        )
        .into());
    };
    access.require(crate::auth::Role::Produce, &first.queue)?;
    validate::queue_name(&first.queue)?;
    let q = broker.queue(&first.queue)?;
    if broker.shutdown().is_cancelled() {
        return Err(Error::ShuttingDown.into());
    }
    let window = match first.window {
        0 => DEFAULT_WINDOW,
        w => u64::from(w),
    };
    let id = broker.publisher_id();
    let grants = broker.apply(&q, |sh, now, fx| {
        if sh.is_deleted() {
            return None;
        }
        let rx = sh.add_publisher(id);
        sh.state.add_publisher(now, id, window, fx);
        Some(rx)
    });
    let Some(grants) = grants else {
        return Err(Error::QueueDeleted(q.name().to_owned()).into());
    };
    let (tx, rx) = mpsc::channel(16);
    let span = tracing::info_span!("publish", queue = %q.name(), publisher = id.0);
    let session = Session {
        broker,
        limits,
        q,
        id,
    };
    tokio::spawn(session.run(first, inbound, grants, tx).instrument(span));
    Ok(ReceiverStream::new(rx))
}

struct Session {
    broker: Broker,
    limits: Limits,
    q: Arc<QueueHandle>,
    id: PublisherId,
}

impl Session {
    async fn run(
        self,
        first: pb::PublishRequest,
        mut inbound: Streaming<pb::PublishRequest>,
        mut grants: mpsc::UnboundedReceiver<u64>,
        out: Out,
    ) {
        let mut frame = Some(first);
        let shutdown = self.broker.shutdown().clone();
        let idle = self.limits.publish_idle;
        // Since when the producer has sent nothing.
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            if let Some(f) = frame.take()
                && !f.tasks.is_empty()
            {
                quiet_since = tokio::time::Instant::now();
                match self.store(f.tasks).await {
                    Ok(resp) => {
                        if out.send(Ok(resp)).await.is_err() {
                            break;
                        }
                    }
                    Err(status) => {
                        let _ = out.send(Err(status)).await;
                        break;
                    }
                }
            }
            tokio::select! {
                biased;
                _ = self.q.deleted().cancelled() => {
                    let _ = out.send(Err(Error::QueueDeleted(self.q.name().to_owned()).into())).await;
                    break;
                }
                _ = shutdown.cancelled() => {
                    let _ = out.send(Err(Error::ShuttingDown.into())).await;
                    break;
                }
                Some(mut credit) = grants.recv() => {
                    while let Ok(more) = grants.try_recv() {
                        credit += more;
                    }
                    let resp = pb::PublishResponse { credit, ..Default::default() };
                    if out.send(Ok(resp)).await.is_err() {
                        break;
                    }
                }
                m = inbound.message() => match m {
                    Ok(Some(f)) => frame = Some(f),
                    // The producer is done (or gone): what it sent is
                    // stored and confirmed already.
                    Ok(None) | Err(_) => break,
                },
                _ = tokio::time::sleep_until(quiet_since + idle) => {
                    // Space reserved and unused is space nobody else gets:
                    // a producer that sits on it while others wait loses it.
                    let id = self.id;
                    let held = self.broker.apply(&self.q, |sh, _, _| sh.state.publisher_blocking(id));
                    if let Some(held) = held {
                        tracing::info!(held, "publisher idle on credit while others wait; ending its stream");
                        let msg = format!(
                            "this producer held {held} credits unused for {} while other producers \
                             waited for space in queue {:?} (--publish-idle-timeout); its space \
                             was freed: open a new stream to publish again",
                            humantime::format_duration(idle),
                            self.q.name()
                        );
                        let _ = out.send(Err(Status::aborted(msg))).await;
                        break;
                    }
                    quiet_since = tokio::time::Instant::now();
                }
            }
        }
    }

    /// Stores one frame's tasks against the credit, waits until they are
    /// durable (durable queues), and returns the confirmation.
    async fn store(&self, tasks: Vec<pb::NewTask>) -> Result<pb::PublishResponse, Status> {
        let n = validate::batch_len(tasks.len(), &self.limits)?;
        let first = self.broker.task_ids(n);
        let tasks = validate::new_tasks(tasks, first, &self.limits)?;
        let reservation = self
            .broker
            .reserve_memory(tasks.iter().map(NewTask::held_bytes).sum())?;
        let id = self.id;
        let ((stored, duplicates, depth), durability) =
            self.broker.apply_growing(&self.q, |sh, now, fx| {
                // A frame read just before the queue was deleted must not
                // land in it (nor in the log after its Delete).
                if sh.is_deleted() {
                    return (Err(PublishError::Unknown), Vec::new(), 0);
                }
                let r = sh.state.publish(now, id, tasks, fx);
                let dups = std::mem::take(&mut fx.duplicates);
                (r, dups, sh.state.depth())
            });
        drop(reservation);
        match stored {
            Ok(()) => {}
            Err(PublishError::OverCredit { sent, credit }) => {
                return Err(Error::invalid(format!(
                    "sent {sent} tasks with credit for {credit}: wait for credit before sending"
                ))
                .into());
            }
            Err(PublishError::Unknown) => {
                return Err(Error::QueueDeleted(self.q.name().to_owned()).into());
            }
        }
        if let Some(d) = durability
            && let Err(e) = d.await
        {
            // Not stored after all: take the tasks back out, as Enqueue does.
            self.broker.retract(&self.q, first, n);
            return Err(Error::from(e).into());
        }
        // Confirmed: the window has room for more credit.
        self.broker.apply(&self.q, |sh, now, fx| {
            sh.state.publish_confirmed(now, id, n, fx);
        });
        let confirmed_ids = (0..n)
            .map(|i| {
                let id = TaskId(first.0 + i);
                let id = duplicates
                    .iter()
                    .find(|(new, _)| *new == id)
                    .map_or(id, |(_, holder)| *holder);
                validate::task_id_str(id)
            })
            .collect();
        Ok(pb::PublishResponse {
            credit: 0,
            confirmed_ids,
            depth,
            capacity: self.q.spec.config.capacity,
        })
    }
}

impl Drop for Session {
    /// The stream ended however it ended: its reserved space is free.
    fn drop(&mut self) {
        let id = self.id;
        self.broker.apply(&self.q, |sh, now, fx| {
            sh.remove_publisher_sender(id);
            sh.state.remove_publisher(now, id, fx);
        });
    }
}
