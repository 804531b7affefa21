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

use crate::api::validate;
use crate::broker::{Broker, QueueHandle};
use crate::engine::{Command, NewTask, PublishError, PublisherId, TaskId};
use crate::error::Error;
use crate::limits::Limits;

/// Credit a producer holds when its first frame asks for none.
pub const DEFAULT_WINDOW: u64 = 1000;

type Out = mpsc::Sender<Result<pb::PublishResponse, Status>>;

/// Reads the first frame (the queue), registers the producer and starts
/// its session.
pub async fn start(
    broker: Broker,
    limits: Limits,
    access: crate::api::auth::Access,
    req: Request<Streaming<pb::PublishRequest>>,
) -> Result<ReceiverStream<Result<pb::PublishResponse, Status>>, Status> {
    let mut inbound = req.into_inner();
    let Some(first) = inbound.message().await? else {
        return Err(Error::FailedPrecondition(
            "the Publish stream ended before its first frame".into(),
        )
        .into());
    };
    access.require(crate::api::auth::Role::Produce, &first.queue)?;
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
    let grants = broker.apply(&q, |core, now, fx| {
        if core.is_deleted() {
            return None;
        }
        let rx = core.add_publisher(id);
        core.run(now, Command::AddPublisher { id, window }, fx);
        Some(rx)
    });
    let Some(grants) = grants else {
        return Err(broker.queue_gone(q.name()).into());
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

/// What the reader hands the confirmer, in the order frames came.
enum Step {
    /// A frame stored in the queue, confirmed once its log write is done.
    Stored(Staged),
    /// The stream ends with this status, after the frames before it are
    /// confirmed.
    Fail(Status),
}

/// A stored frame waiting for its confirmation.
struct Staged {
    first: TaskId,
    n: u64,
    duplicates: Vec<(TaskId, TaskId)>,
    depth: u64,
    /// The queue's capacity then (UpdateQueue may change it).
    capacity: u64,
    durability: Option<crate::broker::Durability>,
}

impl Session {
    /// Reads frames and stores each at once, without waiting for its log
    /// write: while earlier frames wait for theirs, later ones join them,
    /// and everything that arrives meanwhile (from this stream and others)
    /// shares one group commit. The confirmer answers in order as each
    /// becomes durable. How far the reader runs ahead is bounded by the
    /// producer's window: it cannot send more than its credit, and credit
    /// comes back only with confirmations.
    async fn run(
        self,
        first: pb::PublishRequest,
        mut inbound: Streaming<pb::PublishRequest>,
        mut grants: mpsc::UnboundedReceiver<u64>,
        out: Out,
    ) {
        let (steps, staged) = mpsc::unbounded_channel();
        let stop = tokio_util::sync::CancellationToken::new();
        // In memory nothing waits for a log write: confirm inline, without
        // a hop to another task per frame.
        let durable = self.q.durable();
        let confirmer = durable.then(|| {
            tokio::spawn(
                confirm(
                    self.broker.clone(),
                    Arc::clone(&self.q),
                    self.id,
                    staged,
                    out.clone(),
                    stop.clone(),
                )
                .in_current_span(),
            )
        });
        let mut frame = Some(first);
        let idle = self.limits.publish_idle;
        // Since when the producer has sent nothing.
        let mut quiet_since = tokio::time::Instant::now();
        // Made once, not per frame: each would register with its token or
        // the timer wheel. The idle timer is moved only when it fires.
        let stopped = stop.clone().cancelled_owned();
        let deleted = self.q.deleted().clone().cancelled_owned();
        let shutdown = self.broker.shutdown().clone().cancelled_owned();
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(stopped, deleted, shutdown, idle_timer);
        loop {
            if let Some(f) = frame.take()
                && !f.tasks.is_empty()
            {
                quiet_since = tokio::time::Instant::now();
                let step = match self.stage(f.tasks) {
                    Ok(staged) => Step::Stored(staged),
                    Err(status) => Step::Fail(status),
                };
                let failed = matches!(step, Step::Fail(_));
                let sent = if durable {
                    steps.send(step).is_ok()
                } else {
                    let answer = match step {
                        Step::Stored(s) => Ok(confirmation(&self.broker, &self.q, self.id, s)),
                        Step::Fail(status) => Err(status),
                    };
                    out.send(answer).await.is_ok()
                };
                if !sent || failed {
                    break;
                }
            }
            tokio::select! {
                biased;
                // The confirmer hit a failure: stop reading.
                _ = &mut stopped => break,
                _ = &mut deleted => {
                    self.fail(&steps, &out, self.broker.queue_gone(self.q.name()).into()).await;
                    break;
                }
                _ = &mut shutdown => {
                    self.fail(&steps, &out, Error::ShuttingDown.into()).await;
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
                    // The producer is done (or gone): the confirmer answers
                    // what it sent, then the stream ends.
                    Ok(None) | Err(_) => break,
                },
                _ = &mut idle_timer => {
                    if quiet_since.elapsed() < idle {
                        idle_timer.as_mut().reset(quiet_since + idle);
                        continue;
                    }
                    // Space reserved and unused is space nobody else gets:
                    // a producer that sits on it while others wait loses it.
                    let id = self.id;
                    let held = self.broker.apply(&self.q, |core, _, _| core.state().publisher_blocking(id));
                    if let Some(held) = held {
                        tracing::info!(held, "publisher idle on credit while others wait; ending its stream");
                        let msg = format!(
                            "this producer held {held} credits unused for {} while other producers \
                             waited for space in queue {:?} (--publish-idle-timeout); its space \
                             was freed: open a new stream to publish again",
                            humantime::format_duration(idle),
                            self.q.name()
                        );
                        self.fail(&steps, &out, Status::aborted(msg)).await;
                        break;
                    }
                    quiet_since = tokio::time::Instant::now();
                    idle_timer.as_mut().reset(quiet_since + idle);
                }
            }
        }
        // The reservation goes now (Drop); the confirmer finishes what was
        // sent, then the stream ends when it and `out` are dropped.
        drop(steps);
        drop(out);
        drop(self);
        if let Some(c) = confirmer {
            let _ = c.await;
        }
    }

    /// Ends the stream with `status`, after the confirmations before it.
    async fn fail(&self, steps: &mpsc::UnboundedSender<Step>, out: &Out, status: Status) {
        if self.q.durable() {
            let _ = steps.send(Step::Fail(status));
        } else {
            let _ = out.send(Err(status)).await;
        }
    }

    /// Stores one frame's tasks against the credit and starts its log
    /// write; the confirmation waits for that in [`confirm`].
    fn stage(&self, tasks: Vec<pb::NewTask>) -> Result<Staged, Status> {
        let n = validate::batch_len(tasks.len(), &self.limits)?;
        let first = self.broker.task_ids(n);
        let tasks = validate::new_tasks(tasks, first, &self.limits)?;
        let reservation = self
            .broker
            .reserve_memory(tasks.iter().map(NewTask::held_bytes).sum())?;
        let id = self.id;
        let ((stored, duplicates, (depth, capacity)), durability) =
            self.broker.apply_growing(&self.q, |core, now, fx| {
                // A frame read just before the queue was deleted must not
                // land in it (nor in the log after its Delete).
                if core.is_deleted() {
                    return (Err(PublishError::Unknown), Vec::new(), (0, 0));
                }
                let r = core.publish(now, id, tasks, fx);
                let dups = std::mem::take(&mut fx.duplicates);
                let s = core.state();
                (r, dups, (s.depth(), s.config().capacity))
            });
        drop(reservation);
        match stored {
            Ok(()) => Ok(Staged {
                first,
                n,
                duplicates,
                depth,
                capacity,
                durability,
            }),
            Err(PublishError::OverCredit { sent, credit }) => Err(Error::invalid(format!(
                "sent {sent} tasks with credit for {credit}: wait for credit before sending"
            ))
            .into()),
            Err(PublishError::Unknown) => Err(self.broker.queue_gone(self.q.name()).into()),
        }
    }
}

/// Confirms stored frames in the order they came, each once its log write
/// is durable, and ends the stream with the reader's failure, if any,
/// after them. A log write that fails takes its frame's tasks back out and
/// ends the stream (UNAVAILABLE, or RESOURCE_EXHAUSTED for a full disk);
/// frames after it that were stored stay stored (at least once) but are
/// not confirmed.
async fn confirm(
    broker: Broker,
    q: Arc<QueueHandle>,
    id: PublisherId,
    mut staged: mpsc::UnboundedReceiver<Step>,
    out: Out,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut failed: Option<Status> = None;
    while let Some(step) = staged.recv().await {
        let s = match step {
            Step::Stored(s) => s,
            Step::Fail(status) => {
                failed.get_or_insert(status);
                continue;
            }
        };
        let mut s = s;
        let written = match s.durability.take() {
            Some(d) => d.await,
            None => Ok(()),
        };
        if let Err(e) = written {
            // Not stored after all: take the tasks back out, as Enqueue does.
            broker.retract(&q, s.first, s.n);
            if failed.is_none() {
                failed = Some(Error::from(e).into());
                stop.cancel();
            }
            continue;
        }
        if failed.is_some() {
            continue;
        }
        let resp = confirmation(&broker, &q, id, s);
        if out.send(Ok(resp)).await.is_err() {
            stop.cancel();
        }
    }
    if let Some(status) = failed {
        let _ = out.send(Err(status)).await;
    }
}

/// A stored (and durable) frame's confirmation; its window has room for
/// more credit now.
fn confirmation(
    broker: &Broker,
    q: &QueueHandle,
    id: PublisherId,
    s: Staged,
) -> pb::PublishResponse {
    // The credit this frees for this producer rides on the confirmation,
    // rather than in a frame of its own; other producers' grants are routed
    // as always.
    let credit = broker.apply(q, |core, now, fx| {
        core.run(now, Command::PublishConfirmed { id, n: s.n }, fx);
        let mut own = 0;
        fx.granted.retain(|(p, n)| {
            let mine = *p == id;
            if mine {
                own += n;
            }
            !mine
        });
        own
    });
    let confirmed_ids = crate::api::reply::answered_ids(s.first, s.n, &s.duplicates);
    pb::PublishResponse {
        credit,
        confirmed_ids,
        depth: s.depth,
        capacity: s.capacity,
    }
}

impl Drop for Session {
    /// The stream ended however it ended: its reserved space is free.
    fn drop(&mut self) {
        let id = self.id;
        self.broker.apply(&self.q, |core, now, fx| {
            core.remove_publisher_sender(id);
            core.run(now, Command::RemovePublisher { id }, fx);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use sluice_proto::v1::sluice_service_client::SluiceServiceClient;
    use tokio_stream::wrappers::UnboundedReceiverStream;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::storage::{Log, LogOptions};
    use crate::wal::Recovery;

    /// A broker with durable queue "q" on a log in `dir`, served on a
    /// local port; and a Publish stream on "q" with a window of 100.
    async fn durable_publish(
        dir: &std::path::Path,
    ) -> (
        Broker,
        Log,
        mpsc::UnboundedSender<pb::PublishRequest>,
        Streaming<pb::PublishResponse>,
    ) {
        let (log, _) = Log::open(dir, LogOptions::default()).expect("open");
        let broker = Broker::with_log(
            CancellationToken::new(),
            Some(log.clone()),
            Recovery::default(),
            64 << 20,
        );
        let options = pb::QueueOptions {
            durable: true,
            ..Default::default()
        };
        let spec = validate::queue_spec("q", Some(&options)).expect("spec");
        broker.create_queue(spec).await.expect("create");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(crate::server::run(
            listener,
            Limits::default(),
            broker.clone(),
            None,
            None,
            crate::api::info::Setup {
                max_streams_per_connection: 100,
                ..Default::default()
            },
            None,
        ));
        let mut client = SluiceServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(pb::PublishRequest {
            queue: "q".into(),
            window: 100,
            ..Default::default()
        })
        .expect("send");
        let mut answers = client
            .publish(UnboundedReceiverStream::new(rx))
            .await
            .expect("publish")
            .into_inner();
        let credit = answers.message().await.expect("healthy").expect("credit");
        assert_eq!(credit.credit, 100);
        (broker, log, tx, answers)
    }

    fn frame(payload: &str) -> pb::PublishRequest {
        pb::PublishRequest {
            tasks: vec![pb::NewTask {
                payload: payload.to_owned().into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_the_log_refuses_is_taken_back_after_the_confirmations_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (broker, log, tx, mut answers) = durable_publish(dir.path()).await;
        tx.send(frame("kept")).expect("send");
        let mut confirmed = 0;
        while confirmed < 1 {
            let a = answers.message().await.expect("healthy").expect("open");
            confirmed += a.confirmed_ids.len();
        }
        log.faults().fail_writes.store(1, Relaxed);
        tx.send(frame("refused")).expect("send");
        let status = loop {
            match answers.message().await {
                Ok(Some(a)) => assert!(a.confirmed_ids.is_empty(), "{a:?}"),
                Ok(None) => panic!("ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        let q = broker.queue("q").expect("q");
        assert_eq!(q.snapshot().0.ready, 1, "the refused frame was taken back");
        broker.shutdown().cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_in_flight_share_the_log_writes_and_are_confirmed_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (broker, log, tx, mut answers) = durable_publish(dir.path()).await;
        // Every fsync takes 20 ms: one frame at a time, 50 frames would
        // take 50 of them.
        log.faults().slow_sync_ms.store(20, Relaxed);
        let before = log.stats().fsyncs;
        for i in 0..50 {
            tx.send(frame(&format!("t{i}"))).expect("send");
        }
        let mut confirmed = Vec::new();
        while confirmed.len() < 50 {
            let a = answers.message().await.expect("healthy").expect("open");
            confirmed.extend(a.confirmed_ids);
        }
        let fsyncs = log.stats().fsyncs - before;
        assert!(fsyncs <= 10, "50 frames took {fsyncs} fsyncs");
        let mut sorted = confirmed.clone();
        sorted.sort();
        assert_eq!(confirmed, sorted, "confirmed in the order sent");
        assert_eq!(broker.queue("q").expect("q").snapshot().0.ready, 50);
        broker.shutdown().cancel();
    }
}
