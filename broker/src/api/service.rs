//! The gRPC handlers: decode, validate, call the broker, encode. No queue
//! logic lives here.

use std::pin::Pin;
use std::time::Duration;

use sluice_proto::v1 as pb;
use sluice_proto::v1::sluice_service_server::SluiceService;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::auth::{self, Role};
use crate::api::consume;
use crate::api::reply::{MAX_GROUPS_SHOWN, answered_ids, delivery, queue_info};
use crate::api::validate;
use crate::broker::{Broker, QueueHandle};
use crate::error::Error;
use crate::limits::Limits;

/// The `sluice.v1.SluiceService` implementation.
#[derive(Clone)]
pub struct Service {
    broker: Broker,
    limits: Limits,
    /// GetBrokerInfo's answer: fixed at start, so built once (but for a
    /// cluster member's view of its cluster, read at each call).
    info: std::sync::Arc<pb::GetBrokerInfoResponse>,
    cluster: Option<crate::api::info::ClusterView>,
}

impl Service {
    pub fn new(
        broker: Broker,
        limits: Limits,
        setup: crate::api::info::Setup,
        cluster: Option<crate::api::info::ClusterView>,
    ) -> Self {
        let mut info = crate::api::info::response(&setup, &limits);
        if cluster.is_some() {
            info.features.push("cluster".to_owned());
        }
        Service {
            broker,
            limits,
            info: std::sync::Arc::new(info),
            cluster,
        }
    }

    /// The queue of an existing schedule the caller may administer. A
    /// schedule of a queue the token may not read answers as an unknown
    /// one: names are not leaked.
    fn schedule_queue<T>(&self, req: &Request<T>, name: &str) -> Result<String, Status> {
        validate::schedule_name(name)?;
        let access = auth::access(req);
        let queue = self
            .broker
            .schedule(name)?
            .spec
            .map(|s| s.queue)
            .unwrap_or_default();
        if access.require(Role::Read, &queue).is_err() {
            return Err(Error::ScheduleNotFound(name.to_owned()).into());
        }
        access.require(Role::Admin, &queue)?;
        Ok(queue)
    }

    fn queue(&self, name: &str) -> Result<std::sync::Arc<QueueHandle>, Error> {
        validate::queue_name(name)?;
        self.broker.queue(name)
    }
}

/// Encoded bytes of schedules ListSchedules answers with at most: well
/// within a default client's 4 MiB.
const LIST_BYTES: usize = 1 << 20;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl SluiceService for Service {
    async fn create_queue(
        &self,
        req: Request<pb::CreateQueueRequest>,
    ) -> Result<Response<pb::CreateQueueResponse>, Status> {
        let access = auth::access(&req);
        access.require(Role::Admin, &req.get_ref().name)?;
        let req = req.into_inner();
        let spec = validate::queue_spec(&req.name, req.options.as_ref())?;
        // Dead letters are enqueued into their queue past its capacity:
        // only a token that may produce to it may send them there.
        if let Some(dlq) = &spec.config.dead_letter {
            access.require(Role::Produce, dlq)?;
        }
        let (q, created) = self.broker.create_queue(spec).await?;
        Ok(Response::new(pb::CreateQueueResponse {
            queue: Some(queue_info(&q, MAX_GROUPS_SHOWN)),
            created,
        }))
    }

    async fn update_queue(
        &self,
        req: Request<pb::UpdateQueueRequest>,
    ) -> Result<Response<pb::UpdateQueueResponse>, Status> {
        let access = auth::access(&req);
        access.require(Role::Admin, &req.get_ref().name)?;
        let req = req.into_inner();
        validate::queue_name(&req.name)?;
        // As at creation: a new dead letter queue needs the right to
        // produce to it.
        if let Some(dlq) = req.dead_letter.as_deref().filter(|d| !d.is_empty()) {
            access.require(Role::Produce, dlq)?;
        }
        let lift_throttles = req.paused == Some(false);
        let q = self
            .broker
            .update_queue(&req.name, lift_throttles, |current| {
                validate::updated_spec(current, &req)
            })
            .await?;
        Ok(Response::new(pb::UpdateQueueResponse {
            queue: Some(queue_info(&q, MAX_GROUPS_SHOWN)),
        }))
    }

    async fn create_schedule(
        &self,
        req: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::CreateScheduleResponse>, Status> {
        let access = auth::access(&req);
        let req = req.into_inner();
        // A schedule is a standing producer the broker runs for its
        // creator: it takes the queue's admin right, as its options do.
        let queue = req
            .schedule
            .as_ref()
            .map(|s| s.queue.as_str())
            .unwrap_or("");
        access.require(Role::Admin, queue)?;
        let spec = validate::schedule_spec(req.schedule, &self.limits)?;
        let (schedule, created) = self.broker.create_schedule(spec, req.paused).await?;
        Ok(Response::new(pb::CreateScheduleResponse {
            schedule: Some(schedule),
            created,
        }))
    }

    async fn list_schedules(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let access = auth::access(&req);
        let req = req.into_inner();
        if !req.queue.is_empty() {
            access.require(Role::Read, &req.queue)?;
        }
        let mut out = pb::ListSchedulesResponse::default();
        let mut size = 0;
        for s in self.broker.schedules().list() {
            let Some(spec) = &s.spec else { continue };
            if spec.name.as_str() <= req.after.as_str() && !req.after.is_empty()
                || (!req.queue.is_empty() && spec.queue != req.queue)
                || access.require(Role::Read, &spec.queue).is_err()
            {
                continue;
            }
            let len = prost::Message::encoded_len(&s) + 8;
            if !out.schedules.is_empty() && size + len > LIST_BYTES {
                out.next_after = out
                    .schedules
                    .last()
                    .and_then(|l| l.spec.as_ref())
                    .map(|l| l.name.clone())
                    .unwrap_or_default();
                break;
            }
            size += len;
            out.schedules.push(s);
        }
        Ok(Response::new(out))
    }

    async fn delete_schedule(
        &self,
        req: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let queue = self.schedule_queue(&req, &req.get_ref().name)?;
        self.broker.delete_schedule(&req.get_ref().name).await?;
        tracing::debug!(queue, "schedule deleted");
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }

    async fn pause_schedule(
        &self,
        req: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::PauseScheduleResponse>, Status> {
        self.schedule_queue(&req, &req.get_ref().name)?;
        let schedule = self
            .broker
            .pause_schedule(&req.get_ref().name, true)
            .await?;
        Ok(Response::new(pb::PauseScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn resume_schedule(
        &self,
        req: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::ResumeScheduleResponse>, Status> {
        self.schedule_queue(&req, &req.get_ref().name)?;
        let schedule = self
            .broker
            .pause_schedule(&req.get_ref().name, false)
            .await?;
        Ok(Response::new(pb::ResumeScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn get_queue(
        &self,
        req: Request<pb::GetQueueRequest>,
    ) -> Result<Response<pb::GetQueueResponse>, Status> {
        auth::access(&req).require(Role::Read, &req.get_ref().name)?;
        let q = self.queue(&req.get_ref().name)?;
        Ok(Response::new(pb::GetQueueResponse {
            queue: Some(queue_info(&q, MAX_GROUPS_SHOWN)),
        }))
    }

    async fn list_queues(
        &self,
        req: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        // Only the queues this token may read: names are not leaked either.
        let access = auth::access(&req);
        let queues = self
            .broker
            .queues()
            .iter()
            .filter(|q| access.require(Role::Read, q.name()).is_ok())
            .map(|q| queue_info(q, 0))
            .collect();
        Ok(Response::new(pb::ListQueuesResponse { queues }))
    }

    async fn delete_queue(
        &self,
        req: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        auth::access(&req).require(Role::Admin, &req.get_ref().name)?;
        let req = req.into_inner();
        validate::queue_name(&req.name)?;
        let discarded = self.broker.delete_queue(&req.name, req.if_empty).await?;
        Ok(Response::new(pb::DeleteQueueResponse { discarded }))
    }

    async fn purge_queue(
        &self,
        req: Request<pb::PurgeQueueRequest>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        auth::access(&req).require(Role::Admin, &req.get_ref().name)?;
        let q = self.queue(&req.get_ref().name)?;
        let purged = self.broker.apply(&q, |core, now, fx| {
            core.remove(now, crate::engine::Command::Purge, fx)
        });
        Ok(Response::new(pb::PurgeQueueResponse { purged }))
    }

    async fn enqueue(
        &self,
        req: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let deadline = call_deadline(&req);
        auth::access(&req).require(Role::Produce, &req.get_ref().queue)?;
        let req = req.into_inner();
        let q = self.queue(&req.queue)?;
        let n = validate::batch_len(req.tasks.len(), &self.limits)?;
        let wait = match pb::EnqueueMode::try_from(req.mode) {
            Ok(pb::EnqueueMode::Unspecified | pb::EnqueueMode::Wait) => true,
            Ok(pb::EnqueueMode::FailFast) => false,
            Err(_) => {
                return Err(Error::invalid(format!("unknown enqueue mode {}", req.mode)).into());
            }
        };
        let producer = validate::producer(req.producer_id, req.sequence)?;
        let first = self.broker.task_ids(n);
        let tasks = validate::new_tasks(req.tasks, first, &self.limits)?;
        let stored = self
            .broker
            .enqueue(&q, tasks, wait, deadline, producer)
            .await?;
        let ids = answered_ids(stored.first_id, n, &stored.duplicates);
        Ok(Response::new(pb::EnqueueResponse {
            ids,
            depth: stored.depth,
            capacity: stored.capacity,
            waited_ms: stored.waited_ms,
        }))
    }

    type PublishStream = BoxStream<pb::PublishResponse>;

    async fn publish(
        &self,
        req: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let access = auth::access(&req);
        let stream =
            crate::api::publish::start(self.broker.clone(), self.limits.clone(), access, req)
                .await?;
        Ok(Response::new(Box::pin(stream)))
    }

    type ConsumeStream = BoxStream<pb::ConsumeResponse>;

    async fn consume(
        &self,
        req: Request<Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let access = auth::access(&req);
        let stream = consume::start(self.broker.clone(), access, req).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let peer = auth::peer(&req);
        let deadline = call_deadline(&req);
        auth::access(&req).require(Role::Consume, &req.get_ref().queue)?;
        let req = req.into_inner();
        let q = self.queue(&req.queue)?;
        if req.wait_ms > validate::MAX_GET_WAIT_MS {
            return Err(Error::invalid(format!(
                "wait_ms {} is over the limit of {}",
                req.wait_ms,
                validate::MAX_GET_WAIT_MS
            ))
            .into());
        }
        let max = match req.max_tasks {
            0 => 1,
            n if n > validate::MAX_GET_TASKS => {
                return Err(Error::invalid(format!(
                    "max_tasks {n} is over the limit of {}",
                    validate::MAX_GET_TASKS
                ))
                .into());
            }
            n => n,
        };
        let mut wait = Duration::from_millis(req.wait_ms);
        if let Some(d) = deadline {
            // Answer "empty" before the caller's deadline rather than let it
            // expire: an empty queue is not an error.
            wait = wait.min(d.saturating_duration_since(Instant::now()));
        }
        let got = self.broker.get(&q, u64::from(max), wait, peer).await?;
        let key = self.broker.lease_key();
        Ok(Response::new(pb::GetResponse {
            deliveries: got
                .iter()
                .map(|d| delivery(q.name(), d, Some(&key)))
                .collect(),
        }))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        auth::access(&req).require(Role::Consume, &req.get_ref().queue)?;
        let req = req.into_inner();
        let q = self.queue(&req.queue)?;
        validate::batch_len(req.acks.len(), &self.limits)?;
        let by = consume::Settler::unary(&self.broker, &self.limits);
        let errors = self.broker.apply(&q, |core, now, fx| {
            consume::settle(core, now, fx, &by, &req.acks, &[], &[])
        });
        Ok(Response::new(pb::AckResponse { errors }))
    }

    async fn nack(
        &self,
        req: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        auth::access(&req).require(Role::Consume, &req.get_ref().queue)?;
        let req = req.into_inner();
        let q = self.queue(&req.queue)?;
        validate::batch_len(req.nacks.len(), &self.limits)?;
        let by = consume::Settler::unary(&self.broker, &self.limits);
        let errors = self.broker.apply(&q, |core, now, fx| {
            consume::settle(core, now, fx, &by, &[], &req.nacks, &[])
        });
        Ok(Response::new(pb::NackResponse { errors }))
    }

    async fn extend_lease(
        &self,
        req: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::ExtendLeaseResponse>, Status> {
        auth::access(&req).require(Role::Consume, &req.get_ref().queue)?;
        let req = req.into_inner();
        let q = self.queue(&req.queue)?;
        validate::batch_len(req.extends.len(), &self.limits)?;
        let by = consume::Settler::unary(&self.broker, &self.limits);
        let errors = self.broker.apply(&q, |core, now, fx| {
            consume::settle(core, now, fx, &by, &[], &[], &req.extends)
        });
        Ok(Response::new(pb::ExtendLeaseResponse { errors }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let deadline = call_deadline(&req);
        auth::access(&req).require(Role::Read, &req.get_ref().queue)?;
        let q = self.queue(&req.get_ref().queue)?;
        let acked_total = self.broker.join(&q, deadline).await?;
        Ok(Response::new(pb::JoinResponse { acked_total }))
    }

    type WatchJobStream = BoxStream<pb::WatchJobResponse>;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let access = auth::access(&req);
        let job = req.into_inner().job_id;
        job_id(&job)?;
        let watch = self
            .broker
            .jobs()
            .watch(&job)
            .ok_or_else(|| unknown_job(&job))?;
        // Outcomes carry payloads and results: watching needs read rights
        // on every queue the job's tasks went to.
        for q in &watch.queues {
            access.require(Role::Read, q)?;
        }
        if watch.queues.is_empty() {
            // A job from a log written before jobs recorded their queues.
            access.require(Role::Admin, "*")?;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(crate::api::watch::run(
            self.broker.clone(),
            access,
            job,
            watch,
            tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn seal_job(
        &self,
        req: Request<pb::SealJobRequest>,
    ) -> Result<Response<pb::SealJobResponse>, Status> {
        let access = auth::access(&req);
        let req = req.into_inner();
        job_id(&req.job_id)?;
        let jobs = self.broker.jobs();
        let queues = jobs
            .queues(&req.job_id)
            .ok_or_else(|| unknown_job(&req.job_id))?;
        for q in &queues {
            access.require(Role::Produce, q)?;
        }
        if queues.is_empty() {
            access.require(Role::Admin, "*")?;
        }
        let total = (req.total > 0).then_some(req.total);
        let (total, durability) = jobs
            .seal(&req.job_id, total, crate::broker::now_ms())
            .map_err(|e| match e {
                crate::jobs::SealError::NotFound => unknown_job(&req.job_id),
                crate::jobs::SealError::Sealed { total } => Error::FailedPrecondition(format!(
                    "job {:?} is already sealed with total {total}",
                    req.job_id
                )),
            })?;
        if let Some(d) = durability {
            d.await.map_err(Error::from)?;
        }
        Ok(Response::new(pb::SealJobResponse { total }))
    }

    async fn get_broker_info(
        &self,
        _req: Request<pb::GetBrokerInfoRequest>,
    ) -> Result<Response<pb::GetBrokerInfoResponse>, Status> {
        // Names no queue, so no role to check: the auth layer already
        // turned away a missing or unknown token.
        let mut info = pb::GetBrokerInfoResponse::clone(&self.info);
        info.cluster = self.cluster.as_ref().and_then(|c| c.info(&self.broker));
        Ok(Response::new(info))
    }

    async fn add_cluster_member(
        &self,
        req: Request<pb::AddClusterMemberRequest>,
    ) -> Result<Response<pb::AddClusterMemberResponse>, Status> {
        // The whole broker's fate: the right to administer every queue.
        auth::access(&req).require(Role::Admin, "*")?;
        let req = req.into_inner();
        let cluster = self
            .cluster_view()?
            .add_member(&self.broker, req.node_id, req.address)
            .await?;
        Ok(Response::new(pb::AddClusterMemberResponse {
            cluster: Some(cluster),
        }))
    }

    async fn remove_cluster_member(
        &self,
        req: Request<pb::RemoveClusterMemberRequest>,
    ) -> Result<Response<pb::RemoveClusterMemberResponse>, Status> {
        auth::access(&req).require(Role::Admin, "*")?;
        let cluster = self
            .cluster_view()?
            .remove_member(&self.broker, req.into_inner().node_id)
            .await?;
        Ok(Response::new(pb::RemoveClusterMemberResponse {
            cluster: Some(cluster),
        }))
    }
}

impl Service {
    fn cluster_view(&self) -> Result<&crate::api::info::ClusterView, Status> {
        self.cluster.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this broker is not a cluster member (start it with --node-id and --peers)",
            )
        })
    }
}

fn unknown_job(id: &str) -> Error {
    Error::JobNotFound(id.to_owned())
}

fn job_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > validate::MAX_KEY_LEN {
        return Err(Error::invalid(format!(
            "job_id must be 1 to {} bytes",
            validate::MAX_KEY_LEN
        )));
    }
    Ok(())
}

/// The moment to give up waiting, from the caller's `grpc-timeout`.
///
/// tonic's server cancels a call at its deadline with CANCELLED; answering
/// a little earlier ourselves gives the caller DEADLINE_EXCEEDED and a
/// message saying what it was waiting for.
fn call_deadline<T>(req: &Request<T>) -> Option<Instant> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    // The spec allows at most 8 digits; tonic ignores longer values, so do we.
    if digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    let margin = (timeout / 20).min(Duration::from_millis(50));
    Instant::now().checked_add(timeout.saturating_sub(margin))
}
