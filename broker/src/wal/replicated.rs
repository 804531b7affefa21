//! What a cluster's Raft log says (proposals) and what its snapshots hold
//! (every durable queue's whole state, the jobs, the largest ids), as
//! protobuf messages: the members' private format, declared with prost's
//! derive like the local log's records, and like them only ever extended.
//!
//! A proposal is what one call on the leader did: the engine commands it
//! ran on one or more queues (several when a dead-lettered task moves:
//! its source queue's commands and its arrival in the dead letter queue,
//! in one entry, so the move is atomic), or a queue defined or deleted, or
//! a job sealed. It carries the leader's
//! `now`: members apply it at that time, not at their own.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message;

use super::codec::{JobRecord, QueueDef, ScheduleRecord, ScheduleState};
use crate::engine::{
    Claim, Command, ConsumerId, EnqueueMode, ImageConsumer, ImageGroup, ImageKey, ImageLease,
    ImageMark, ImagePublisher, ImageTask, ImageWaiting, MarkedBatch, Millis, NackAction, NewTask,
    Producer, ProducerSeq, PublisherId, QueueImage, QueueStats, SettleKind, SettleOp, TaskBody,
    TaskId, Throttle, WaitingId,
};

/// One Raft entry's command.
#[derive(Clone, PartialEq, Message)]
pub struct ProposalMsg {
    /// The leader's clock when it ran the commands, ms since the epoch.
    #[prost(uint64, tag = "1")]
    pub now: u64,
    /// Engine commands, per queue, in the order they ran.
    #[prost(message, repeated, tag = "2")]
    pub queues: Vec<QueueCommands>,
    /// A durable queue defined.
    #[prost(message, optional, tag = "3")]
    pub define: Option<QueueDef>,
    /// A queue deleted (its name); empty: none.
    #[prost(string, tag = "4")]
    pub delete: String,
    /// A job sealed.
    #[prost(message, optional, tag = "5")]
    pub seal: Option<SealMsg>,
    /// The cluster's lease-token key (16 bytes), proposed once by its
    /// first leader: every member then verifies the same tokens.
    #[prost(bytes = "bytes", tag = "7")]
    pub lease_key: Bytes,
    /// A schedule defined, deleted, paused or resumed, or its ticks
    /// handled (the leader fires; members only follow).
    #[prost(message, optional, tag = "8")]
    pub schedule: Option<ScheduleRecord>,
}

#[derive(Clone, PartialEq, Message)]
pub struct QueueCommands {
    #[prost(string, tag = "1")]
    pub queue: String,
    #[prost(message, repeated, tag = "2")]
    pub commands: Vec<CommandMsg>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SealMsg {
    #[prost(string, tag = "1")]
    pub job: String,
    /// The total the leader sealed it at.
    #[prost(uint64, tag = "2")]
    pub total: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct CommandMsg {
    #[prost(
        oneof = "command_msg::Kind",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19"
    )]
    pub kind: Option<command_msg::Kind>,
}

pub mod command_msg {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Enqueue(super::EnqueueMsg),
        /// The waiting batch's id.
        #[prost(uint64, tag = "2")]
        CancelWait(u64),
        #[prost(message, tag = "3")]
        Store(super::TaskList),
        #[prost(message, tag = "4")]
        Retract(super::IdList),
        #[prost(bool, tag = "5")]
        Purge(bool),
        #[prost(message, tag = "6")]
        AddConsumer(super::AddConsumerMsg),
        #[prost(message, tag = "7")]
        Grant(super::GrantMsg),
        /// The consumer's id.
        #[prost(uint64, tag = "8")]
        Revoke(u64),
        /// The consumer's id.
        #[prost(uint64, tag = "9")]
        RemoveConsumer(u64),
        #[prost(message, tag = "10")]
        Settle(super::SettleList),
        #[prost(message, tag = "11")]
        Unsend(super::LeaseList),
        #[prost(bool, tag = "12")]
        Tick(bool),
        #[prost(message, tag = "13")]
        AddPublisher(super::GrantMsg),
        /// The publisher's id.
        #[prost(uint64, tag = "14")]
        RemovePublisher(u64),
        #[prost(message, tag = "15")]
        Publish(super::PublishMsg),
        #[prost(message, tag = "16")]
        PublishConfirmed(super::GrantMsg),
        #[prost(bool, tag = "17")]
        Takeover(bool),
        #[prost(message, tag = "18")]
        Configure(super::ConfigureMsg),
        /// Waiting tasks removed (a redrive moved them).
        #[prost(message, tag = "19")]
        Remove(super::IdList),
    }
}

/// New options for a queue (UpdateQueue).
#[derive(Clone, PartialEq, Message)]
pub struct ConfigureMsg {
    /// The options, as a definition carries them (its name and creation
    /// time are not used).
    #[prost(message, optional, tag = "1")]
    pub def: Option<QueueDef>,
    #[prost(bool, tag = "2")]
    pub lift_throttles: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct NewTaskMsg {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub payload: Bytes,
    #[prost(map = "string, string", tag = "3")]
    pub headers: HashMap<String, String>,
    #[prost(int32, tag = "4")]
    pub priority: i32,
    #[prost(uint64, tag = "5")]
    pub delay_ms: u64,
    #[prost(string, optional, tag = "6")]
    pub key: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub job: Option<String>,
    #[prost(string, optional, tag = "8")]
    pub group: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct EnqueueMsg {
    #[prost(message, repeated, tag = "1")]
    pub tasks: Vec<NewTaskMsg>,
    /// The waiting batch's id when it may wait; 0: fail fast.
    #[prost(uint64, tag = "2")]
    pub wait: u64,
    /// The producer that sent it, if it named itself.
    #[prost(string, optional, tag = "3")]
    pub producer: Option<String>,
    /// The producer's number of this batch.
    #[prost(uint64, tag = "4")]
    pub seq: u64,
}

/// A producer's batch as a waiting batch remembers it.
#[derive(Clone, PartialEq, Message)]
pub struct ProducerMsg {
    #[prost(string, tag = "1")]
    pub producer: String,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(uint64, tag = "3")]
    pub first: u64,
    #[prost(uint32, tag = "4")]
    pub n: u32,
}

/// A producer's recent batches.
#[derive(Clone, PartialEq, Message)]
pub struct MarkMsg {
    #[prost(string, tag = "1")]
    pub producer: String,
    #[prost(uint64, tag = "2")]
    pub used: u64,
    #[prost(message, repeated, tag = "3")]
    pub batches: Vec<MarkedBatchMsg>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MarkedBatchMsg {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(uint64, tag = "2")]
    pub first: u64,
    #[prost(uint32, tag = "3")]
    pub n: u32,
    /// (new id, holder) pairs, flattened.
    #[prost(uint64, repeated, tag = "4")]
    pub dups: Vec<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TaskList {
    #[prost(message, repeated, tag = "1")]
    pub tasks: Vec<NewTaskMsg>,
}

#[derive(Clone, PartialEq, Message)]
pub struct IdList {
    #[prost(uint64, repeated, tag = "1")]
    pub ids: Vec<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AddConsumerMsg {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub peer: String,
    #[prost(bool, tag = "4")]
    pub detached: bool,
}

/// An id and a number: credit granted, a window, tasks confirmed.
#[derive(Clone, PartialEq, Message)]
pub struct GrantMsg {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub n: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct SettleList {
    #[prost(message, repeated, tag = "1")]
    pub ops: Vec<SettleOpMsg>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SettleOpMsg {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
    /// The stream claiming the lease as its holder; 0: a verified token.
    #[prost(uint64, tag = "3")]
    pub holder: u64,
    #[prost(oneof = "settle_op_msg::Kind", tags = "4, 5, 6")]
    pub kind: Option<settle_op_msg::Kind>,
}

pub mod settle_op_msg {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// An ack's result.
        #[prost(bytes = "bytes", tag = "4")]
        Ack(bytes::Bytes),
        #[prost(message, tag = "5")]
        Nack(super::NackMsg),
        /// An extend's length, ms.
        #[prost(uint64, tag = "6")]
        Extend(u64),
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct NackMsg {
    /// 0 retry, 1 drop, 2 dead letter.
    #[prost(uint32, tag = "1")]
    pub action: u32,
    #[prost(uint64, optional, tag = "2")]
    pub delay_ms: Option<u64>,
    #[prost(int32, optional, tag = "3")]
    pub priority: Option<i32>,
    #[prost(string, tag = "4")]
    pub error: String,
    /// A throttle's length, ms; 0: none.
    #[prost(uint64, tag = "5")]
    pub throttle_ms: u64,
    /// The throttle holds only the task's group.
    #[prost(bool, tag = "6")]
    pub throttle_group: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct LeaseList {
    #[prost(uint64, repeated, tag = "1")]
    pub ids: Vec<u64>,
    #[prost(uint32, repeated, tag = "2")]
    pub attempts: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PublishMsg {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, repeated, tag = "2")]
    pub tasks: Vec<NewTaskMsg>,
}

fn task_msg(t: &NewTask) -> NewTaskMsg {
    NewTaskMsg {
        id: t.id.0,
        payload: t.payload.clone(),
        headers: t.headers.clone(),
        priority: t.priority,
        delay_ms: t.delay_ms,
        key: t.key.as_deref().map(str::to_owned),
        job: t.job.as_deref().map(str::to_owned),
        group: t.group.as_deref().map(str::to_owned),
    }
}

fn task_of(m: NewTaskMsg) -> NewTask {
    NewTask {
        id: TaskId(m.id),
        payload: m.payload,
        headers: m.headers,
        priority: m.priority,
        delay_ms: m.delay_ms,
        key: m.key.map(Into::into),
        job: m.job.map(Into::into),
        group: m.group.map(Into::into),
    }
}

fn tasks_msg(tasks: &[NewTask]) -> Vec<NewTaskMsg> {
    tasks.iter().map(task_msg).collect()
}

fn tasks_of(m: Vec<NewTaskMsg>) -> Vec<NewTask> {
    m.into_iter().map(task_of).collect()
}

/// A command as a proposal carries it.
pub fn command_msg(c: &Command) -> CommandMsg {
    use command_msg::Kind as K;
    let kind = match c {
        Command::Enqueue {
            tasks,
            mode,
            producer,
        } => K::Enqueue(EnqueueMsg {
            tasks: tasks_msg(tasks),
            wait: match mode {
                EnqueueMode::Wait(id) => id.0,
                EnqueueMode::FailFast => 0,
            },
            producer: producer.as_ref().map(|p| p.producer.to_string()),
            seq: producer.as_ref().map_or(0, |p| p.seq),
        }),
        Command::CancelWait { id } => K::CancelWait(id.0),
        Command::Store { tasks } => K::Store(TaskList {
            tasks: tasks_msg(tasks),
        }),
        Command::Retract { ids } => K::Retract(IdList {
            ids: ids.iter().map(|i| i.0).collect(),
        }),
        Command::Purge => K::Purge(true),
        Command::AddConsumer {
            id,
            name,
            peer,
            detached,
        } => K::AddConsumer(AddConsumerMsg {
            id: id.0,
            name: name.clone(),
            peer: peer.clone(),
            detached: *detached,
        }),
        Command::Grant { id, credit } => K::Grant(GrantMsg {
            id: id.0,
            n: *credit,
        }),
        Command::Revoke { id } => K::Revoke(id.0),
        Command::RemoveConsumer { id } => K::RemoveConsumer(id.0),
        Command::Settle { ops } => K::Settle(SettleList {
            ops: ops.iter().map(settle_msg).collect(),
        }),
        Command::Unsend { leases } => K::Unsend(LeaseList {
            ids: leases.iter().map(|(id, _)| id.0).collect(),
            attempts: leases.iter().map(|(_, a)| *a).collect(),
        }),
        Command::Tick => K::Tick(true),
        Command::AddPublisher { id, window } => K::AddPublisher(GrantMsg {
            id: id.0,
            n: *window,
        }),
        Command::RemovePublisher { id } => K::RemovePublisher(id.0),
        Command::Publish { id, tasks } => K::Publish(PublishMsg {
            id: id.0,
            tasks: tasks_msg(tasks),
        }),
        Command::PublishConfirmed { id, n } => K::PublishConfirmed(GrantMsg { id: id.0, n: *n }),
        Command::Takeover => K::Takeover(true),
        Command::Remove { ids } => K::Remove(IdList {
            ids: ids.iter().map(|i| i.0).collect(),
        }),
        Command::Configure {
            config,
            lift_throttles,
        } => {
            let spec = crate::engine::QueueSpec {
                name: String::new(),
                config: config.clone(),
                durable: true,
            };
            K::Configure(ConfigureMsg {
                def: Some(super::queue_def(&spec, 0)),
                lift_throttles: *lift_throttles,
            })
        }
    };
    CommandMsg { kind: Some(kind) }
}

fn settle_msg(op: &SettleOp) -> SettleOpMsg {
    use settle_op_msg::Kind as K;
    let kind = match &op.kind {
        SettleKind::Ack { result } => K::Ack(result.clone()),
        SettleKind::Nack {
            action,
            error,
            throttle,
        } => K::Nack(NackMsg {
            throttle_ms: throttle.map_or(0, |t| t.ms),
            throttle_group: throttle.is_some_and(|t| t.group),
            ..match action {
                NackAction::Retry { delay_ms, priority } => NackMsg {
                    action: 0,
                    delay_ms: *delay_ms,
                    priority: *priority,
                    error: error.clone(),
                    ..Default::default()
                },
                NackAction::Drop => NackMsg {
                    action: 1,
                    error: error.clone(),
                    ..Default::default()
                },
                NackAction::DeadLetter => NackMsg {
                    action: 2,
                    error: error.clone(),
                    ..Default::default()
                },
            }
        }),
        SettleKind::Extend { ms } => K::Extend(*ms),
    };
    SettleOpMsg {
        id: op.id.0,
        attempt: op.attempt,
        holder: match op.claim {
            Claim::Token => 0,
            Claim::Holder(c) => c.0,
        },
        kind: Some(kind),
    }
}

/// The command a proposal's message carries.
pub fn command_of(m: CommandMsg) -> Result<Command, String> {
    use command_msg::Kind as K;
    Ok(match m.kind.ok_or("empty command")? {
        K::Enqueue(e) => Command::Enqueue {
            tasks: tasks_of(e.tasks),
            mode: match e.wait {
                0 => EnqueueMode::FailFast,
                w => EnqueueMode::Wait(WaitingId(w)),
            },
            producer: e.producer.map(|p| ProducerSeq {
                producer: p.into(),
                seq: e.seq,
            }),
        },
        K::CancelWait(id) => Command::CancelWait { id: WaitingId(id) },
        K::Store(t) => Command::Store {
            tasks: tasks_of(t.tasks),
        },
        K::Retract(l) => Command::Retract {
            ids: l.ids.into_iter().map(TaskId).collect(),
        },
        K::Purge(_) => Command::Purge,
        K::AddConsumer(a) => Command::AddConsumer {
            id: ConsumerId(a.id),
            name: a.name,
            peer: a.peer,
            detached: a.detached,
        },
        K::Grant(g) => Command::Grant {
            id: ConsumerId(g.id),
            credit: g.n,
        },
        K::Revoke(id) => Command::Revoke { id: ConsumerId(id) },
        K::RemoveConsumer(id) => Command::RemoveConsumer { id: ConsumerId(id) },
        K::Settle(s) => Command::Settle {
            ops: s.ops.into_iter().map(settle_of).collect::<Result<_, _>>()?,
        },
        K::Unsend(l) => {
            if l.ids.len() != l.attempts.len() {
                return Err("unsend: ids and attempts differ in number".into());
            }
            Command::Unsend {
                leases: l.ids.into_iter().map(TaskId).zip(l.attempts).collect(),
            }
        }
        K::Tick(_) => Command::Tick,
        K::AddPublisher(g) => Command::AddPublisher {
            id: PublisherId(g.id),
            window: g.n,
        },
        K::RemovePublisher(id) => Command::RemovePublisher {
            id: PublisherId(id),
        },
        K::Publish(p) => Command::Publish {
            id: PublisherId(p.id),
            tasks: tasks_of(p.tasks),
        },
        K::PublishConfirmed(g) => Command::PublishConfirmed {
            id: PublisherId(g.id),
            n: g.n,
        },
        K::Takeover(_) => Command::Takeover,
        K::Remove(l) => Command::Remove {
            ids: l.ids.into_iter().map(TaskId).collect(),
        },
        K::Configure(c) => Command::Configure {
            config: super::queue_spec(&c.def.ok_or("configure without options")?)?.config,
            lift_throttles: c.lift_throttles,
        },
    })
}

fn settle_of(m: SettleOpMsg) -> Result<SettleOp, String> {
    use settle_op_msg::Kind as K;
    let kind = match m.kind.ok_or("settle op without a kind")? {
        K::Ack(result) => SettleKind::Ack { result },
        K::Nack(n) => SettleKind::Nack {
            action: match n.action {
                0 => NackAction::Retry {
                    delay_ms: n.delay_ms,
                    priority: n.priority,
                },
                1 => NackAction::Drop,
                2 => NackAction::DeadLetter,
                a => return Err(format!("unknown nack action {a}")),
            },
            error: n.error,
            throttle: (n.throttle_ms > 0).then_some(Throttle {
                ms: n.throttle_ms,
                group: n.throttle_group,
            }),
        },
        K::Extend(ms) => SettleKind::Extend { ms },
    };
    Ok(SettleOp {
        id: TaskId(m.id),
        attempt: m.attempt,
        claim: match m.holder {
            0 => Claim::Token,
            c => Claim::Holder(ConsumerId(c)),
        },
        kind,
    })
}

/// The proposal of commands run on queues, in order.
pub fn commands(now: Millis, parts: &[(&str, &[Command])]) -> Bytes {
    encode(ProposalMsg {
        now,
        queues: parts
            .iter()
            .map(|(q, cmds)| QueueCommands {
                queue: (*q).to_owned(),
                commands: cmds.iter().map(command_msg).collect(),
            })
            .collect(),
        ..Default::default()
    })
}

/// The proposal defining a durable queue.
pub fn define(def: QueueDef, now: Millis) -> Bytes {
    encode(ProposalMsg {
        now,
        define: Some(def),
        ..Default::default()
    })
}

/// The proposal deleting a queue.
pub fn delete(name: &str, now: Millis) -> Bytes {
    encode(ProposalMsg {
        now,
        delete: name.to_owned(),
        ..Default::default()
    })
}

/// The proposal sealing a job at `total` tasks.
pub fn seal(job: &str, total: u64, now: Millis) -> Bytes {
    encode(ProposalMsg {
        now,
        seal: Some(SealMsg {
            job: job.to_owned(),
            total,
        }),
        ..Default::default()
    })
}

/// The proposal of a schedule's change.
pub fn schedule(r: ScheduleRecord, now: Millis) -> Bytes {
    encode(ProposalMsg {
        now,
        schedule: Some(r),
        ..Default::default()
    })
}

/// The proposal of the cluster's lease-token key.
pub fn lease_key(key: [u8; 16], now: Millis) -> Bytes {
    encode(ProposalMsg {
        now,
        lease_key: Bytes::copy_from_slice(&key),
        ..Default::default()
    })
}

fn encode(m: ProposalMsg) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

/// Decodes a proposal.
pub fn proposal(bytes: &[u8]) -> Result<ProposalMsg, String> {
    ProposalMsg::decode(bytes).map_err(|e| format!("proposal does not decode: {e}"))
}

// ---------------------------------------------------------------- images

/// Everything a cluster replicates, for a snapshot.
#[derive(Clone, PartialEq, Message)]
pub struct MachineImage {
    #[prost(message, repeated, tag = "1")]
    pub queues: Vec<QueueImageMsg>,
    /// Each job's whole state (as a compaction writes it).
    #[prost(message, repeated, tag = "2")]
    pub jobs: Vec<JobRecord>,
    /// The largest task id any command carried.
    #[prost(uint64, tag = "3")]
    pub max_task_id: u64,
    /// The largest consumer, waiting batch or publisher id any command
    /// carried.
    #[prost(uint64, tag = "4")]
    pub max_other_id: u64,
    /// The cluster's lease-token key; empty until its first leader set it.
    #[prost(bytes = "bytes", tag = "5")]
    pub lease_key: Bytes,
    /// Every schedule's whole state.
    #[prost(message, repeated, tag = "6")]
    pub schedules: Vec<ScheduleState>,
}

#[derive(Clone, PartialEq, Message)]
pub struct QueueImageMsg {
    #[prost(message, optional, tag = "1")]
    pub def: Option<QueueDef>,
    #[prost(message, repeated, tag = "2")]
    pub ready: Vec<TaskMsg>,
    #[prost(message, repeated, tag = "3")]
    pub delayed: Vec<TaskMsg>,
    #[prost(message, repeated, tag = "4")]
    pub leased: Vec<TaskMsg>,
    #[prost(message, repeated, tag = "5")]
    pub waiting: Vec<WaitingMsg>,
    #[prost(message, repeated, tag = "6")]
    pub consumers: Vec<ConsumerMsg>,
    #[prost(uint64, repeated, tag = "7")]
    pub ring: Vec<u64>,
    #[prost(uint64, tag = "8")]
    pub next_seq: u64,
    /// enqueued, delivered, acked, nacked, expired, dead, purged totals.
    #[prost(uint64, repeated, tag = "9")]
    pub totals: Vec<u64>,
    #[prost(bool, tag = "10")]
    pub journal: bool,
    #[prost(message, repeated, tag = "11")]
    pub errors: Vec<IdText>,
    #[prost(uint64, repeated, tag = "12")]
    pub retrying: Vec<u64>,
    #[prost(message, repeated, tag = "13")]
    pub keys: Vec<KeyMsg>,
    #[prost(message, repeated, tag = "14")]
    pub task_keys: Vec<IdText>,
    #[prost(message, repeated, tag = "15")]
    pub key_expiry: Vec<KeyMsg>,
    /// (second, deliveries) pairs, flattened.
    #[prost(uint64, repeated, tag = "16")]
    pub drained: Vec<u64>,
    /// (id, window, reserved, pending) per publisher, flattened.
    #[prost(uint64, repeated, tag = "17")]
    pub publishers: Vec<u64>,
    #[prost(uint64, repeated, tag = "18")]
    pub publisher_ring: Vec<u64>,
    #[prost(message, repeated, tag = "19")]
    pub task_jobs: Vec<IdText>,
    #[prost(message, repeated, tag = "20")]
    pub marks: Vec<MarkMsg>,
    /// Groups: the default one first, then by name.
    #[prost(message, repeated, tag = "21")]
    pub groups: Vec<GroupMsg>,
    /// The group of each task in a named group.
    #[prost(message, repeated, tag = "22")]
    pub task_groups: Vec<IdText>,
    #[prost(uint64, tag = "23")]
    pub next_turn: u64,
    /// A throttle on the whole queue; 0: none.
    #[prost(uint64, tag = "24")]
    pub throttled_until: u64,
    /// The rate limit's bucket: its theoretical arrival time, µs.
    #[prost(uint64, tag = "25")]
    pub bucket_tat_us: u64,
    #[prost(uint64, optional, tag = "26")]
    pub flow_wake: Option<u64>,
}

/// A fairness group in an image.
#[derive(Clone, PartialEq, Message)]
pub struct GroupMsg {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub throttled_until: u64,
    #[prost(uint64, optional, tag = "3")]
    pub turn: Option<u64>,
}

/// A task in an image, with where it is: due time (delayed), lease.
#[derive(Clone, PartialEq, Message)]
pub struct TaskMsg {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub payload: Bytes,
    #[prost(map = "string, string", tag = "3")]
    pub headers: HashMap<String, String>,
    #[prost(bool, tag = "4")]
    pub has_headers: bool,
    #[prost(uint64, tag = "5")]
    pub enqueued_at: u64,
    #[prost(uint64, tag = "6")]
    pub seq: u64,
    #[prost(int32, tag = "7")]
    pub priority: i32,
    #[prost(uint32, tag = "8")]
    pub attempt: u32,
    /// Delayed: when it is due.
    #[prost(uint64, tag = "9")]
    pub due: u64,
    /// Leased: its owner (0: none), deadline, and since when.
    #[prost(uint64, tag = "10")]
    pub owner: u64,
    #[prost(uint64, tag = "11")]
    pub deadline: u64,
    #[prost(uint64, tag = "12")]
    pub since: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct WaitingMsg {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, repeated, tag = "2")]
    pub tasks: Vec<NewTaskMsg>,
    #[prost(uint64, tag = "3")]
    pub at: u64,
    #[prost(bool, tag = "4")]
    pub keyed: bool,
    /// (new id, holder) pairs, flattened.
    #[prost(uint64, repeated, tag = "5")]
    pub dups: Vec<u64>,
    #[prost(message, optional, tag = "6")]
    pub producer: Option<ProducerMsg>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ConsumerMsg {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub peer: String,
    #[prost(uint64, tag = "4")]
    pub connected_at: u64,
    #[prost(uint64, tag = "5")]
    pub credit: u64,
    #[prost(bool, tag = "6")]
    pub detached: bool,
    /// (task, delivered at) pairs, flattened.
    #[prost(uint64, repeated, tag = "7")]
    pub in_flight: Vec<u64>,
    #[prost(uint64, tag = "8")]
    pub delivered: u64,
    #[prost(uint64, tag = "9")]
    pub acked: u64,
    #[prost(uint64, tag = "10")]
    pub nacked: u64,
    #[prost(uint64, tag = "11")]
    pub processing_ms_total: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct IdText {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub text: String,
}

/// A key in use (`done`+1, 0 while unfinished), or a key's expiry
/// (`done` holding when it ends).
#[derive(Clone, PartialEq, Message)]
pub struct KeyMsg {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(uint64, tag = "2")]
    pub id: u64,
    #[prost(uint64, tag = "3")]
    pub done: u64,
}

fn image_task_msg(t: &ImageTask) -> TaskMsg {
    TaskMsg {
        id: t.id.0,
        payload: t.body.payload.clone(),
        headers: t.body.headers.as_deref().cloned().unwrap_or_default(),
        has_headers: t.body.headers.is_some(),
        enqueued_at: t.body.enqueued_at,
        seq: t.seq,
        priority: t.priority,
        attempt: t.attempt,
        ..Default::default()
    }
}

fn image_task_of(m: &TaskMsg) -> ImageTask {
    ImageTask {
        id: TaskId(m.id),
        body: TaskBody {
            payload: m.payload.clone(),
            headers: m.has_headers.then(|| Box::new(m.headers.clone())),
            enqueued_at: m.enqueued_at,
        },
        seq: m.seq,
        priority: m.priority,
        attempt: m.attempt,
    }
}

fn pairs(v: &[u64]) -> impl Iterator<Item = (u64, u64)> + '_ {
    v.chunks_exact(2).map(|c| (c[0], c[1]))
}

/// A queue's image as a snapshot holds it.
pub fn image_msg(def: QueueDef, i: &QueueImage) -> QueueImageMsg {
    let s = &i.stats;
    QueueImageMsg {
        def: Some(def),
        ready: i.ready.iter().map(image_task_msg).collect(),
        delayed: i
            .delayed
            .iter()
            .map(|(due, t)| TaskMsg {
                due: *due,
                ..image_task_msg(t)
            })
            .collect(),
        leased: i
            .leased
            .iter()
            .map(|l| TaskMsg {
                owner: l.owner.0,
                deadline: l.deadline,
                since: l.since,
                ..image_task_msg(&l.task)
            })
            .collect(),
        waiting: i
            .waiting
            .iter()
            .map(|w| WaitingMsg {
                id: w.id.0,
                tasks: tasks_msg(&w.tasks),
                at: w.at,
                keyed: w.keyed,
                dups: w.dups.iter().flat_map(|(a, b)| [a.0, b.0]).collect(),
                producer: w.producer.as_ref().map(|p| ProducerMsg {
                    producer: p.seq.producer.to_string(),
                    seq: p.seq.seq,
                    first: p.first.0,
                    n: p.n,
                }),
            })
            .collect(),
        consumers: i
            .consumers
            .iter()
            .map(|c| ConsumerMsg {
                id: c.id.0,
                name: c.name.clone(),
                peer: c.peer.clone(),
                connected_at: c.connected_at,
                credit: c.credit,
                detached: c.detached,
                in_flight: c.in_flight.iter().flat_map(|(t, at)| [t.0, *at]).collect(),
                delivered: c.delivered,
                acked: c.acked,
                nacked: c.nacked,
                processing_ms_total: c.processing_ms_total,
            })
            .collect(),
        ring: i.ring.iter().map(|c| c.0).collect(),
        next_seq: i.next_seq,
        totals: vec![
            s.enqueued_total,
            s.delivered_total,
            s.acked_total,
            s.nacked_total,
            s.expired_total,
            s.dead_total,
            s.purged_total,
        ],
        journal: i.journal,
        errors: i
            .errors
            .iter()
            .map(|(id, e)| IdText {
                id: id.0,
                text: e.to_string(),
            })
            .collect(),
        retrying: i.retrying.iter().map(|t| t.0).collect(),
        keys: i
            .keys
            .iter()
            .map(|k| KeyMsg {
                key: k.key.to_string(),
                id: k.id.0,
                done: k.done.map_or(0, |d| d.saturating_add(1)),
            })
            .collect(),
        task_keys: i
            .task_keys
            .iter()
            .map(|(id, k)| IdText {
                id: id.0,
                text: k.to_string(),
            })
            .collect(),
        key_expiry: i
            .key_expiry
            .iter()
            .map(|(until, k, id)| KeyMsg {
                key: k.to_string(),
                id: id.0,
                done: *until,
            })
            .collect(),
        drained: i.drained.iter().flat_map(|(s, n)| [*s, *n]).collect(),
        publishers: i
            .publishers
            .iter()
            .flat_map(|p| [p.id.0, p.window, p.reserved, p.pending])
            .collect(),
        publisher_ring: i.publisher_ring.iter().map(|p| p.0).collect(),
        task_jobs: i
            .task_jobs
            .iter()
            .map(|(id, j)| IdText {
                id: id.0,
                text: j.to_string(),
            })
            .collect(),
        marks: i
            .marks
            .iter()
            .map(|m| MarkMsg {
                producer: m.producer.to_string(),
                used: m.used,
                batches: m
                    .batches
                    .iter()
                    .map(|b| MarkedBatchMsg {
                        seq: b.seq,
                        first: b.first.0,
                        n: b.n,
                        dups: b.dups.iter().flat_map(|(a, h)| [a.0, h.0]).collect(),
                    })
                    .collect(),
            })
            .collect(),
        groups: i
            .groups
            .iter()
            .map(|g| GroupMsg {
                name: g.name.to_string(),
                throttled_until: g.throttled_until,
                turn: g.turn,
            })
            .collect(),
        task_groups: i
            .task_groups
            .iter()
            .map(|(id, g)| IdText {
                id: id.0,
                text: g.to_string(),
            })
            .collect(),
        next_turn: i.next_turn,
        throttled_until: i.throttled_until,
        bucket_tat_us: i.bucket_tat_us,
        flow_wake: i.flow_wake,
    }
}

/// The image a snapshot's message holds.
pub fn image_of(m: &QueueImageMsg) -> QueueImage {
    let total = |i: usize| m.totals.get(i).copied().unwrap_or(0);
    QueueImage {
        ready: m.ready.iter().map(image_task_of).collect(),
        delayed: m
            .delayed
            .iter()
            .map(|t| (t.due, image_task_of(t)))
            .collect(),
        leased: m
            .leased
            .iter()
            .map(|t| ImageLease {
                task: image_task_of(t),
                owner: ConsumerId(t.owner),
                deadline: t.deadline,
                since: t.since,
            })
            .collect(),
        waiting: m
            .waiting
            .iter()
            .map(|w| ImageWaiting {
                id: WaitingId(w.id),
                tasks: tasks_of(w.tasks.clone()),
                at: w.at,
                keyed: w.keyed,
                dups: pairs(&w.dups)
                    .map(|(a, b)| (TaskId(a), TaskId(b)))
                    .collect(),
                producer: w.producer.as_ref().map(|p| Producer {
                    seq: ProducerSeq {
                        producer: p.producer.as_str().into(),
                        seq: p.seq,
                    },
                    first: TaskId(p.first),
                    n: p.n,
                }),
            })
            .collect(),
        consumers: m
            .consumers
            .iter()
            .map(|c| ImageConsumer {
                id: ConsumerId(c.id),
                name: c.name.clone(),
                peer: c.peer.clone(),
                connected_at: c.connected_at,
                credit: c.credit,
                detached: c.detached,
                in_flight: pairs(&c.in_flight).map(|(t, at)| (TaskId(t), at)).collect(),
                delivered: c.delivered,
                acked: c.acked,
                nacked: c.nacked,
                processing_ms_total: c.processing_ms_total,
            })
            .collect(),
        ring: m.ring.iter().copied().map(ConsumerId).collect(),
        next_seq: m.next_seq,
        stats: QueueStats {
            enqueued_total: total(0),
            delivered_total: total(1),
            acked_total: total(2),
            nacked_total: total(3),
            expired_total: total(4),
            dead_total: total(5),
            purged_total: total(6),
            ..QueueStats::default()
        },
        journal: m.journal,
        errors: m
            .errors
            .iter()
            .map(|e| (TaskId(e.id), e.text.as_str().into()))
            .collect(),
        retrying: m.retrying.iter().copied().map(TaskId).collect(),
        keys: m
            .keys
            .iter()
            .map(|k| ImageKey {
                key: k.key.as_str().into(),
                id: TaskId(k.id),
                done: k.done.checked_sub(1),
            })
            .collect(),
        task_keys: m
            .task_keys
            .iter()
            .map(|e| (TaskId(e.id), e.text.as_str().into()))
            .collect(),
        key_expiry: m
            .key_expiry
            .iter()
            .map(|k| (k.done, k.key.as_str().into(), TaskId(k.id)))
            .collect(),
        drained: pairs(&m.drained).collect(),
        publishers: m
            .publishers
            .chunks_exact(4)
            .map(|p| ImagePublisher {
                id: PublisherId(p[0]),
                window: p[1],
                reserved: p[2],
                pending: p[3],
            })
            .collect(),
        publisher_ring: m.publisher_ring.iter().copied().map(PublisherId).collect(),
        task_jobs: m
            .task_jobs
            .iter()
            .map(|e| (TaskId(e.id), e.text.as_str().into()))
            .collect(),
        marks: m
            .marks
            .iter()
            .map(|k| ImageMark {
                producer: k.producer.as_str().into(),
                used: k.used,
                batches: k
                    .batches
                    .iter()
                    .map(|b| MarkedBatch {
                        seq: b.seq,
                        first: TaskId(b.first),
                        n: b.n,
                        dups: pairs(&b.dups)
                            .map(|(a, h)| (TaskId(a), TaskId(h)))
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
        groups: m
            .groups
            .iter()
            .map(|g| ImageGroup {
                name: g.name.as_str().into(),
                throttled_until: g.throttled_until,
                turn: g.turn,
            })
            .collect(),
        task_groups: m
            .task_groups
            .iter()
            .map(|e| (TaskId(e.id), e.text.as_str().into()))
            .collect(),
        next_turn: m.next_turn,
        throttled_until: m.throttled_until,
        bucket_tat_us: m.bucket_tat_us,
        flow_wake: m.flow_wake,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_survives_its_message() {
        let task = NewTask {
            id: TaskId(7),
            payload: Bytes::from_static(b"p"),
            headers: HashMap::from([("h".into(), "v".into())]),
            priority: -3,
            delay_ms: 40,
            key: Some("k".into()),
            job: Some("j".into()),
            group: None,
        };
        let all = vec![
            Command::Enqueue {
                tasks: vec![task.clone()],
                mode: EnqueueMode::Wait(WaitingId(3)),
                producer: Some(ProducerSeq {
                    producer: "p-1".into(),
                    seq: 9,
                }),
            },
            Command::Enqueue {
                tasks: vec![],
                mode: EnqueueMode::FailFast,
                producer: None,
            },
            Command::CancelWait { id: WaitingId(3) },
            Command::Store {
                tasks: vec![task.clone()],
            },
            Command::Retract {
                ids: vec![TaskId(1), TaskId(2)],
            },
            Command::Purge,
            Command::AddConsumer {
                id: ConsumerId(4),
                name: "w".into(),
                peer: "p".into(),
                detached: true,
            },
            Command::Grant {
                id: ConsumerId(4),
                credit: 9,
            },
            Command::Revoke { id: ConsumerId(4) },
            Command::RemoveConsumer { id: ConsumerId(4) },
            Command::Settle {
                ops: vec![
                    SettleOp {
                        id: TaskId(1),
                        attempt: 2,
                        claim: Claim::Holder(ConsumerId(4)),
                        kind: SettleKind::Ack {
                            result: Bytes::from_static(b"r"),
                        },
                    },
                    SettleOp {
                        id: TaskId(2),
                        attempt: 1,
                        claim: Claim::Token,
                        kind: SettleKind::Nack {
                            action: NackAction::Retry {
                                delay_ms: Some(5),
                                priority: None,
                            },
                            error: "e".into(),
                            throttle: None,
                        },
                    },
                    SettleOp {
                        id: TaskId(3),
                        attempt: 1,
                        claim: Claim::Token,
                        kind: SettleKind::Nack {
                            action: NackAction::DeadLetter,
                            error: String::new(),
                            throttle: None,
                        },
                    },
                    SettleOp {
                        id: TaskId(4),
                        attempt: 1,
                        claim: Claim::Token,
                        kind: SettleKind::Extend { ms: 100 },
                    },
                ],
            },
            Command::Unsend {
                leases: vec![(TaskId(1), 2)],
            },
            Command::Tick,
            Command::AddPublisher {
                id: PublisherId(5),
                window: 10,
            },
            Command::RemovePublisher { id: PublisherId(5) },
            Command::Publish {
                id: PublisherId(5),
                tasks: vec![task],
            },
            Command::PublishConfirmed {
                id: PublisherId(5),
                n: 2,
            },
            Command::Takeover,
            Command::Remove {
                ids: vec![TaskId(3), TaskId(9)],
            },
            Command::Configure {
                config: crate::engine::QueueConfig {
                    dead_letter: Some("dlq".into()),
                    max_in_flight: 4,
                    rate: Some(crate::engine::RateLimit {
                        tasks: 5,
                        per_ms: 1000,
                        burst: 2,
                    }),
                    group_max_in_flight: 1,
                    paused: true,
                    ..crate::engine::QueueConfig::basic(10, crate::engine::Order::Lifo, 1000)
                },
                lift_throttles: true,
            },
        ];
        let bytes = commands(42, &[("q", &all[..])]);
        let back = proposal(&bytes).expect("decodes");
        assert_eq!(back.now, 42);
        let decoded: Vec<Command> = back.queues[0]
            .commands
            .iter()
            .cloned()
            .map(command_of)
            .collect::<Result<_, _>>()
            .expect("commands decode");
        assert_eq!(decoded, all);
        assert!(proposal(&[0xff, 0x01]).is_err());
    }
}

#[cfg(test)]
mod image_tests {
    use super::*;
    use crate::engine::{Backoff, Effects, Order, QueueConfig, QueueSpec, QueueState};

    fn spec() -> QueueSpec {
        QueueSpec {
            name: "q".into(),
            config: QueueConfig {
                capacity: 6,
                order: Order::Priority,
                ack_deadline_ms: 1000,
                max_attempts: 3,
                retry: Backoff {
                    initial_ms: 100,
                    max_ms: 1000,
                    multiplier_milli: 2000,
                },
                key_window_ms: 500,
                dead_letter: None,
                max_in_flight: 10,
                rate: Some(crate::engine::RateLimit {
                    tasks: 100,
                    per_ms: 100,
                    burst: 10,
                }),
                group_max_in_flight: 2,
                paused: false,
            },
            durable: true,
        }
    }

    fn task(id: u64, key: Option<&str>, headers: bool) -> NewTask {
        NewTask {
            id: TaskId(id),
            payload: Bytes::from(id.to_string()),
            headers: if headers {
                HashMap::from([("h".into(), id.to_string())])
            } else {
                HashMap::new()
            },
            priority: (id % 3) as i32,
            delay_ms: if id == 4 { 300 } else { 0 },
            key: key.map(Into::into),
            job: id.is_multiple_of(2).then(|| "job".into()),
            group: (id % 3 == 1).then(|| "tenant".into()),
        }
    }

    /// A queue with something in every part of its state survives the
    /// trip through a snapshot's message: same digest, and the same
    /// answers to what comes next.
    #[test]
    fn a_queue_image_survives_its_message() {
        let spec = spec();
        let mut q = QueueState::new(spec.config.clone());
        q.keep_journal();
        let mut fx = Effects::default();
        let mut now = 1_000;
        let log = [
            Command::Enqueue {
                tasks: vec![task(1, Some("a"), true), task(2, None, false)],
                mode: EnqueueMode::FailFast,
                producer: Some(ProducerSeq {
                    producer: "p".into(),
                    seq: 1,
                }),
            },
            Command::Enqueue {
                tasks: vec![task(3, Some("b"), false), task(4, None, true)],
                mode: EnqueueMode::FailFast,
                producer: None,
            },
            Command::AddConsumer {
                id: ConsumerId(1),
                name: "w".into(),
                peer: "p".into(),
                detached: false,
            },
            Command::Grant {
                id: ConsumerId(1),
                credit: 2,
            },
            Command::Settle {
                ops: vec![SettleOp {
                    id: TaskId(1),
                    attempt: 1,
                    claim: Claim::Holder(ConsumerId(1)),
                    kind: SettleKind::Nack {
                        action: NackAction::Retry {
                            delay_ms: None,
                            priority: Some(-1),
                        },
                        error: "boom".into(),
                        throttle: Some(Throttle {
                            ms: 5000,
                            group: true,
                        }),
                    },
                }],
            },
            Command::Settle {
                ops: vec![SettleOp {
                    id: TaskId(3),
                    attempt: 1,
                    claim: Claim::Token,
                    kind: SettleKind::Ack {
                        result: Bytes::new(),
                    },
                }],
            },
            Command::Grant {
                id: ConsumerId(1),
                credit: 1,
            },
            Command::AddPublisher {
                id: PublisherId(9),
                window: 2,
            },
            Command::Enqueue {
                tasks: vec![
                    task(5, None, false),
                    task(6, None, false),
                    task(7, None, false),
                ],
                mode: EnqueueMode::Wait(WaitingId(8)),
                producer: Some(ProducerSeq {
                    producer: "p".into(),
                    seq: 2,
                }),
            },
        ];
        for c in log {
            now += 10;
            q.execute(now, c, &mut fx);
        }
        let image = q.image();
        assert!(
            !image.leased.is_empty()
                && !image.delayed.is_empty()
                && !image.waiting.is_empty()
                && !image.key_expiry.is_empty()
                && !image.publishers.is_empty()
                && !image.errors.is_empty()
                && !image.drained.is_empty()
                && image.groups.iter().any(|g| g.throttled_until > 0)
                && !image.task_groups.is_empty()
                && image.bucket_tat_us > 0,
            "the test fills every part: {image:?}"
        );
        let msg = image_msg(super::super::codec::queue_def(&spec, 5), &image);
        let bytes = msg.encode_to_vec();
        let back = QueueImageMsg::decode(bytes.as_slice()).expect("decodes");
        let mut r = QueueState::from_image(spec.config.clone(), image_of(&back));
        assert_eq!(r.digest(), q.digest());
        for e in [&mut q, &mut r] {
            let mut fx = Effects::default();
            e.execute(now + 2_000, Command::Tick, &mut fx);
        }
        assert_eq!(r.digest(), q.digest(), "and they go on alike");
    }
}
