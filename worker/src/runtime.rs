//! The worker runtime: one `Consume` stream, credit per free slot, a
//! handler task per delivery, coalesced acks, automatic lease extension,
//! reconnection with backoff, and a graceful stop.
//!
//! The credit discipline (docs/protocol.md): the worker grants `concurrency`
//! credits when it subscribes and one more each time a handler finishes,
//! in the same frame as that task's ack. So it never holds more than
//! `concurrency` tasks, and what it cannot take stays in the broker for
//! other workers.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_client::proto::{
    AckItem, ConsumeRequest, ConsumeResponse, ExtendItem, LeaseRef, NackAction, NackItem,
    Subscribe, ThrottleScope,
};
use sluice_client::{Client, Code};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;

/// How a worker connects and behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// Broker URL, e.g. `http://127.0.0.1:50051`.
    pub broker: String,
    /// The queue to consume.
    pub queue: String,
    /// Tasks processed at once, and so the most the worker ever holds.
    pub concurrency: u32,
    /// Name shown in the broker's consumer stats.
    pub name: String,
    /// On shutdown, how long running handlers get to finish; those still
    /// running then are abandoned and the broker hands their tasks out again.
    pub shutdown_grace: Duration,
    /// First wait before reconnecting; doubles up to `reconnect_max` (at
    /// most 1 s when `broker` lists a cluster's members: it elects a new
    /// leader within seconds).
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// TLS settings for an `https://` broker.
    pub tls: sluice_client::TlsOptions,
}

impl Config {
    pub fn new(broker: impl Into<String>, queue: impl Into<String>) -> Self {
        Config {
            broker: broker.into(),
            queue: queue.into(),
            concurrency: 1,
            name: format!("worker-{}", std::process::id()),
            shutdown_grace: Duration::from_secs(30),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            tls: sluice_client::TlsOptions::default(),
        }
    }
}

/// A task handed to a handler.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub queue: String,
    /// 1 on the first delivery, counted up on each redelivery.
    pub attempt: u32,
    pub payload: Bytes,
    pub headers: HashMap<String, String>,
    pub priority: i32,
    pub enqueued_at_unix_ms: u64,
    /// The producer's fairness group (a tenant, an API key); empty for the
    /// default group.
    pub group: String,
}

/// What a handler decided about its task.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; `result` travels with the ack.
    Ack { result: Bytes },
    /// Failed; the broker retries it (after `delay`, if any) until the
    /// queue's `max_attempts`.
    Retry {
        error: String,
        delay: Option<Duration>,
    },
    /// Failed for good: straight to the dead letter queue.
    DeadLetter { error: String },
    /// The service the handler calls pushed back (an HTTP 429 or 503 with
    /// Retry-After): the task is retried after `retry_after`, and the
    /// broker holds the whole queue (or, with [`Throttle::Group`], the
    /// task's group) for as long, so no worker sends that service more
    /// meanwhile. Counts an attempt like [`Outcome::Retry`]. At most 24 h
    /// (the broker's limit): a longer wait is cut to that; a zero wait
    /// retries at once and holds nothing.
    Throttled {
        error: String,
        retry_after: Duration,
        scope: Throttle,
    },
}

/// What an [`Outcome::Throttled`] holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// Every task of the queue.
    Queue,
    /// The tasks of the throttled task's group ([`Task::group`]) only: one
    /// tenant's rate limit does not stop the others.
    Group,
}

/// The longest throttle (and retry delay with it) the broker accepts.
pub const MAX_THROTTLE: Duration = Duration::from_millis(86_400_000);

impl Outcome {
    pub fn ack() -> Self {
        Outcome::Ack {
            result: Bytes::new(),
        }
    }

    pub fn retry(error: impl Into<String>) -> Self {
        Outcome::Retry {
            error: error.into(),
            delay: None,
        }
    }
}

/// A worker: connect, subscribe, process, repeat until shut down.
pub struct Worker {
    config: Config,
}

/// How a session ended.
enum End {
    /// Shut down as asked; stop.
    Stopped,
    /// The broker asked to drain and we settled everything: reconnect
    /// (it may come back, or another may take its place).
    Drained,
    /// Connection lost or broker draining; reconnect.
    Lost(String),
}

impl Worker {
    pub fn new(config: Config) -> Self {
        Worker { config }
    }

    /// Runs until `shutdown` is cancelled (then drains, see
    /// [`Config::shutdown_grace`]) or a permanent error (unknown queue, bad
    /// arguments). A broker that goes away is waited for, with backoff.
    pub async fn run<H, F>(self, handler: H, shutdown: CancellationToken) -> Result<(), Error>
    where
        H: Fn(Task) -> F + Send + Sync + 'static,
        F: Future<Output = Outcome> + Send + 'static,
    {
        if self.config.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".into()));
        }
        let handler = Arc::new(handler);
        let mut backoff = self.config.reconnect_initial;
        let mut ever_subscribed = false;
        let mut held = Held::default();
        // A cluster elects a new leader within seconds of losing one:
        // waiting long between tries would only add to the failover.
        let max_backoff = if self.config.broker.contains(',') {
            self.config.reconnect_max.min(Duration::from_secs(1))
        } else {
            self.config.reconnect_max
        };
        loop {
            let mut subscribed = false;
            held.session += 1;
            let end = match self
                .session(&handler, &shutdown, &mut subscribed, &mut held)
                .await
            {
                Ok(end) => end,
                // Unknown at the start is a mistake to report; unknown after
                // having worked means the queue was deleted or an in-memory
                // broker restarted, and it may well come back.
                Err(Error::Broker {
                    code: Code::NotFound,
                    message,
                }) if ever_subscribed => End::Lost(message),
                Err(e) => return Err(e),
            };
            ever_subscribed |= subscribed;
            let end = match end {
                End::Drained => End::Lost("the broker drained this worker".into()),
                other => other,
            };
            match end {
                End::Stopped | End::Drained => return Ok(()),
                End::Lost(why) => {
                    // Leases without a token ended with their stream: the
                    // broker hands those tasks out again, so stop their
                    // handlers. A cluster's signed leases outlive it; their
                    // handlers run on and settle on the next stream.
                    held.forget_unsigned();
                    if subscribed {
                        backoff = self.config.reconnect_initial;
                    }
                    let wait = jitter(backoff);
                    warn!(error = %why, retry_in = ?wait, "disconnected from broker");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }

    async fn session<H, F>(
        &self,
        handler: &Arc<H>,
        shutdown: &CancellationToken,
        subscribed: &mut bool,
        held: &mut Held,
    ) -> Result<End, Error>
    where
        H: Fn(Task) -> F + Send + Sync + 'static,
        F: Future<Output = Outcome> + Send + 'static,
    {
        let cfg = &self.config;
        if shutdown.is_cancelled() {
            return Ok(End::Stopped);
        }
        let client = match Client::connect_with(&cfg.broker, &cfg.tls).await {
            Ok(c) => c,
            Err(e) if e.is_unreachable() => return Ok(End::Lost(e.to_string())),
            Err(e) => return Err(e.into()),
        };
        // Unbounded on purpose: the worker must never block on sending while
        // the broker blocks on sending to it. What goes in is bounded by the
        // tasks held (acks, extends) anyway.
        let (tx, rx) = mpsc::unbounded_channel::<ConsumeRequest>();
        // Slots still busy with tasks of an earlier stream stay taken:
        // each grants its credit back when it settles, as usual.
        let busy = u32::try_from(held.busy()).unwrap_or(u32::MAX);
        let first = ConsumeRequest {
            subscribe: Some(Subscribe {
                queue: cfg.queue.clone(),
                consumer_name: cfg.name.clone(),
            }),
            credit: cfg.concurrency.saturating_sub(busy),
            ..Default::default()
        };
        if tx.send(first).is_err() {
            return Ok(End::Lost("request stream closed".into()));
        }
        // Settlements queued while the connection is busy go out as one
        // frame, no bigger than the broker takes.
        let limit = client.frame_limit().await;
        let mut inbound = match client
            .raw()
            .consume(sluice_client::Coalescing::with_limit(rx, limit))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => return classify(status),
        };
        let ack_deadline = match inbound.message().await {
            Ok(Some(ConsumeResponse {
                subscribed: Some(s),
                ..
            })) => Duration::from_millis(s.ack_deadline_ms.max(1)),
            Ok(_) => return Ok(End::Lost("broker did not confirm the subscription".into())),
            Err(status) => return classify(status),
        };
        *subscribed = true;
        info!(queue = %cfg.queue, concurrency = cfg.concurrency, "subscribed");

        // Extend a lease once a third of it has passed, checking twice as
        // often, so even a late tick extends well before the deadline.
        let extend_every = ack_deadline / 3;
        let mut ticker = tokio::time::interval((extend_every / 2).max(Duration::from_millis(5)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Tasks of a lost stream that finished meanwhile are settled
        // first (a frame's acks are applied before its extends); those
        // still running are extended now, with their tokens, so the new
        // leader does not let them lapse while their handlers finish.
        while let Some(done) = held.running.try_join_next() {
            held.settle(done, true);
        }
        let carried = held.extend_due(Instant::now(), Duration::ZERO);
        if carried > 0 {
            info!(leases = carried, "carrying leases over to the new stream");
        }
        for frame in held.take_outbox() {
            if tx.send(frame).is_err() {
                return Ok(End::Lost("request stream closed".into()));
            }
        }
        let mut draining = false;
        let mut broker_drain = false;
        let mut grace_end: Option<Instant> = None;

        // Set once the broker confirmed our stop: no delivery is in transit.
        let mut stopped = false;
        let end = loop {
            if draining && held.running.is_empty() && (stopped || broker_drain) {
                break if broker_drain {
                    End::Drained
                } else {
                    End::Stopped
                };
            }
            tokio::select! {
                _ = shutdown.cancelled(), if !draining => {
                    info!(running = held.running.len(), grace = ?cfg.shutdown_grace, "shutting down: no new tasks, finishing running ones");
                    draining = true;
                    grace_end = Some(Instant::now() + cfg.shutdown_grace);
                    // Deliveries may be on the wire for credit granted
                    // earlier: ask the broker to stop and wait for its
                    // confirmation, so they are processed, not dropped.
                    let stop = ConsumeRequest { stop: true, ..Default::default() };
                    if tx.send(stop).is_err() {
                        break End::Lost("request stream closed".into());
                    }
                }
                _ = sleep_until_opt(grace_end) => {
                    warn!(abandoned = held.running.len(), "grace period over; abandoning running tasks (the broker hands them out again)");
                    held.running.abort_all();
                    break End::Stopped;
                }
                msg = inbound.message() => match msg {
                    Ok(Some(resp)) => {
                        for d in resp.deliveries {
                            let Some(task) = d.task else { continue };
                            let lease = (task.id.clone(), d.attempt);
                            let task_id = task.id.clone();
                            let t = Task {
                                id: task.id,
                                queue: d.queue,
                                attempt: d.attempt,
                                payload: task.payload,
                                headers: task.headers,
                                priority: task.priority,
                                enqueued_at_unix_ms: task.enqueued_at_unix_ms,
                                group: task.group,
                            };
                            let fut = handler(t);
                            let abort = held.running.spawn(async move {
                                // The handler runs in its own task so a panic
                                // becomes a nack instead of a lost lease.
                                let mut inner = AbortOnDrop(tokio::spawn(fut));
                                let outcome = match inner.join().await {
                                    Ok(o) => o,
                                    Err(e) => Outcome::retry(format!("handler failed: {e}")),
                                };
                                (lease, outcome)
                            });
                            held.leases.insert((task_id, d.attempt), Lease {
                                extended: Instant::now(),
                                token: d.lease_token,
                                session: held.session,
                                abort,
                            });
                        }
                        for e in resp.errors {
                            warn!(task = ?e.lease.as_ref().map(|l| &l.task_id), code = e.code, error = %e.message, "broker refused a settlement");
                            // A lease that is over is not worth extending.
                            if let Some(l) = e.lease {
                                held.leases.remove(&(l.task_id, l.attempt));
                            }
                        }
                        if resp.stopped.is_some() {
                            stopped = true;
                        }
                        if let Some(d) = resp.drain {
                            info!(reason = %d.reason, "broker asked to drain");
                            draining = true;
                            broker_drain = true;
                        }
                    }
                    Ok(None) => break End::Lost("broker closed the stream".into()),
                    Err(status) => break classify(status)?,
                },
                Some(done) = held.running.join_next() => {
                    // A frame per outcome, with a credit for the freed slot
                    // (none while draining): the stream merges whatever
                    // queues up into frames within the broker's limits.
                    held.settle(done, !draining);
                    while let Some(more) = held.running.try_join_next() {
                        held.settle(more, !draining);
                    }
                    let mut sent = true;
                    for frame in held.take_outbox() {
                        sent &= tx.send(frame).is_ok();
                    }
                    if !sent {
                        break End::Lost("request stream closed".into());
                    }
                }
                _ = ticker.tick() => {
                    let extended = held.extend_due(Instant::now(), extend_every);
                    if extended > 0 {
                        debug!(n = extended, "extending leases");
                    }
                    let mut sent = true;
                    // Merged by the stream, within the broker's limits.
                    for frame in held.take_outbox() {
                        sent &= tx.send(frame).is_ok();
                    }
                    if !sent {
                        break End::Lost("request stream closed".into());
                    }
                }
            }
        };

        if matches!(end, End::Stopped | End::Drained) {
            // Half-close, then read until the broker ends the stream: it
            // handles frames in order, so by then every ack above is applied.
            drop(tx);
            let flushed = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match inbound.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => return true,
                        Err(_) => return false,
                    }
                }
            })
            .await;
            if flushed != Ok(true) {
                if matches!(end, End::Drained) {
                    warn!("the draining broker did not confirm our last acks");
                    return Ok(End::Lost("broker went away while draining".into()));
                }
                // Tasks are not lost (the broker gives unsettled leases to
                // other workers), but work may be done twice: say so.
                return Err(Error::Unconfirmed);
            }
            if matches!(end, End::Stopped) {
                info!("stopped");
            }
        }
        Ok(end)
    }
}

/// One delivery's lease, as the worker holds it.
struct Lease {
    /// When it was last extended (or received).
    extended: Instant,
    /// The delivery's lease token: empty from a lone broker, whose leases
    /// end with the stream; a cluster's, to settle from a later stream.
    token: String,
    /// The stream ([`Held::session`]) that received it.
    session: u64,
    /// Stops its handler.
    abort: tokio::task::AbortHandle,
}

/// The tasks a worker holds, kept across streams: a cluster's leases
/// outlive the stream to a leader that failed, and the next stream settles
/// them with their tokens.
#[derive(Default)]
struct Held {
    /// The handlers, each answering its (task id, attempt).
    running: JoinSet<((String, u32), Outcome)>,
    /// Keyed by (task id, attempt): the same task can come back with a new
    /// attempt while an older run of it is still finishing.
    leases: HashMap<(String, u32), Lease>,
    /// Counts streams: the current one's leases need no token.
    session: u64,
    /// Frames to send on the stream.
    outbox: Vec<ConsumeRequest>,
    /// Handlers stopped but not yet joined: they hold no slot.
    abandoned: usize,
}

impl Held {
    /// How this stream names `key`'s lease: without a token when it
    /// received the delivery itself (a token costs bytes on the hot path
    /// and proves nothing more), with one otherwise; `None` when the lease
    /// cannot be claimed from here.
    fn lease_ref(&self, key: &(String, u32), lease: &Lease) -> Option<LeaseRef> {
        let token = if lease.session == self.session {
            String::new()
        } else if lease.token.is_empty() {
            return None;
        } else {
            lease.token.clone()
        };
        Some(LeaseRef {
            task_id: key.0.clone(),
            attempt: key.1,
            lease_token: token,
        })
    }

    /// Queues the settlement of one finished handler (with a credit for its
    /// slot when `refill`).
    fn settle(
        &mut self,
        done: Result<((String, u32), Outcome), tokio::task::JoinError>,
        refill: bool,
    ) {
        let (key, outcome) = match done {
            Ok(done) => done,
            Err(_) => {
                self.abandoned = self.abandoned.saturating_sub(1);
                return;
            }
        };
        let Some(lease) = self.leases.remove(&key) else {
            // Refused by the broker meanwhile (expired): nothing to settle,
            // but the slot is free again.
            if refill {
                self.outbox.push(ConsumeRequest {
                    credit: 1,
                    ..Default::default()
                });
            }
            return;
        };
        match self.lease_ref(&key, &lease) {
            Some(l) => self.outbox.push(settlement(l, outcome, refill)),
            None => debug!(task = %key.0, "lease ended with its stream; not settling"),
        }
    }

    /// Queues an extend for every lease last extended `every` or longer
    /// ago; returns how many.
    fn extend_due(&mut self, now: Instant, every: Duration) -> usize {
        let mut n = 0;
        let mut extends = Vec::new();
        for (key, lease) in self.leases.iter_mut() {
            if now.duration_since(lease.extended) < every {
                continue;
            }
            lease.extended = now;
            let token = if lease.session == self.session {
                String::new()
            } else {
                lease.token.clone()
            };
            extends.push(ExtendItem {
                lease: Some(LeaseRef {
                    task_id: key.0.clone(),
                    attempt: key.1,
                    lease_token: token,
                }),
                extend_ms: 0,
            });
            n += 1;
        }
        // One frame per extend: the stream merges them within the broker's
        // limits.
        self.outbox
            .extend(extends.into_iter().map(|e| ConsumeRequest {
                extends: vec![e],
                ..Default::default()
            }));
        n
    }

    /// Drops the leases that ended with their stream, stopping their
    /// handlers.
    fn forget_unsigned(&mut self) {
        self.leases.retain(|_, l| {
            let keep = !l.token.is_empty();
            if !keep {
                l.abort.abort();
                self.abandoned += 1;
            }
            keep
        });
        // Frames the lost stream did not take go with it: their tasks come
        // back once their leases end (at least once, as any lost ack).
        self.outbox.clear();
    }

    /// Slots taken by handlers still running.
    fn busy(&self) -> usize {
        self.running.len().saturating_sub(self.abandoned)
    }

    fn take_outbox(&mut self) -> Vec<ConsumeRequest> {
        std::mem::take(&mut self.outbox)
    }
}

/// The frame settling one task, granting a credit for its slot when
/// `refill`.
fn settlement(lease: LeaseRef, outcome: Outcome, refill: bool) -> ConsumeRequest {
    let mut frame = ConsumeRequest {
        credit: u32::from(refill),
        ..Default::default()
    };
    push_outcome(&mut frame, lease, outcome);
    frame
}

fn push_outcome(frame: &mut ConsumeRequest, lease: LeaseRef, outcome: Outcome) {
    match outcome {
        Outcome::Ack { result } => frame.acks.push(AckItem {
            lease: Some(lease),
            result,
        }),
        Outcome::Retry { error, delay } => frame.nacks.push(NackItem {
            lease: Some(lease),
            action: NackAction::Retry as i32,
            // No delay of its own: the queue's retry backoff applies.
            delay_ms: delay.map(millis),
            error,
            ..NackItem::default()
        }),
        Outcome::DeadLetter { error } => frame.nacks.push(NackItem {
            lease: Some(lease),
            action: NackAction::DeadLetter as i32,
            error,
            ..NackItem::default()
        }),
        Outcome::Throttled {
            error,
            retry_after,
            scope,
        } => {
            // The task waits out the same time the queue (or group) is
            // held: ready again just as deliveries resume.
            let ms = millis(retry_after.min(MAX_THROTTLE));
            frame.nacks.push(NackItem {
                lease: Some(lease),
                action: NackAction::Retry as i32,
                delay_ms: Some(ms),
                error,
                throttle_ms: ms,
                throttle_scope: match scope {
                    Throttle::Queue => ThrottleScope::Queue,
                    Throttle::Group => ThrottleScope::Group,
                } as i32,
                ..NackItem::default()
            })
        }
    }
}

/// Whole milliseconds, rounded up: a wait of 1.2 ms is not cut to 1 ms
/// (nor a sub-millisecond one to none).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// Errors that retrying cannot fix end the worker; the rest reconnect.
fn classify(status: tonic::Status) -> Result<End, Error> {
    match status.code() {
        Code::NotFound
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented => Err(Error::Broker {
            code: status.code(),
            message: status.message().to_owned(),
        }),
        _ => Ok(End::Lost(format!(
            "{} ({})",
            status.message(),
            sluice_client::code_name(status.code())
        ))),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Between half and all of `d`, so workers that lost the same broker do not
/// all come back in the same instant.
fn jitter(d: Duration) -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let frac = 0.5 + (h.finish() % 1000) as f64 / 2000.0;
    d.mul_f64(frac)
}

/// A spawned task aborted when its handle is dropped (the session ended).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(&mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(i: u32) -> LeaseRef {
        LeaseRef {
            task_id: format!("t{i}"),
            attempt: 1,
            ..LeaseRef::default()
        }
    }

    /// A held lease as stream `session` received it.
    fn hold(held: &mut Held, id: &str, token: &str, session: u64) {
        let abort = held.running.spawn(std::future::pending());
        held.leases.insert(
            (id.into(), 1),
            Lease {
                extended: Instant::now(),
                token: token.into(),
                session,
                abort,
            },
        );
    }

    #[tokio::test]
    async fn a_lease_from_a_lost_stream_is_settled_with_its_token_or_not_at_all() {
        let mut held = Held {
            session: 1,
            ..Held::default()
        };
        hold(&mut held, "mine", "tok-mine", 1);
        hold(&mut held, "signed", "tok-signed", 1);
        hold(&mut held, "unsigned", "", 1);
        let own = held.lease_ref(&("mine".into(), 1), &held.leases[&("mine".into(), 1)]);
        assert_eq!(
            own.map(|l| l.lease_token),
            Some(String::new()),
            "the receiving stream needs no token"
        );

        // The stream is lost; the next one takes over.
        held.forget_unsigned();
        held.session = 2;
        assert_eq!(
            held.leases.len(),
            2,
            "the unsigned lease ended with its stream"
        );
        assert_eq!(held.busy(), 2, "its handler no longer holds a slot");
        assert_eq!(held.extend_due(Instant::now(), Duration::ZERO), 2);
        let tokens: Vec<String> = held
            .take_outbox()
            .into_iter()
            .flat_map(|f| f.extends)
            .filter_map(|e| e.lease.map(|l| l.lease_token))
            .collect();
        assert!(
            tokens.contains(&"tok-signed".to_string()) && tokens.contains(&"tok-mine".to_string())
        );

        held.settle(Ok((("signed".into(), 1), Outcome::ack())), true);
        let frames = held.take_outbox();
        assert_eq!(frames.len(), 1);
        let ack = &frames[0].acks[0];
        assert_eq!(
            ack.lease.as_ref().map(|l| l.lease_token.as_str()),
            Some("tok-signed")
        );
        assert_eq!(frames[0].credit, 1, "its slot is granted again");
    }

    #[test]
    fn a_settlement_refills_its_slot_unless_draining() {
        let f = settlement(lease(1), Outcome::ack(), true);
        assert_eq!((f.acks.len(), f.credit), (1, 1));
        let f = settlement(lease(2), Outcome::retry("x"), false);
        assert_eq!(
            (f.nacks.len(), f.credit),
            (1, 0),
            "no refill while draining"
        );
    }

    #[test]
    fn a_retry_keeps_its_delay_or_leaves_it_to_the_queue() {
        let f = settlement(lease(1), Outcome::retry("boom"), true);
        let n = &f.nacks[0];
        assert_eq!(n.action, NackAction::Retry as i32);
        assert_eq!(n.delay_ms, None, "the queue's backoff");
        assert_eq!((n.throttle_ms, n.error.as_str()), (0, "boom"));
        let f = settlement(
            lease(2),
            Outcome::Retry {
                error: "later".into(),
                delay: Some(Duration::from_micros(1500)),
            },
            true,
        );
        assert_eq!(f.nacks[0].delay_ms, Some(2), "rounded up to whole ms");
    }

    #[test]
    fn a_dead_letter_is_a_nack_without_delay_or_throttle() {
        let f = settlement(
            lease(1),
            Outcome::DeadLetter {
                error: "HTTP 400".into(),
            },
            true,
        );
        let n = &f.nacks[0];
        assert_eq!(n.action, NackAction::DeadLetter as i32);
        assert_eq!((n.delay_ms, n.throttle_ms), (None, 0));
        assert_eq!(n.error, "HTTP 400");
    }

    #[test]
    fn a_throttle_retries_after_its_wait_and_holds_the_queue_as_long() {
        let f = settlement(
            lease(1),
            Outcome::Throttled {
                error: "HTTP 429".into(),
                retry_after: Duration::from_secs(2),
                scope: Throttle::Queue,
            },
            true,
        );
        assert_eq!((f.nacks.len(), f.acks.len(), f.credit), (1, 0, 1));
        let n = &f.nacks[0];
        assert_eq!(n.action, NackAction::Retry as i32);
        assert_eq!(n.delay_ms, Some(2000));
        assert_eq!(n.throttle_ms, 2000);
        assert_eq!(n.throttle_scope, ThrottleScope::Queue as i32);
        assert_eq!(n.error, "HTTP 429");
        assert_eq!(n.priority, None);
    }

    #[test]
    fn a_group_throttle_names_its_scope() {
        let f = settlement(
            lease(1),
            Outcome::Throttled {
                error: "slow down".into(),
                retry_after: Duration::from_millis(250),
                scope: Throttle::Group,
            },
            false,
        );
        let n = &f.nacks[0];
        assert_eq!((n.delay_ms, n.throttle_ms), (Some(250), 250));
        assert_eq!(n.throttle_scope, ThrottleScope::Group as i32);
        assert_eq!(f.credit, 0, "no refill while draining");
    }

    #[test]
    fn a_throttle_is_cut_to_the_brokers_24_hours() {
        for long in [Duration::from_secs(86_401), Duration::MAX] {
            let f = settlement(
                lease(1),
                Outcome::Throttled {
                    error: String::new(),
                    retry_after: long,
                    scope: Throttle::Queue,
                },
                true,
            );
            let n = &f.nacks[0];
            assert_eq!((n.delay_ms, n.throttle_ms), (Some(86_400_000), 86_400_000));
        }
    }

    #[test]
    fn a_zero_throttle_retries_at_once_and_holds_nothing() {
        let f = settlement(
            lease(1),
            Outcome::Throttled {
                error: String::new(),
                retry_after: Duration::ZERO,
                scope: Throttle::Queue,
            },
            true,
        );
        let n = &f.nacks[0];
        assert_eq!((n.delay_ms, n.throttle_ms), (Some(0), 0));
    }
}
