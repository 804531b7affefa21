//! The baseline: a gRPC server that speaks sluice's API for the bench's
//! frames but does no queueing at all — each enqueued task is handed
//! straight to the next subscribed stream, with no capacity, lease, credit
//! or state. Run under the same load, it is the ceiling of gRPC on this
//! machine, and `sluice bench --baseline` reports how close the broker
//! gets to it. It runs as its own process (`sluice bench-baseline-server`,
//! hidden) so both runs have the same shape.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sluice_client::proto::sluice_service_server::{SluiceService, SluiceServiceServer};
use sluice_client::proto::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::cli::exit::Failure;

type Tx = mpsc::UnboundedSender<Vec<Delivery>>;

#[derive(Default, Clone)]
struct Baseline {
    dealer: std::sync::Arc<Dealer>,
}

#[derive(Default)]
struct Dealer {
    subscribers: Mutex<HashMap<String, Vec<Tx>>>,
    next: AtomicUsize,
    ids: AtomicU64,
}

impl Dealer {
    /// Hands tasks straight to the queue's subscribers; returns their ids.
    fn deal(&self, queue: &str, tasks: Vec<NewTask>) -> Result<Vec<String>, Status> {
        let mut ids = Vec::with_capacity(tasks.len());
        let subs = self
            .subscribers
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .get(queue)
            .cloned()
            .unwrap_or_default();
        if subs.is_empty() {
            return Err(Status::unavailable("no subscriber"));
        }
        // One batch per subscriber per request, dealt round-robin: the same
        // shape of frames the broker sends, without any queue behind them.
        let mut batches: Vec<Vec<Delivery>> = vec![Vec::new(); subs.len()];
        for t in tasks {
            let id = format!("{:016x}", self.ids.fetch_add(1, Ordering::Relaxed));
            let i = self.next.fetch_add(1, Ordering::Relaxed) % subs.len();
            batches[i].push(Delivery {
                task: Some(Task {
                    id: id.clone(),
                    payload: t.payload,
                    headers: t.headers,
                    priority: t.priority,
                    ..Default::default()
                }),
                attempt: 1,
                lease_deadline_unix_ms: 0,
                queue: queue.to_owned(),
                // None on a stream, as the broker sends.
                lease_token: String::new(),
            });
            ids.push(id);
        }
        for (tx, batch) in subs.iter().zip(batches) {
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
        }
        Ok(ids)
    }
}

/// Serves the baseline on 127.0.0.1:0 until killed; prints
/// `listening on ADDR` first.
pub async fn serve() -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Failure::Io("binding the baseline server", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Io("binding the baseline server", e))?;
    super::super::print(&format!("listening on {addr}\n"))?;
    tonic::transport::Server::builder()
        .add_service(SluiceServiceServer::new(Baseline::default()))
        .serve_with_incoming(TcpListenerStream::new(listener).map(|conn| {
            // As in the broker: tonic's tcp_nodelay skips custom listeners.
            if let Ok(c) = &conn {
                let _ = c.set_nodelay(true);
            }
            conn
        }))
        .await
        .map_err(|e| Failure::Refused(format!("baseline server: {e}")))
}

fn info(name: &str) -> QueueInfo {
    QueueInfo {
        name: name.to_owned(),
        options: Some(QueueOptions {
            capacity: u64::MAX,
            ..Default::default()
        }),
        ..Default::default()
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SluiceService for Baseline {
    async fn create_queue(
        &self,
        req: Request<CreateQueueRequest>,
    ) -> Result<Response<CreateQueueResponse>, Status> {
        Ok(Response::new(CreateQueueResponse {
            queue: Some(info(&req.get_ref().name)),
            created: true,
        }))
    }

    async fn get_queue(
        &self,
        req: Request<GetQueueRequest>,
    ) -> Result<Response<GetQueueResponse>, Status> {
        Ok(Response::new(GetQueueResponse {
            queue: Some(info(&req.get_ref().name)),
        }))
    }

    async fn list_queues(
        &self,
        _: Request<ListQueuesRequest>,
    ) -> Result<Response<ListQueuesResponse>, Status> {
        Ok(Response::new(ListQueuesResponse::default()))
    }

    async fn delete_queue(
        &self,
        _: Request<DeleteQueueRequest>,
    ) -> Result<Response<DeleteQueueResponse>, Status> {
        Ok(Response::new(DeleteQueueResponse::default()))
    }

    async fn purge_queue(
        &self,
        _: Request<PurgeQueueRequest>,
    ) -> Result<Response<PurgeQueueResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn update_queue(
        &self,
        _: Request<UpdateQueueRequest>,
    ) -> Result<Response<UpdateQueueResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn enqueue(
        &self,
        req: Request<EnqueueRequest>,
    ) -> Result<Response<EnqueueResponse>, Status> {
        let req = req.into_inner();
        let ids = self.dealer.deal(&req.queue, req.tasks)?;
        Ok(Response::new(EnqueueResponse {
            ids,
            ..Default::default()
        }))
    }

    type PublishStream = BoxStream<PublishResponse>;

    /// The window as credit at once, then each frame dealt, confirmed and
    /// its credit given back: the stream's shape with no queue behind it.
    async fn publish(
        &self,
        req: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::failed_precondition("no first frame"))?;
        let queue = first.queue;
        let window = u64::from(first.window.max(1));
        let dealer = self.dealer.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let grant = PublishResponse {
                credit: window,
                ..Default::default()
            };
            if tx.send(Ok(grant)).await.is_err() {
                return;
            }
            while let Ok(Some(frame)) = inbound.message().await {
                let n = frame.tasks.len() as u64;
                let answer = dealer.deal(&queue, frame.tasks).map(|ids| PublishResponse {
                    credit: n,
                    confirmed_ids: ids,
                    ..Default::default()
                });
                if tx.send(answer).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ConsumeStream = BoxStream<ConsumeResponse>;

    async fn consume(
        &self,
        req: Request<Streaming<ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let mut inbound = req.into_inner();
        let queue = match inbound.message().await? {
            Some(ConsumeRequest {
                subscribe: Some(s), ..
            }) => s.queue,
            _ => return Err(Status::failed_precondition("subscribe first")),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.dealer
            .subscribers
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .entry(queue)
            .or_default()
            .push(tx);
        let (out, out_rx) = mpsc::channel(16);
        let _ = out.try_send(Ok(ConsumeResponse {
            subscribed: Some(Subscribed::default()),
            ..Default::default()
        }));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    d = rx.recv() => {
                        let Some(mut deliveries) = d else { break };
                        while let Ok(more) = rx.try_recv() {
                            deliveries.extend(more);
                        }
                        let frame = ConsumeResponse { deliveries, ..Default::default() };
                        if out.send(Ok(frame)).await.is_err() {
                            break;
                        }
                    }
                    m = inbound.message() => match m {
                        // Acks and credit are read and dropped: no state.
                        Ok(Some(_)) => {}
                        _ => break,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn get(&self, _: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn ack(&self, _: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn nack(&self, _: Request<NackRequest>) -> Result<Response<NackResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn extend_lease(
        &self,
        _: Request<ExtendLeaseRequest>,
    ) -> Result<Response<ExtendLeaseResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn seal_job(
        &self,
        _: Request<SealJobRequest>,
    ) -> Result<Response<SealJobResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    type WatchJobStream = BoxStream<WatchJobResponse>;

    async fn watch_job(
        &self,
        _: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn get_broker_info(
        &self,
        _: Request<sluice_client::proto::GetBrokerInfoRequest>,
    ) -> Result<Response<sluice_client::proto::GetBrokerInfoResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn add_cluster_member(
        &self,
        _: Request<sluice_client::proto::AddClusterMemberRequest>,
    ) -> Result<Response<sluice_client::proto::AddClusterMemberResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn remove_cluster_member(
        &self,
        _: Request<sluice_client::proto::RemoveClusterMemberRequest>,
    ) -> Result<Response<sluice_client::proto::RemoveClusterMemberResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    // Schedules are the broker's own producer: nothing for a load test of
    // gRPC to measure.
    async fn create_schedule(
        &self,
        _: Request<CreateScheduleRequest>,
    ) -> Result<Response<CreateScheduleResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn list_schedules(
        &self,
        _: Request<ListSchedulesRequest>,
    ) -> Result<Response<ListSchedulesResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn delete_schedule(
        &self,
        _: Request<DeleteScheduleRequest>,
    ) -> Result<Response<DeleteScheduleResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn pause_schedule(
        &self,
        _: Request<PauseScheduleRequest>,
    ) -> Result<Response<PauseScheduleResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn resume_schedule(
        &self,
        _: Request<ResumeScheduleRequest>,
    ) -> Result<Response<ResumeScheduleResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}
