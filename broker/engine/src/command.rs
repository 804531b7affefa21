//! Commands: every input that changes a queue, as a value.
//!
//! A command carries everything its caller decided — ids, claims, credit —
//! and [`QueueState::execute`] takes `now` beside it, so applying the same
//! commands with the same times to two engines gives equal states
//! ([`QueueState::digest`]) and equal effects. That is what a replicated
//! log needs: the leader chooses, every member applies.

use bytes::Bytes;

use crate::{
    Claim, ConsumerId, Effects, EnqueueError, EnqueueMode, Enqueued, Millis, NackAction, NewTask,
    ProducerSeq, PublishError, PublisherId, QueueConfig, QueueState, SettleError, TaskId, Throttle,
    WaitingId,
};

/// One input that changes a queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// An Enqueue call's batch, all or none; see [`QueueState::enqueue`].
    Enqueue {
        tasks: Vec<NewTask>,
        mode: EnqueueMode,
        /// Who sent it, as which of its batches: a batch sent again is
        /// answered as the first time.
        producer: Option<ProducerSeq>,
    },
    /// A waiting Enqueue call gave up (deadline, cancel, its client left).
    CancelWait { id: WaitingId },
    /// Tasks stored whatever the capacity: dead letters moving in.
    Store { tasks: Vec<NewTask> },
    /// Tasks whose enqueue the log refused, taken back.
    Retract { ids: Vec<TaskId> },
    /// Every ready and delayed task removed.
    Purge,
    /// A consumer (a stream, or a waiting Get when `detached`) arrives.
    AddConsumer {
        id: ConsumerId,
        name: String,
        peer: String,
        detached: bool,
    },
    /// More credit for a consumer.
    Grant { id: ConsumerId, credit: u64 },
    /// A consumer's unspent credit withdrawn.
    Revoke { id: ConsumerId },
    /// A consumer left.
    RemoveConsumer { id: ConsumerId },
    /// Acks, nacks and extends, in order.
    Settle { ops: Vec<SettleOp> },
    /// Deliveries their consumer never received, undone.
    Unsend { leases: Vec<(TaskId, u32)> },
    /// Time passed: due tasks become ready, expired leases end.
    Tick,
    /// A Publish stream opens, wanting up to `window` tasks unconfirmed.
    AddPublisher { id: PublisherId, window: u64 },
    /// A Publish stream ended.
    RemovePublisher { id: PublisherId },
    /// Tasks a publisher sends against its credit.
    Publish {
        id: PublisherId,
        tasks: Vec<NewTask>,
    },
    /// `n` of a publisher's tasks are confirmed to it.
    PublishConfirmed { id: PublisherId, n: u64 },
    /// These waiting (ready or delayed) tasks removed, as a purge removes
    /// them (a redrive moved them elsewhere); leased ones stay.
    Remove { ids: Vec<TaskId> },
    /// New options for the queue (see [`QueueState::configure`]);
    /// `lift_throttles` ends every nack throttle (a resume).
    Configure {
        config: QueueConfig,
        lift_throttles: bool,
    },
    /// A new leader took over: every stream and waiting call of the old
    /// one is gone. Consumers leave with their leases kept (a lease runs
    /// to its deadline and its token still settles it), waiting batches
    /// and publishers leave with nothing stored.
    Takeover,
}

/// One ack, nack or extend of a lease `(id, attempt)`.
#[derive(Debug, Clone, PartialEq)]
pub struct SettleOp {
    pub id: TaskId,
    pub attempt: u32,
    pub claim: Claim,
    pub kind: SettleKind,
}

/// What a [`SettleOp`] does.
#[derive(Debug, Clone, PartialEq)]
pub enum SettleKind {
    /// Done; `result` goes to the task's job.
    Ack { result: Bytes },
    /// Failed; `error` is kept for its dead letter and job; `throttle`
    /// holds the queue's (or the group's) deliveries for a while.
    Nack {
        action: NackAction,
        error: String,
        throttle: Option<Throttle>,
    },
    /// The lease runs until `now + ms`.
    Extend { ms: u64 },
}

/// What a command answers, beside its [`Effects`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// For [`Command::Enqueue`]: the result, the depth after it, and for a
    /// full queue how long until the batch would likely fit.
    Enqueue {
        result: Result<Enqueued, EnqueueError>,
        depth: u64,
        retry_after_ms: u64,
    },
    /// For [`Command::CancelWait`]: whether it was still waiting.
    Cancelled(bool),
    /// For [`Command::Retract`] and [`Command::Purge`]: tasks removed.
    Removed(u64),
    /// For [`Command::Grant`]: unspent credit after it; for
    /// [`Command::Revoke`]: leases still held. None for an unknown
    /// consumer.
    Consumer(Option<u64>),
    /// For [`Command::Settle`]: one result per op, in order; an extend's
    /// is its new deadline.
    Settled(Vec<Result<Option<Millis>, SettleError>>),
    /// For [`Command::Publish`].
    Published(Result<(), PublishError>),
    /// For the others.
    Done,
}

impl QueueState {
    /// Applies one command at `now`.
    pub fn execute(&mut self, now: Millis, command: Command, fx: &mut Effects) -> Outcome {
        match command {
            Command::Enqueue {
                tasks,
                mode,
                producer,
            } => {
                let n = tasks.len() as u64;
                let result = self.enqueue_as(now, tasks, mode, producer, fx);
                let retry_after_ms = match result {
                    Err(EnqueueError::Full) => self.retry_after_ms(now, n),
                    _ => 0,
                };
                Outcome::Enqueue {
                    result,
                    depth: self.depth(),
                    retry_after_ms,
                }
            }
            Command::CancelWait { id } => Outcome::Cancelled(self.cancel_put(now, id, fx)),
            Command::Store { tasks } => {
                self.enqueue_forced(now, tasks, fx);
                Outcome::Done
            }
            Command::Retract { ids } => {
                let ids = ids.into_iter().collect();
                Outcome::Removed(self.retract(now, &ids, fx))
            }
            Command::Purge => Outcome::Removed(self.purge(now, fx)),
            Command::AddConsumer {
                id,
                name,
                peer,
                detached,
            } => {
                self.add_consumer(id, name, peer, detached, now);
                Outcome::Done
            }
            Command::Grant { id, credit } => Outcome::Consumer(self.grant(now, id, credit, fx)),
            Command::Revoke { id } => Outcome::Consumer(self.revoke(id)),
            Command::RemoveConsumer { id } => {
                self.remove_consumer(now, id, fx);
                Outcome::Done
            }
            Command::Settle { ops } => Outcome::Settled(
                ops.into_iter()
                    .map(|op| self.settle_one(now, op, fx))
                    .collect(),
            ),
            Command::Unsend { leases } => {
                for (id, attempt) in leases {
                    // A lease that ended meanwhile has nothing to undo.
                    let _ = self.unsend(now, id, attempt, fx);
                }
                Outcome::Done
            }
            Command::Tick => {
                self.tick(now, fx);
                Outcome::Done
            }
            Command::AddPublisher { id, window } => {
                self.add_publisher(now, id, window, fx);
                Outcome::Done
            }
            Command::RemovePublisher { id } => {
                self.remove_publisher(now, id, fx);
                Outcome::Done
            }
            Command::Publish { id, tasks } => Outcome::Published(self.publish(now, id, tasks, fx)),
            Command::PublishConfirmed { id, n } => {
                self.publish_confirmed(now, id, n, fx);
                Outcome::Done
            }
            Command::Takeover => {
                self.takeover(now, fx);
                Outcome::Done
            }
            Command::Remove { ids } => Outcome::Removed(self.remove(now, &ids, fx)),
            Command::Configure {
                config,
                lift_throttles,
            } => {
                self.configure(now, config, lift_throttles, fx);
                Outcome::Done
            }
        }
    }

    fn settle_one(
        &mut self,
        now: Millis,
        op: SettleOp,
        fx: &mut Effects,
    ) -> Result<Option<Millis>, SettleError> {
        let SettleOp {
            id,
            attempt,
            claim,
            kind,
        } = op;
        match kind {
            SettleKind::Ack { result } => self
                .ack_with(now, id, attempt, claim, result, fx)
                .map(|()| None),
            SettleKind::Nack {
                action,
                error,
                throttle,
            } => self
                .nack(now, id, attempt, claim, action, &error, throttle, fx)
                .map(|()| None),
            SettleKind::Extend { ms } => self.extend(now, id, attempt, claim, ms, fx).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::{Backoff, Order, QueueConfig};

    /// A one-byte task with this id.
    fn task(id: u64) -> NewTask {
        NewTask {
            id: TaskId(id),
            payload: Bytes::from_static(b"x"),
            headers: HashMap::new(),
            priority: 0,
            delay_ms: 0,
            key: None,
            job: None,
            group: None,
        }
    }

    fn config(order: Order, capacity: u64) -> QueueConfig {
        QueueConfig {
            capacity,
            order,
            ack_deadline_ms: 800,
            max_attempts: 3,
            retry: Backoff {
                initial_ms: 50,
                max_ms: 400,
                multiplier_milli: 2000,
            },
            key_window_ms: 200,
            dead_letter: None,
            max_in_flight: 0,
            rate: None,
            group_max_in_flight: 0,
            paused: false,
        }
    }

    /// A command with ids from small ranges, so that settles, cancels and
    /// grants often find what they name.
    fn command() -> impl Strategy<Value = Command> {
        let task = (0u64..1000, 0i32..3, 0u64..3, 0u8..4, any::<bool>(), 0u8..4).prop_map(
            |(seed, priority, delay, key, header, group)| NewTask {
                id: TaskId(seed),
                payload: Bytes::from(seed.to_le_bytes().to_vec()),
                headers: if header {
                    HashMap::from([("a".into(), "1".into()), ("b".into(), seed.to_string())])
                } else {
                    HashMap::new()
                },
                priority,
                delay_ms: delay * 100,
                key: (key > 0).then(|| format!("k{key}").into()),
                job: (seed % 3 == 0).then(|| "job".into()),
                group: (group > 0).then(|| format!("g{group}").into()),
            },
        );
        let tasks = proptest::collection::vec(task, 1..4);
        let consumer = (1u64..4).prop_map(ConsumerId);
        let throttle = proptest::option::of((0u64..300, any::<bool>()))
            .prop_map(|t| t.map(|(ms, group)| Throttle { ms, group }));
        let op = (
            0u64..40,
            1u32..4,
            proptest::option::of(1u64..4),
            0u8..4,
            throttle,
        )
            .prop_map(|(id, attempt, holder, kind, throttle)| SettleOp {
                id: TaskId(id),
                attempt,
                claim: holder.map_or(Claim::Token, |c| Claim::Holder(ConsumerId(c))),
                kind: match kind {
                    0 | 1 => SettleKind::Ack {
                        result: Bytes::from_static(b"ok"),
                    },
                    2 => SettleKind::Nack {
                        action: NackAction::Retry {
                            delay_ms: None,
                            priority: None,
                        },
                        error: "boom".into(),
                        throttle,
                    },
                    _ => SettleKind::Extend { ms: 500 },
                },
            });
        prop_oneof![
            4 => (
                tasks.clone(),
                proptest::option::of(1u64..5),
                proptest::option::of((0u8..2, 1u64..6)),
            )
                .prop_map(|(tasks, wait, producer)| Command::Enqueue {
                    tasks,
                    mode: wait.map_or(EnqueueMode::FailFast, |w| EnqueueMode::Wait(WaitingId(w))),
                    // Few producers and sequence numbers: batches sent again.
                    producer: producer.map(|(p, seq)| ProducerSeq {
                        producer: format!("p{p}").into(),
                        seq,
                    }),
                }),
            1 => (1u64..5).prop_map(|w| Command::CancelWait { id: WaitingId(w) }),
            1 => tasks.clone().prop_map(|tasks| Command::Store { tasks }),
            1 => Just(Command::Purge),
            2 => (consumer.clone(), any::<bool>()).prop_map(|(id, detached)| Command::AddConsumer {
                id,
                name: format!("c{}", id.0),
                peer: "127.0.0.1:1".into(),
                detached,
            }),
            3 => (consumer.clone(), 1u64..4).prop_map(|(id, credit)| Command::Grant { id, credit }),
            1 => consumer.clone().prop_map(|id| Command::Revoke { id }),
            1 => consumer.prop_map(|id| Command::RemoveConsumer { id }),
            4 => proptest::collection::vec(op, 1..4).prop_map(|ops| Command::Settle { ops }),
            1 => (0u64..40, 1u32..4).prop_map(|(id, a)| Command::Unsend { leases: vec![(TaskId(id), a)] }),
            3 => Just(Command::Tick),
            1 => (1u64..3, 1u64..5).prop_map(|(p, window)| Command::AddPublisher {
                id: PublisherId(p),
                window,
            }),
            1 => (1u64..3).prop_map(|p| Command::RemovePublisher { id: PublisherId(p) }),
            2 => (1u64..3, tasks).prop_map(|(p, tasks)| Command::Publish {
                id: PublisherId(p),
                tasks,
            }),
            1 => (1u64..3, 1u64..3).prop_map(|(p, n)| Command::PublishConfirmed {
                id: PublisherId(p),
                n,
            }),
            1 => Just(Command::Takeover),
            1 => proptest::collection::vec(0u64..40, 1..3)
                .prop_map(|ids| Command::Remove { ids: ids.into_iter().map(TaskId).collect() }),
            1 => (
                (1u64..6, 0u64..3, 0u64..3, 0u8..8),
                proptest::option::of((1u64..5, 100u64..1000, 1u64..3)),
                any::<bool>(),
            )
                .prop_map(|((capacity, cap, group_cap, paused), rate, lift_throttles)| {
                    let mut config = config(Order::Fifo, capacity);
                    config.max_in_flight = cap;
                    config.group_max_in_flight = group_cap;
                    config.paused = paused == 0;
                    config.rate = rate.map(|(tasks, per_ms, burst)| crate::RateLimit {
                        tasks,
                        per_ms,
                        burst,
                    });
                    Command::Configure {
                        config,
                        lift_throttles,
                    }
                }),
        ]
    }

    /// Gives every task a fresh id, as the broker does (ids are never
    /// reused), counting from 0 so that settles (ids below 40) find them.
    fn fresh_ids(commands: &mut [(u64, Command)]) {
        let mut next = 0;
        for (_, c) in commands {
            if let Command::Enqueue { tasks, .. }
            | Command::Store { tasks }
            | Command::Publish { tasks, .. } = c
            {
                for t in tasks {
                    t.id = TaskId(next);
                    next += 1;
                }
            }
        }
    }

    /// Points a settle's or unsend's leases at deliveries made so far
    /// (the generated id picks one of the latest): mostly the lease as delivered, a
    /// quarter of the time with a stale attempt, and a holder's claim
    /// that is right or wrong as generated.
    fn aim(command: &mut Command, delivered: &[(TaskId, u32, ConsumerId)]) {
        if delivered.is_empty() {
            return;
        }
        // Recent ones: older leases are mostly settled or expired.
        let pick = |id: TaskId| {
            let back = (id.0 as usize) % delivered.len().min(6);
            delivered[delivered.len() - 1 - back]
        };
        match command {
            Command::Settle { ops } => {
                for op in ops {
                    let (id, attempt, holder) = pick(op.id);
                    op.id = id;
                    if op.attempt < 3 {
                        op.attempt = attempt;
                    }
                    if let Claim::Holder(c) = &mut op.claim
                        && c.0 == 1
                    {
                        *c = holder;
                    }
                }
            }
            Command::Unsend { leases } => {
                for (id, attempt) in leases {
                    (*id, *attempt, _) = pick(*id);
                }
            }
            _ => {}
        }
    }

    /// What an engine told its caller, in a form two runs can compare
    /// (headers maps iterate in a per-map random order; their sorted
    /// pairs do not).
    fn told(fx: &Effects, outcome: &Outcome) -> String {
        let deliveries: Vec<_> = fx
            .deliveries
            .iter()
            .map(|(c, d)| {
                (
                    c.0,
                    d.id.0,
                    d.attempt,
                    d.deadline,
                    d.priority,
                    d.group.clone(),
                )
            })
            .collect();
        let dead: Vec<_> = fx
            .dead
            .iter()
            .map(|d| (d.id.0, d.attempts, d.reason, d.error.clone()))
            .collect();
        let completed: Vec<_> = fx
            .completed
            .iter()
            .map(|c| (c.id.0, c.succeeded, c.attempts, c.error.clone()))
            .collect();
        format!(
            "{outcome:?} {deliveries:?} {:?} {dead:?} {} {} {:?} {:?} {completed:?} {:?}",
            fx.admitted,
            fx.rearm,
            fx.changes.len(),
            fx.duplicates,
            fx.granted,
            fx.job_stored
        )
    }

    proptest! {
        /// One log of commands through three engines: equal digests after
        /// every command, equal effects, for every queue order. The third
        /// engine is also read between commands, which must change nothing,
        /// and every few commands is rebuilt from its image, as a member
        /// installing a snapshot would be: it must go on as the others do.
        #[test]
        fn one_log_through_three_engines_gives_one_state(
            order in prop_oneof![Just(Order::Fifo), Just(Order::Lifo), Just(Order::Priority)],
            capacity in 1u64..6,
            mut log in proptest::collection::vec((0u64..150, command()), 1..150),
        ) {
            fresh_ids(&mut log);
            let mut engines: Vec<QueueState> =
                (0..3).map(|_| QueueState::new(config(order, capacity))).collect();
            for e in &mut engines {
                e.keep_journal();
            }
            let mut now = 1_000_000;
            // Leases handed out so far, so settles mostly name real ones.
            let mut delivered: Vec<(TaskId, u32, ConsumerId)> = Vec::new();
            for (n, (step, mut command)) in log.into_iter().enumerate() {
                now += step;
                aim(&mut command, &delivered);
                if n % 5 == 4 {
                    let image = engines[2].image();
                    let config = engines[2].config().clone();
                    engines[2] = QueueState::from_image(config, image);
                    prop_assert_eq!(engines[2].digest(), engines[0].digest());
                }
                let mut said = Vec::new();
                for (i, e) in engines.iter_mut().enumerate() {
                    if i == 2 {
                        let _ = (e.stats(), e.consumer_stats(now), e.snapshot(), e.drain_rate(now), e.holds(now), e.group_stats(10));
                    }
                    let mut fx = Effects::default();
                    let outcome = e.execute(now, command.clone(), &mut fx);
                    if i == 0 {
                        delivered.extend(fx.deliveries.iter().map(|(c, d)| (d.id, d.attempt, *c)));
                    }
                    said.push(told(&fx, &outcome));
                }
                prop_assert_eq!(&said[0], &said[1]);
                prop_assert_eq!(&said[0], &said[2]);
                let digests: Vec<u64> = engines.iter().map(QueueState::digest).collect();
                prop_assert_eq!(digests[0], digests[1]);
                prop_assert_eq!(digests[0], digests[2]);
            }
        }
    }

    #[test]
    fn the_digest_sees_a_difference_anywhere() {
        let run = |commands: Vec<Command>| {
            let mut q = QueueState::new(config(Order::Fifo, 10));
            let mut fx = Effects::default();
            for c in commands {
                q.execute(5, c, &mut fx);
            }
            q.digest()
        };
        let put = |ids: &[u64]| Command::Enqueue {
            tasks: ids.iter().map(|&i| task(i)).collect(),
            mode: EnqueueMode::FailFast,
            producer: None,
        };
        let consumer = Command::AddConsumer {
            id: ConsumerId(1),
            name: "c".into(),
            peer: String::new(),
            detached: false,
        };
        let grant = Command::Grant {
            id: ConsumerId(1),
            credit: 1,
        };
        let base = run(vec![put(&[1, 2])]);
        // The same state reached another way, or untouched by a no-op.
        assert_eq!(base, run(vec![put(&[1]), put(&[2])]));
        assert_eq!(base, run(vec![put(&[1, 2]), grant.clone()]));
        for (other, what) in [
            (run(vec![put(&[2, 1])]), "the order of the tasks"),
            (run(vec![put(&[1])]), "a task fewer"),
            (run(vec![put(&[1, 2]), consumer.clone()]), "a consumer"),
            (run(vec![put(&[1, 2]), consumer, grant]), "a lease"),
        ] {
            assert_ne!(base, other, "{what}");
        }
    }

    #[test]
    fn a_takeover_keeps_leases_for_their_tokens_and_drops_the_rest() {
        let mut q = QueueState::new(config(Order::Fifo, 2));
        let mut fx = Effects::default();
        let run = |q: &mut QueueState, c: Command, fx: &mut Effects| q.execute(10, c, fx);
        run(
            &mut q,
            Command::Enqueue {
                tasks: vec![task(1), task(2)],
                mode: EnqueueMode::FailFast,
                producer: None,
            },
            &mut fx,
        );
        run(
            &mut q,
            Command::AddConsumer {
                id: ConsumerId(1),
                name: "w".into(),
                peer: String::new(),
                detached: false,
            },
            &mut fx,
        );
        run(
            &mut q,
            Command::Grant {
                id: ConsumerId(1),
                credit: 1,
            },
            &mut fx,
        );
        run(
            &mut q,
            Command::Enqueue {
                tasks: vec![task(3), task(4)],
                mode: EnqueueMode::Wait(WaitingId(7)),
                producer: None,
            },
            &mut fx,
        );
        run(
            &mut q,
            Command::AddPublisher {
                id: PublisherId(5),
                window: 1,
            },
            &mut fx,
        );
        run(&mut q, Command::Takeover, &mut fx);
        let s = q.stats();
        assert_eq!((s.consumers, s.waiting_producers, s.publishers), (0, 0, 0));
        assert_eq!(
            (s.leased, s.ready),
            (1, 1),
            "the lease stays; nothing came back"
        );
        // The old stream's claim is gone; the token's still settles it.
        let ack = |claim| Command::Settle {
            ops: vec![SettleOp {
                id: TaskId(1),
                attempt: 1,
                claim,
                kind: SettleKind::Ack {
                    result: Bytes::new(),
                },
            }],
        };
        let held = run(&mut q, ack(Claim::Holder(ConsumerId(1))), &mut fx);
        assert_eq!(held, Outcome::Settled(vec![Err(SettleError::StaleLease)]));
        let token = run(&mut q, ack(Claim::Token), &mut fx);
        assert_eq!(token, Outcome::Settled(vec![Ok(None)]));
    }

    #[test]
    fn a_batch_sent_again_is_stored_once_whichever_copy_waits() {
        let send = |first: u64, wait: u64| Command::Enqueue {
            tasks: vec![task(first), task(first + 1)],
            mode: EnqueueMode::Wait(WaitingId(wait)),
            producer: Some(ProducerSeq {
                producer: "p".into(),
                seq: 1,
            }),
        };
        let mut q = QueueState::new(config(Order::Fifo, 2));
        let mut fx = Effects::default();
        let fill = Command::Enqueue {
            tasks: vec![task(1), task(2)],
            mode: EnqueueMode::FailFast,
            producer: None,
        };
        q.execute(0, fill, &mut fx);
        // Full: the batch waits, and so does its copy (its first call's
        // answer was lost while it waited).
        for (first, wait) in [(10, 1), (20, 2)] {
            let out = q.execute(1, send(first, wait), &mut fx);
            assert!(matches!(
                out,
                Outcome::Enqueue {
                    result: Ok(Enqueued::Waiting(_)),
                    ..
                }
            ));
        }
        q.execute(2, Command::Purge, &mut fx);
        let admitted: Vec<_> = fx.admitted.drain(..).collect();
        assert_eq!(admitted.len(), 2);
        assert!(
            admitted[0].duplicates.is_empty(),
            "the first copy is stored"
        );
        assert_eq!(
            admitted[1].duplicates,
            vec![(TaskId(20), TaskId(10)), (TaskId(21), TaskId(11))],
            "the second is answered the first's ids"
        );
        assert_eq!(q.depth(), 2, "stored once");

        // A third copy, even on a full queue, is answered at once.
        fx.duplicates.clear();
        let out = q.execute(3, send(30, 3), &mut fx);
        assert!(matches!(
            out,
            Outcome::Enqueue {
                result: Ok(Enqueued::Stored),
                ..
            }
        ));
        assert_eq!(
            fx.duplicates,
            vec![(TaskId(30), TaskId(10)), (TaskId(31), TaskId(11))]
        );
        assert_eq!(q.depth(), 2);
    }
}
