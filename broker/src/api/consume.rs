//! The worker's stream: one `Consume` call is one consumer of one queue.
//!
//! A spawned session task reads client frames (acks, nacks, extends,
//! credit) and forwards the deliveries the engine routes to this consumer.
//! The outbound channel is small and deliveries only exist when credit paid
//! for them, so nothing here buffers without bound. When the session ends
//! for any reason (client gone, cancel, error, queue deleted, shutdown),
//! its guard removes the consumer and every task it held is ready again at
//! once.

use sluice_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};
use tracing::Instrument;

use crate::api::reply::delivery;
use crate::api::validate;
use crate::broker::{Broker, DeliveryRx, FRAME_BYTES, QueueCore, QueueHandle};
use crate::engine::{
    Claim, Command, ConsumerId, Effects, Millis, Outcome, SettleError, SettleKind, SettleOp,
};
use crate::error::Error;
use crate::lease::LeaseKey;

type Out = mpsc::Sender<Result<pb::ConsumeResponse, Status>>;

/// Reads the Subscribe frame, registers the consumer and starts its
/// session. Errors before the subscription end the call with a status.
pub async fn start(
    broker: Broker,
    access: crate::api::auth::Access,
    req: Request<Streaming<pb::ConsumeRequest>>,
) -> Result<ReceiverStream<Result<pb::ConsumeResponse, Status>>, Status> {
    let peer = crate::api::auth::peer(&req);
    let mut inbound = req.into_inner();
    let mut first = match inbound.message().await? {
        Some(f) => f,
        None => {
            return Err(Error::FailedPrecondition(
                "the Consume stream ended before its Subscribe frame".into(),
            )
            .into());
        }
    };
    let Some(sub) = first.subscribe.take() else {
        return Err(Error::FailedPrecondition(
            "the first frame of a Consume stream must carry subscribe".into(),
        )
        .into());
    };
    access.require(crate::api::auth::Role::Consume, &sub.queue)?;
    validate::queue_name(&sub.queue)?;
    if sub.consumer_name.len() > validate::MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "consumer_name is over {} bytes",
            validate::MAX_NAME_LEN
        ))
        .into());
    }
    let q = broker.queue(&sub.queue)?;
    let (cid, deliveries) = broker.add_consumer(&q, sub.consumer_name.clone(), peer.clone())?;
    let (tx, rx) = mpsc::channel(16);
    let subscribed = pb::ConsumeResponse {
        subscribed: Some(pb::Subscribed {
            consumer_id: format!("c{}", cid.0),
            ack_deadline_ms: q.ack_deadline_ms(),
        }),
        ..Default::default()
    };
    // The channel is new and empty: this cannot fail for lack of room.
    let _ = tx.try_send(Ok(subscribed));
    let span = tracing::info_span!("consume", queue = %sub.queue, consumer = cid.0, name = %sub.consumer_name, %peer);
    // A cluster's deliveries carry their tokens: after a failover the
    // worker's new stream (to the new leader) settles them with those,
    // since the stream that received them is gone.
    let tokens = broker.replicates(&q).then(|| broker.lease_key());
    let session = Session {
        broker,
        q,
        cid,
        deliveries,
        tokens,
    };
    tokio::spawn(session.run(first, inbound, tx).instrument(span));
    Ok(ReceiverStream::new(rx))
}

/// One consumer's session. Dropping it (the session ended, panicked or
/// was cancelled) removes the consumer; see the Drop impl.
struct Session {
    broker: Broker,
    q: std::sync::Arc<QueueHandle>,
    cid: ConsumerId,
    deliveries: DeliveryRx,
    /// The key to sign deliveries with, for replicated queues only.
    tokens: Option<LeaseKey>,
}

impl Session {
    async fn run(
        mut self,
        first: pb::ConsumeRequest,
        mut inbound: Streaming<pb::ConsumeRequest>,
        out: Out,
    ) {
        tracing::debug!("consumer subscribed");
        let limits = self.broker.limits();
        let mut frame = Some(first);
        // Made once, not per frame: each would register with its token.
        let deleted = self.q.deleted().clone().cancelled_owned();
        let shutdown = self.broker.shutdown().clone().cancelled_owned();
        tokio::pin!(deleted, shutdown);
        // Set when the broker drains: until then, held tasks may be settled.
        let mut draining_until: Option<tokio::time::Instant> = None;
        loop {
            if let Some(mut f) = frame.take() {
                if draining_until.is_some() {
                    // No new work while draining, whatever the worker asks.
                    f.credit = 0;
                }
                let (errors, stopped) = match self.handle(f, &limits) {
                    Ok(r) => r,
                    Err(status) => {
                        tracing::info!(error = %status.message(), "consume stream refused a frame");
                        let _ = out.send(Err(status)).await;
                        break;
                    }
                };
                let mut replies = Vec::new();
                if !errors.is_empty() {
                    replies.push(pb::ConsumeResponse {
                        errors,
                        ..Default::default()
                    });
                }
                if let Some(in_flight) = stopped {
                    // Credit is gone, so nothing new is routed to us: flush
                    // what already was, then confirm.
                    let mut frames = Frames::new(self.tokens.as_ref());
                    while let Ok(batch) = self.deliveries.try_recv() {
                        frames.extend(self.q.name(), &batch);
                    }
                    replies.extend(frames.done);
                    replies.push(pb::ConsumeResponse {
                        stopped: Some(pb::Stopped { in_flight }),
                        ..Default::default()
                    });
                }
                if !send_all(&out, replies).await {
                    break;
                }
                if draining_until.is_some() && self.in_flight() == 0 {
                    tracing::debug!("drained");
                    break;
                }
            }
            tokio::select! {
                biased;
                _ = &mut deleted => {
                    let _ = out.send(Err(self.broker.queue_gone(self.q.name()).into())).await;
                    break;
                }
                _ = &mut shutdown, if draining_until.is_none() => {
                    // Stop deliveries, send what was already routed, then
                    // tell the worker how long it has to settle what it holds.
                    let cid = self.cid;
                    self.broker.apply(&self.q, |core, now, fx| {
                        core.credit(now, Command::Revoke { id: cid }, fx)
                    });
                    let mut frames = Frames::new(self.tokens.as_ref());
                    while let Ok(batch) = self.deliveries.try_recv() {
                        frames.extend(self.q.name(), &batch);
                    }
                    let grace = self.broker.shutdown_grace();
                    let mut replies = frames.done;
                    replies.push(pb::ConsumeResponse {
                        drain: Some(pb::Drain {
                            reason: "broker shutting down".into(),
                            grace_ms: grace.as_millis() as u64,
                        }),
                        ..Default::default()
                    });
                    if !send_all(&out, replies).await || self.in_flight() == 0 {
                        break;
                    }
                    draining_until = Some(tokio::time::Instant::now() + grace);
                }
                _ = sleep_until_opt(draining_until) => {
                    tracing::info!(in_flight = self.in_flight(), "grace period over; held tasks go back to the queue");
                    break;
                }
                Some(batch) = self.deliveries.recv() => {
                    // Coalesce whatever else is already waiting, in frames of
                    // at most FRAME_BYTES so clients with gRPC's default 4 MiB
                    // receive limit can read them.
                    let mut frames = Frames::new(self.tokens.as_ref());
                    frames.extend(self.q.name(), &batch);
                    while let Ok(more) = self.deliveries.try_recv() {
                        frames.extend(self.q.name(), &more);
                    }
                    if !send_all(&out, frames.done).await {
                        break;
                    }
                }
                m = inbound.message() => match m {
                    Ok(Some(f)) => frame = Some(f),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(error = %status, "consume stream broken");
                        break;
                    }
                },
            }
        }
        tracing::debug!("consumer left");
        // Leave the queue before the response stream ends, so a client that
        // saw the end also sees itself gone from stats.
        drop(self);
        drop(out);
    }

    /// Leases this consumer holds now.
    fn in_flight(&self) -> u64 {
        let cid = self.cid;
        self.broker
            .apply(&self.q, |core, _, _| core.state().in_flight(cid))
    }

    /// Applies one client frame in one engine call: acks, nacks, extends,
    /// credit, then stop. Returns the refused items and, for a stop, the
    /// leases the consumer still holds.
    fn handle(
        &self,
        f: pb::ConsumeRequest,
        limits: &crate::limits::Limits,
    ) -> Result<(Vec<pb::SettleError>, Option<u64>), Status> {
        if f.subscribe.is_some() {
            return Err(Error::FailedPrecondition(
                "a Consume stream carries one subscription; open another stream for another queue"
                    .into(),
            )
            .into());
        }
        let items = f.acks.len() + f.nacks.len() + f.extends.len();
        if items > limits.max_batch {
            return Err(Error::invalid(format!(
                "frame of {items} acks, nacks and extends is over the limit of {} (--max-batch)",
                limits.max_batch
            ))
            .into());
        }
        let cid = self.cid;
        let q = &self.q;
        let max_credit = limits.max_credit;
        let by = Settler {
            stream: Some(cid),
            key: self.broker.lease_key(),
            max_result: limits.max_payload_bytes,
        };
        self.broker.apply(q, |core, now, fx| {
            let errors = settle(core, now, fx, &by, &f.acks, &f.nacks, &f.extends);
            if f.credit > 0 {
                let unspent = core.state().credit(cid).unwrap_or(0);
                let total = unspent + u64::from(f.credit);
                if total > max_credit {
                    return Err(Error::invalid(format!(
                        "unspent credit would be {total}, over the limit of {max_credit} (--max-credit)"
                    ))
                    .into());
                }
                let grant = Command::Grant {
                    id: cid,
                    credit: u64::from(f.credit),
                };
                core.credit(now, grant, fx);
            }
            let stopped = if f.stop {
                core.credit(now, Command::Revoke { id: cid }, fx)
            } else {
                None
            };
            Ok((errors, stopped))
        })
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends frames in order; false when the client is gone.
async fn send_all(out: &Out, frames: Vec<pb::ConsumeResponse>) -> bool {
    for f in frames {
        if out.send(Ok(f)).await.is_err() {
            return false;
        }
    }
    true
}

/// A repeated field's tag and length prefix, at most.
const DELIVERY_FRAMING: usize = 6;

/// Deliveries cut into frames of at most [`FRAME_BYTES`] encoded (a single
/// larger task still goes out, alone).
struct Frames<'k> {
    done: Vec<pb::ConsumeResponse>,
    bytes: usize,
    tokens: Option<&'k LeaseKey>,
}

impl<'k> Frames<'k> {
    fn new(tokens: Option<&'k LeaseKey>) -> Self {
        Frames {
            done: Vec::new(),
            bytes: 0,
            tokens,
        }
    }

    fn extend(&mut self, queue: &str, batch: &[crate::engine::Delivery]) {
        for d in batch {
            // A lone broker sends no token: this stream settles them, and
            // proves receipt by itself; a token per delivery would cost a
            // MAC on the hottest path for nothing. A cluster's leases
            // outlive the stream (see Session::tokens).
            let one = delivery(queue, d, self.tokens);
            // Its whole size on the wire, not just the payload: headers,
            // key, job id and token come with every delivery, and a frame
            // of many small tasks must fit a default client too.
            let size = prost::Message::encoded_len(&one) + DELIVERY_FRAMING;
            let full = self.bytes > 0 && self.bytes + size > FRAME_BYTES;
            if full || self.done.is_empty() {
                self.done.push(pb::ConsumeResponse::default());
                self.bytes = 0;
            }
            self.bytes += size;
            if let Some(last) = self.done.last_mut() {
                last.deliveries.push(one);
            }
        }
    }
}

/// Who settles: a Consume stream (which may settle what it holds without
/// a token) or a unary call (which must quote each lease's token).
pub struct Settler {
    stream: Option<ConsumerId>,
    key: LeaseKey,
    /// Largest ack result accepted (the payload limit).
    max_result: usize,
}

impl Settler {
    /// For the unary Ack, Nack and ExtendLease calls.
    pub fn unary(broker: &Broker, limits: &crate::limits::Limits) -> Self {
        Settler {
            stream: None,
            key: broker.lease_key(),
            max_result: limits.max_payload_bytes,
        }
    }

    /// The claim this settler can make on lease `l` of task `id`: a
    /// stream's own lease needs no proof, so a stream quoting no token
    /// claims as its holder (and the common case costs no hashing); a
    /// verified token settles whoever holds the lease. A stream's token
    /// that does not verify still leaves it its own leases.
    fn claim(&self, id: crate::engine::TaskId, l: &pb::LeaseRef) -> Result<Claim, Refusal> {
        let token = !l.lease_token.is_empty() && self.key.verify(id, l.attempt, &l.lease_token);
        match (self.stream, token) {
            (_, true) => Ok(Claim::Token),
            (Some(cid), false) => Ok(Claim::Holder(cid)),
            (None, false) if l.lease_token.is_empty() => Err(invalid(
                "missing lease_token: quote Delivery.lease_token to settle outside the \
                 Consume stream that received the delivery"
                    .into(),
            )),
            // Said as for a lease that ended: a wrong guess learns nothing.
            (None, false) => Err(refused(SettleError::StaleLease)),
        }
    }
}

/// Applies acks, nacks and extends to a queue, collecting the refused ones.
/// Shared by the stream and the unary Ack/Nack/ExtendLease calls.
#[allow(clippy::too_many_arguments)]
pub fn settle(
    core: &mut QueueCore,
    now: Millis,
    fx: &mut Effects,
    by: &Settler,
    acks: &[pb::AckItem],
    nacks: &[pb::NackItem],
    extends: &[pb::ExtendItem],
) -> Vec<pb::SettleError> {
    // One command for the whole frame; what fails validation never
    // reaches the engine, and the errors keep the items' order.
    let mut ops = Vec::new();
    let mut slots: Vec<(&Option<pb::LeaseRef>, Result<usize, Refusal>)> = Vec::new();
    // Read here, under the lock the caller holds (the handle would take
    // it again).
    let ack_deadline_ms = core.state().config().ack_deadline_ms;
    let push = |ops: &mut Vec<SettleOp>, l: &pb::LeaseRef, id, kind| {
        let claim = by.claim(id, l)?;
        ops.push(op(id, l.attempt, claim, kind));
        Ok(ops.len() - 1)
    };
    for a in acks {
        let r = lease(&a.lease).and_then(|(l, id)| {
            if a.result.len() > by.max_result {
                return Err(invalid(format!(
                    "result is {} bytes, over the payload limit of {} (--max-payload-bytes)",
                    a.result.len(),
                    by.max_result
                )));
            }
            let kind = SettleKind::Ack {
                result: a.result.clone(),
            };
            push(&mut ops, l, id, kind)
        });
        slots.push((&a.lease, r));
    }
    for n in nacks {
        let r = lease(&n.lease).and_then(|(l, id)| {
            let action = validate::nack_action(n).map_err(invalid)?;
            let error = validate::error_text(&n.error).to_owned();
            let throttle = validate::throttle(n).map_err(invalid)?;
            let nack = SettleKind::Nack {
                action,
                error,
                throttle,
            };
            push(&mut ops, l, id, nack)
        });
        slots.push((&n.lease, r));
    }
    for e in extends {
        let r = lease(&e.lease).and_then(|(l, id)| {
            let ms = match e.extend_ms {
                0 => ack_deadline_ms,
                ms => validate::lease_ms(ms, "extend_ms").map_err(|e| invalid(e.to_string()))?,
            };
            push(&mut ops, l, id, SettleKind::Extend { ms })
        });
        slots.push((&e.lease, r));
    }
    let results = match ops.is_empty() {
        true => Vec::new(),
        false => match core.run(now, Command::Settle { ops }, fx) {
            Outcome::Settled(r) => r,
            _ => Vec::new(),
        },
    };
    let mut errors = Vec::new();
    for (lease, slot) in slots {
        let refusal = match slot {
            Err(r) => r,
            Ok(i) => match results.get(i) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => refused(*e),
                None => refused(SettleError::StaleLease),
            },
        };
        errors.push(settle_error(lease, refusal.0, refusal.1));
    }
    errors
}

type Refusal = (pb::SettleErrorCode, String);

fn op(id: crate::engine::TaskId, attempt: u32, claim: Claim, kind: SettleKind) -> SettleOp {
    SettleOp {
        id,
        attempt,
        claim,
        kind,
    }
}

fn lease(l: &Option<pb::LeaseRef>) -> Result<(&pb::LeaseRef, crate::engine::TaskId), Refusal> {
    let l = l.as_ref().ok_or_else(|| invalid("missing lease".into()))?;
    let id = crate::ids::parse_task_id(&l.task_id).ok_or_else(|| {
        (
            pb::SettleErrorCode::UnknownTask,
            format!("{:?} is not a task id this broker issues", l.task_id),
        )
    })?;
    Ok((l, id))
}

fn refused(e: SettleError) -> Refusal {
    let code = match e {
        SettleError::StaleLease => pb::SettleErrorCode::StaleLease,
    };
    (code, e.to_string())
}

fn invalid(message: String) -> Refusal {
    (pb::SettleErrorCode::Invalid, message)
}

fn settle_error(
    l: &Option<pb::LeaseRef>,
    code: pb::SettleErrorCode,
    message: String,
) -> pb::SettleError {
    pb::SettleError {
        lease: l.clone(),
        code: code as i32,
        message,
    }
}

impl Drop for Session {
    /// Removes the consumer however the session ends. Deliveries still in
    /// its channel never reached the client: they are undone, not charged
    /// as an attempt. What the client did receive goes back to ready at
    /// once (a lost consumer counts as a failed attempt).
    fn drop(&mut self) {
        let cid = self.cid;
        let rx = &mut self.deliveries;
        self.broker.apply(&self.q, |core, now, fx| {
            core.remove_sender(cid);
            // No credit first, or undoing a delivery would hand the task
            // straight back to this consumer on its way out.
            core.credit(now, Command::Revoke { id: cid }, fx);
            let mut unsent = Vec::new();
            while let Ok(batch) = rx.try_recv() {
                unsent.extend(batch.iter().map(|d| (d.id, d.attempt)));
            }
            core.unsend(now, unsent, fx);
            core.remove_consumer(now, cid, fx);
        });
        self.broker.stream_closed();
    }
}

#[cfg(test)]
mod tests {

    use bytes::Bytes;

    use super::*;
    use crate::engine::{Delivery, TaskBody, TaskId};

    fn d(size: usize) -> Delivery {
        Delivery {
            id: TaskId(1),
            body: TaskBody {
                payload: Bytes::from(vec![0u8; size]),
                headers: None,
                enqueued_at: 0,
            },
            attempt: 1,
            deadline: 0,
            priority: 0,
            key: None,
            job: None,
            group: None,
        }
    }

    #[test]
    fn frames_stay_under_the_size_limit() {
        let mut f = Frames::new(None);
        f.extend("q", &[d(10), d(10), d(10)]);
        assert_eq!(f.done.len(), 1);
        assert_eq!(f.done[0].deliveries.len(), 3);

        let mut f = Frames::new(None);
        let big = FRAME_BYTES / 2 + 1;
        f.extend("q", &[d(big), d(big)]);
        f.extend("q", &[d(big * 3), d(1)]);
        let sizes: Vec<usize> = f.done.iter().map(|r| r.deliveries.len()).collect();
        assert_eq!(sizes, [1, 1, 1, 1], "one oversized task still goes, alone");
    }

    #[test]
    fn many_small_tasks_with_big_headers_and_tokens_still_fit_a_frame() {
        // Empty payloads, but a kilobyte of headers, a key and a job each:
        // the frame is cut by what it weighs on the wire.
        let heavy = |i: u64| Delivery {
            id: TaskId(i),
            body: TaskBody {
                payload: Bytes::new(),
                headers: Some(Box::new(
                    [("h".to_owned(), "x".repeat(1000))].into_iter().collect(),
                )),
                enqueued_at: 0,
            },
            attempt: 1,
            deadline: 0,
            priority: 0,
            key: Some("k".repeat(256).into()),
            job: Some("j".repeat(256).into()),
            group: None,
        };
        let key = LeaseKey::random();
        let mut f = Frames::new(Some(&key));
        let batch: Vec<Delivery> = (0..5_000).map(heavy).collect();
        f.extend("q", &batch);
        assert!(f.done.len() > 1, "cut into several frames");
        for frame in &f.done {
            let len = prost::Message::encoded_len(frame);
            assert!(len <= FRAME_BYTES + 2048, "a frame of {len} bytes");
        }
        let total: usize = f.done.iter().map(|r| r.deliveries.len()).sum();
        assert_eq!(total, 5_000, "every delivery goes out");
    }
}
