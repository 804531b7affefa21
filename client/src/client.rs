//! [`Client`]: a connection to a broker (or to a cluster's leader) and a
//! method per unary RPC.
//!
//! Given several URLs (`http://a:1,http://b:2,...`, a cluster's members),
//! it connects to the first it reaches and from there to the leader that
//! member names. A call a member answers with "not the leader" (which it
//! did not run) goes to the leader it names, and the client stays there.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::Error;
use crate::proto::sluice_service_client::SluiceServiceClient;
use crate::proto::{
    AckItem, AckRequest, AddClusterMemberRequest, ClusterInfo, CreateQueueRequest,
    DeleteQueueRequest, Delivery, EnqueueMode, EnqueueRequest, EnqueueResponse, ExtendItem,
    ExtendLeaseRequest, GetBrokerInfoRequest, GetBrokerInfoResponse, GetQueueRequest, GetRequest,
    JoinRequest, ListQueuesRequest, NackItem, NackRequest, NewTask, PurgeQueueRequest, QueueInfo,
    QueueOptions, RemoveClusterMemberRequest, SettleError, UpdateQueueRequest,
};

/// How long [`Client::connect`] tries to open the connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle to one broker. Cheap to clone; clones share the connection
/// (HTTP/2 multiplexes concurrent calls), so one `Client` can serve many
/// tasks. Methods take `&self` for that reason.
#[derive(Clone, Debug)]
pub struct Client {
    conn: Arc<RwLock<Conn>>,
    /// How to reach another member (None: a client built on a channel,
    /// which stays on it).
    follow: Option<Arc<TlsOptions>>,
    /// The members given to [`Client::connect`], with their schemes.
    members: Arc<[String]>,
    /// This client's producer name and batch count (EnqueueRequest's
    /// producer_id and sequence), shared by its clones: an enqueue sent
    /// again after a lost answer is not stored twice.
    producer: Arc<Producer>,
}

#[derive(Debug)]
struct Producer {
    id: String,
    sent: std::sync::atomic::AtomicU64,
}

impl Producer {
    /// A name no other client picks: 16 random bytes in hex.
    fn new() -> Self {
        let mut bytes = [0u8; 16];
        if getrandom::getrandom(&mut bytes).is_err() {
            // No OS randomness: std's per-process hasher keys, and the
            // time, still tell this process's clients from others'.
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            bytes[..8].copy_from_slice(&h.finish().to_le_bytes());
            bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
        }
        Producer {
            id: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            sent: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn next(&self) -> u64 {
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }
}

/// The broker this client talks to now.
#[derive(Clone, Debug)]
struct Conn {
    raw: Raw,
    url: Arc<str>,
}

/// The metadata a cluster member names its leader in.
pub const LEADER_METADATA: &str = "sluice-leader";

/// What a cluster member's "not the leader" answer says: Some(url) of
/// the leader, Some("") while none is known; None for any other answer.
/// Whether a call never reached its broker (the connection was refused):
/// it ran nowhere, so any call may be made again on another member.
fn never_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether a call failed for want of its broker (the connection refused
/// or dropped), not by the broker's answer.
fn member_lost(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown
    ) && leader_hint(status).is_none()
}

pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    (status.code() == tonic::Code::Unavailable)
        .then(|| status.metadata().get(LEADER_METADATA))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// How long a call waits out a cluster electing its leader (it ran
/// nowhere meanwhile), over a few tries.
const ELECTION_WAIT: Duration = Duration::from_secs(5);

/// How long a call that may safely run twice waits out its leader's
/// failure: the election, and finding the new leader among the members.
const FAILOVER_WAIT: Duration = Duration::from_secs(15);

/// The generated client, with the token (if any) on every call.
pub type Raw = SluiceServiceClient<InterceptedService<Channel, Token>>;

/// Adds `authorization: Bearer <token>` to every call when there is a
/// token.
#[derive(Clone, Debug, Default)]
pub struct Token(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// What [`Client::create_queue`] answers.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueCreated {
    /// The queue as it now exists, defaults filled in.
    pub queue: QueueInfo,
    /// True if this call created it; false if it already existed with the
    /// same options.
    pub created: bool,
}

/// How to reach a broker beyond its URL: TLS settings for `https://`
/// brokers, and the token for one that checks them.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// Trust this CA (PEM) instead of the built-in web roots.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// Present this certificate and key (PEM) to a broker that asks for
    /// client certificates (mutual TLS).
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl Client {
    /// Connects to the broker at `url` (`http://host:port`, or
    /// `https://host:port` trusting the built-in web roots; a bare
    /// `host:port` means `http://`), or to a cluster given as its members'
    /// URLs separated by commas. Connects eagerly, so an unreachable
    /// broker is [`Error::Connect`] here rather than on the first call.
    /// Later calls reconnect on their own if the connection drops.
    pub async fn connect(url: &str) -> Result<Client, Error> {
        Self::connect_with(url, &TlsOptions::default()).await
    }

    /// [`Client::connect`] with TLS settings (a CA to trust, a client
    /// certificate) for `https://` URLs.
    pub async fn connect_with(url: &str, tls: &TlsOptions) -> Result<Client, Error> {
        let mut first_error = None;
        let given: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let members: Arc<[String]> = given.iter().map(|u| with_scheme(u)).collect();
        for one in given {
            match Self::connect_one(one, tls).await {
                Ok(mut client) => {
                    client.members = Arc::clone(&members);
                    client.go_to_leader().await;
                    return Ok(client);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| Error::InvalidUrl {
            url: url.to_owned(),
            reason: "no broker URL given".into(),
        }))
    }

    async fn connect_one(url: &str, tls: &TlsOptions) -> Result<Client, Error> {
        let endpoint = Self::endpoint_with(url, tls)?;
        let url = with_scheme(url);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Error::connect(&url, &e))?;
        let token = Self::token(&url, tls)?;
        let mut client = Self::with_channel_and_token(channel, url, token);
        client.follow = Some(Arc::new(tls.clone()));
        Ok(client)
    }

    fn token(url: &str, tls: &TlsOptions) -> Result<Token, Error> {
        match &tls.token {
            None => Ok(Token(None)),
            Some(t) => Ok(Token(Some(format!("Bearer {t}").parse().map_err(
                |_| Error::InvalidUrl {
                    url: url.to_owned(),
                    reason: "the token has characters a header cannot carry".into(),
                },
            )?))),
        }
    }

    /// A cluster member that does not lead names the one that does: go
    /// there (staying here if it cannot be reached, or none is named).
    async fn go_to_leader(&self) {
        let Ok(info) = self.broker_info().await else {
            return;
        };
        if let Some(c) = info.cluster
            && !c.leader
            && !c.leader_url.is_empty()
        {
            let _ = self.switch(&c.leader_url).await;
        }
    }

    /// Moves this client (and its clones) to the broker at `url`, lazily
    /// connected. Errors if it cannot follow (built on a channel) or the
    /// URL is not one.
    async fn switch(&self, url: &str) -> Result<(), Error> {
        let Some(tls) = &self.follow else {
            return Err(Error::InvalidUrl {
                url: url.to_owned(),
                reason: "this client stays on the channel it was given".into(),
            });
        };
        let endpoint = Self::endpoint_with(url, tls)?;
        let full = with_scheme(url);
        let token = Self::token(&full, tls)?;
        let raw = Self::raw_on(endpoint.connect_lazy(), token);
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = Conn {
            raw,
            url: full.into(),
        };
        Ok(())
    }

    /// Runs one unary call. One answered "not the leader" (so run
    /// nowhere) is made again on the leader named, or, while none is,
    /// after a pause, for up to [`ELECTION_WAIT`].
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: Fn(Raw) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(f, false).await
    }

    /// [`Client::call`] for a call that may safely run twice (an enqueue
    /// with its producer sequence, a read): one whose member was lost
    /// mid-call (it may or may not have run there) is made again on the
    /// next member, which names the leader, for up to [`FAILOVER_WAIT`].
    pub(crate) async fn call_again<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: Fn(Raw) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(f, true).await
    }

    async fn call_with<T, F, Fut>(&self, f: F, again: bool) -> Result<T, Error>
    where
        F: Fn(Raw) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let wait = if again { FAILOVER_WAIT } else { ELECTION_WAIT };
        let give_up = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(50);
        loop {
            let (raw, url) = {
                let c = self.conn.read().unwrap_or_else(|p| p.into_inner());
                (c.raw.clone(), c.url.clone())
            };
            let status = match f(raw).await {
                Ok(answer) => return Ok(answer.into_inner()),
                Err(status) => status,
            };
            if self.follow.is_none() || tokio::time::Instant::now() >= give_up {
                return Err(Error::from_status(status, &url));
            }
            match leader_hint(&status) {
                Some(leader) => {
                    if !leader.is_empty() && leader != *url && self.switch(&leader).await.is_ok() {
                        continue;
                    }
                    // None known here (an election, or a leader cut off
                    // from the others): another member may know.
                    if leader.is_empty() && self.members.len() > 1 {
                        let next = self.member_after(&url);
                        let _ = self.switch(&next).await;
                    }
                }
                None if (again && member_lost(&status) || never_sent(&status))
                    && self.members.len() > 1 =>
                {
                    let next = self.member_after(&url);
                    let _ = self.switch(&next).await;
                }
                None => return Err(Error::from_status(status, &url)),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// The member listed after `url` (the first if it is not listed).
    fn member_after(&self, url: &str) -> String {
        let at = self.members.iter().position(|m| m == url);
        let next = at.map_or(0, |i| (i + 1) % self.members.len());
        self.members[next].clone()
    }

    /// The endpoint [`Client::connect`] uses, for callers that want to tune
    /// it (keep-alive, `connect_lazy`) before building a channel for
    /// [`Client::with_channel`].
    pub fn endpoint(url: &str) -> Result<Endpoint, Error> {
        Self::endpoint_with(url, &TlsOptions::default())
    }

    /// [`Client::endpoint`] with TLS settings.
    pub fn endpoint_with(url: &str, tls: &TlsOptions) -> Result<Endpoint, Error> {
        let full = with_scheme(url);
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let endpoint = Endpoint::from_shared(full).map_err(|e| invalid(e.to_string()))?;
        match endpoint.uri().scheme_str() {
            Some("http") => {
                if tls.ca_cert_pem.is_some() || tls.identity_pem.is_some() {
                    // (A token alone is fine over http, on a trusted network.)
                    return Err(invalid(
                        "TLS options were given for an http:// URL; use https://".to_owned(),
                    ));
                }
            }
            Some("https") => {
                use tonic::transport::{Certificate, ClientTlsConfig, Identity};
                let mut config = ClientTlsConfig::new().with_webpki_roots();
                if let Some(ca) = &tls.ca_cert_pem {
                    config = config.ca_certificate(Certificate::from_pem(ca));
                }
                if let Some((cert, key)) = &tls.identity_pem {
                    config = config.identity(Identity::from_pem(cert, key));
                }
                return Self::finish_endpoint(
                    endpoint
                        .tls_config(config)
                        .map_err(|e| invalid(format!("TLS: {e}")))?,
                    url,
                );
            }
            _ => return Err(invalid("the scheme must be http://".to_owned())),
        }
        Self::finish_endpoint(endpoint, url)
    }

    fn finish_endpoint(endpoint: Endpoint, url: &str) -> Result<Endpoint, Error> {
        if endpoint.uri().host().is_none_or(str::is_empty) {
            return Err(Error::InvalidUrl {
                url: url.to_owned(),
                reason: "no host".to_owned(),
            });
        }
        Ok(endpoint
            .connect_timeout(DEFAULT_CONNECT_TIMEOUT)
            .tcp_nodelay(true))
    }

    /// Wraps an already built channel; `url` only names the broker in errors.
    pub fn with_channel(channel: Channel, url: impl Into<String>) -> Client {
        Self::with_channel_and_token(channel, url, Token(None))
    }

    fn with_channel_and_token(channel: Channel, url: impl Into<String>, token: Token) -> Client {
        Client {
            conn: Arc::new(RwLock::new(Conn {
                raw: Self::raw_on(channel, token),
                url: url.into().into(),
            })),
            follow: None,
            members: Arc::from(Vec::new()),
            producer: Arc::new(Producer::new()),
        }
    }

    fn raw_on(channel: Channel, token: Token) -> Raw {
        SluiceServiceClient::with_interceptor(channel, token)
            // The broker bounds what it sends (max_tasks or credit times its
            // payload limit) and the caller asked for that much, so tonic's
            // 4 MiB default would only turn legal answers into errors.
            .max_decoding_message_size(usize::MAX)
    }

    /// The URL of the broker this client talks to now, as used in error
    /// messages.
    pub fn url(&self) -> String {
        self.conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .url
            .to_string()
    }

    /// A clone of the generated tonic client on this connection, for what
    /// this type does not wrap (the `Consume` stream).
    pub fn raw(&self) -> Raw {
        self.conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .raw
            .clone()
    }

    pub(crate) fn error(&self, status: tonic::Status) -> Error {
        Error::from_status(status, &self.url())
    }

    /// Creates queue `name`. Idempotent with equal options
    /// (`created == false`); `AlreadyExists` with other options. Unset
    /// fields of `options` (`QueueOptions::default()`) take the broker's
    /// defaults.
    pub async fn create_queue(
        &self,
        name: &str,
        options: QueueOptions,
    ) -> Result<QueueCreated, Error> {
        let request = CreateQueueRequest {
            name: name.to_owned(),
            options: Some(options),
        };
        let answer = self
            .call(|mut raw| {
                let request = request.clone();
                async move { raw.create_queue(request).await }
            })
            .await?;
        Ok(QueueCreated {
            queue: required(answer.queue, "CreateQueueResponse.queue")?,
            created: answer.created,
        })
    }

    /// A queue's options, counters and consumers; `NotFound` if unknown.
    pub async fn get_queue(&self, name: &str) -> Result<QueueInfo, Error> {
        let request = GetQueueRequest {
            name: name.to_owned(),
        };
        let answer = self
            .call(|mut raw| {
                let request = request.clone();
                async move { raw.get_queue(request).await }
            })
            .await?;
        required(answer.queue, "GetQueueResponse.queue")
    }

    /// Every queue, sorted by name.
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>, Error> {
        let answer = self
            .call(|mut raw| {
                let request = ListQueuesRequest {};
                async move { raw.list_queues(request).await }
            })
            .await?;
        Ok(answer.queues)
    }

    /// The broker's version, limits in force, storage, security and
    /// features (`GetBrokerInfo`). Any valid token may ask.
    pub async fn broker_info(&self) -> Result<GetBrokerInfoResponse, Error> {
        self.call(|mut raw| async move { raw.get_broker_info(GetBrokerInfoRequest {}).await })
            .await
    }

    /// Adds member `node_id` at `address` (HOST:PORT) to the cluster
    /// (`AddClusterMember`): it catches up as a learner, then votes.
    /// Returns the cluster as the leader then sees it.
    pub async fn add_cluster_member(
        &self,
        node_id: u64,
        address: &str,
    ) -> Result<ClusterInfo, Error> {
        let answer = self
            .call(|mut raw| {
                let request = AddClusterMemberRequest {
                    node_id,
                    address: address.to_owned(),
                };
                async move { raw.add_cluster_member(request).await }
            })
            .await?;
        Ok(answer.cluster.unwrap_or_default())
    }

    /// Removes member `node_id` from the cluster (`RemoveClusterMember`).
    pub async fn remove_cluster_member(&self, node_id: u64) -> Result<ClusterInfo, Error> {
        let answer = self
            .call(|mut raw| async move {
                raw.remove_cluster_member(RemoveClusterMemberRequest { node_id })
                    .await
            })
            .await?;
        Ok(answer.cluster.unwrap_or_default())
    }

    /// How big a frame this broker takes: the default merge limits, lowered
    /// to its `--max-batch`. A broker that cannot say (an older version)
    /// gets the defaults.
    pub async fn frame_limit(&self) -> crate::FrameLimit {
        let mut limit = crate::FrameLimit::default();
        if let Ok(info) = self.broker_info().await
            && let Some(l) = info.limits
            && l.max_batch > 0
        {
            limit.items = limit
                .items
                .min(usize::try_from(l.max_batch).unwrap_or(usize::MAX));
        }
        limit
    }

    /// Deletes a queue and its tasks; answers how many unfinished tasks were
    /// discarded. With `if_empty`, `FailedPrecondition` while it holds any.
    pub async fn delete_queue(&self, name: &str, if_empty: bool) -> Result<u64, Error> {
        let request = DeleteQueueRequest {
            name: name.to_owned(),
            if_empty,
        };
        let answer = self
            .call(|mut raw| {
                let request = request.clone();
                async move { raw.delete_queue(request).await }
            })
            .await?;
        Ok(answer.discarded)
    }

    /// Removes every ready and delayed task; answers how many.
    pub async fn purge_queue(&self, name: &str) -> Result<u64, Error> {
        let request = PurgeQueueRequest {
            name: name.to_owned(),
        };
        let answer = self
            .call(|mut raw| {
                let request = request.clone();
                async move { raw.purge_queue(request).await }
            })
            .await?;
        Ok(answer.purged)
    }

    /// Changes a running queue's options (`UpdateQueue`): only the fields
    /// set in `request` change (`name` says which queue), at once. Returns
    /// the queue with its new options. `NotFound` for an unknown queue,
    /// `InvalidArgument` for an out-of-range value. A `rate_limit` replaces
    /// the whole limit (its `burst` too); `tasks: 0` removes it.
    ///
    /// ```no_run
    /// # async fn f(client: &sluice_client::Client) -> Result<(), sluice_client::Error> {
    /// use sluice_client::proto::{RateLimit, UpdateQueueRequest};
    /// // at most 50 leased at once, 10 deliveries a second
    /// client
    ///     .update_queue(UpdateQueueRequest {
    ///         name: "emails".into(),
    ///         max_in_flight: Some(50),
    ///         rate_limit: Some(RateLimit { tasks: 10, per_ms: 1000, burst: 0 }),
    ///         ..UpdateQueueRequest::default()
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn update_queue(&self, request: UpdateQueueRequest) -> Result<QueueInfo, Error> {
        let answer = self
            .call(|mut raw| {
                let request = request.clone();
                async move { raw.update_queue(request).await }
            })
            .await?;
        required(answer.queue, "UpdateQueueResponse.queue")
    }

    /// Pauses queue `name`: nothing of it is delivered until
    /// [`Client::resume_queue`] (enqueues are still accepted; leases
    /// already out run their course). Returns the queue.
    pub async fn pause_queue(&self, name: &str) -> Result<QueueInfo, Error> {
        self.update_queue(UpdateQueueRequest {
            name: name.to_owned(),
            paused: Some(true),
            ..UpdateQueueRequest::default()
        })
        .await
    }

    /// Resumes queue `name`: unpauses it and ends any throttle a nack put
    /// on it or its groups, so delivery starts again at once. Returns the
    /// queue.
    pub async fn resume_queue(&self, name: &str) -> Result<QueueInfo, Error> {
        self.update_queue(UpdateQueueRequest {
            name: name.to_owned(),
            paused: Some(false),
            ..UpdateQueueRequest::default()
        })
        .await
    }

    /// Adds `tasks` to `queue`, all or none. In `Wait` mode the call waits
    /// for space; `timeout` bounds that wait as the call's gRPC deadline
    /// (expiry is `DeadlineExceeded`; `None` waits as long as it takes). In
    /// `FailFast` mode a full queue is `ResourceExhausted` at once.
    ///
    /// A deadline that passes while the answer is on its way reports
    /// `DeadlineExceeded` although the tasks were stored: as with any
    /// deadline, expiry means "outcome not confirmed", not "not stored".
    ///
    /// A task's `group` (`NewTask::group`: a tenant, a customer) puts it in
    /// a fairness group: the queue serves its groups round-robin and caps
    /// each at its `max_in_flight_per_group`.
    ///
    /// Each call is this client's next numbered batch (producer_id and
    /// sequence): against a cluster, a call whose leader failed under it
    /// is sent again to the new leader, which answers the ids the batch
    /// got if it was stored after all, rather than storing it twice.
    pub async fn enqueue(
        &self,
        queue: &str,
        tasks: Vec<NewTask>,
        mode: EnqueueMode,
        timeout: Option<Duration>,
    ) -> Result<EnqueueResponse, Error> {
        let request = EnqueueRequest {
            queue: queue.to_owned(),
            tasks,
            mode: mode.into(),
            producer_id: self.producer.id.clone(),
            sequence: self.producer.next(),
        };
        self.call_again(|mut raw| {
            let request = with_deadline(request.clone(), timeout);
            async move { raw.enqueue(request).await }
        })
        .await
    }

    /// Takes up to `max_tasks` ready tasks under a lease, waiting up to
    /// `wait` for the first one (zero: do not wait). An empty queue answers
    /// an empty list, not an error. Sub-millisecond parts of `wait` are
    /// rounded up.
    pub async fn get(
        &self,
        queue: &str,
        wait: Duration,
        max_tasks: u32,
    ) -> Result<Vec<Delivery>, Error> {
        let request = GetRequest {
            queue: queue.to_owned(),
            wait_ms: duration_ms(wait),
            max_tasks,
        };
        let answer = self
            .call(|mut raw| {
                let request = request.clone();
                async move { raw.get(request).await }
            })
            .await?;
        Ok(answer.deliveries)
    }

    /// Acks leases taken with [`Client::get`]; answers the refused items
    /// (the others were applied).
    pub async fn ack(&self, queue: &str, acks: Vec<AckItem>) -> Result<Vec<SettleError>, Error> {
        let request = AckRequest {
            queue: queue.to_owned(),
            acks,
        };
        let answer = self
            .call(|mut raw| {
                let request = request.clone();
                async move { raw.ack(request).await }
            })
            .await?;
        Ok(answer.errors)
    }

    /// Nacks leases taken with [`Client::get`]; answers the refused items.
    pub async fn nack(&self, queue: &str, nacks: Vec<NackItem>) -> Result<Vec<SettleError>, Error> {
        let request = NackRequest {
            queue: queue.to_owned(),
            nacks,
        };
        let answer = self
            .call(|mut raw| {
                let request = request.clone();
                async move { raw.nack(request).await }
            })
            .await?;
        Ok(answer.errors)
    }

    /// Pushes the deadlines of leases taken with [`Client::get`]; answers
    /// the refused items.
    pub async fn extend(
        &self,
        queue: &str,
        extends: Vec<ExtendItem>,
    ) -> Result<Vec<SettleError>, Error> {
        let request = ExtendLeaseRequest {
            queue: queue.to_owned(),
            extends,
        };
        let answer = self
            .call(|mut raw| {
                let request = request.clone();
                async move { raw.extend_lease(request).await }
            })
            .await?;
        Ok(answer.errors)
    }

    /// Returns once `queue` has no unfinished task, with its lifetime acked
    /// count. `timeout` is the gRPC deadline (`DeadlineExceeded`); `None`
    /// waits as long as it takes.
    pub async fn join(&self, queue: &str, timeout: Option<Duration>) -> Result<u64, Error> {
        let request = JoinRequest {
            queue: queue.to_owned(),
        };
        let answer = self
            .call(|mut raw| {
                let request = with_deadline(request.clone(), timeout);
                async move { raw.join(request).await }
            })
            .await?;
        Ok(answer.acked_total)
    }
}

/// A request whose gRPC deadline is `timeout`. tonic sends it as the
/// `grpc-timeout` header (the broker stops waiting then) and also enforces
/// it on this side, so a broker that ignored it could not hang us.
fn with_deadline<T>(message: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// `url` with `http://` in front if it has no scheme.
fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

pub(crate) fn required<T>(field: Option<T>, name: &str) -> Result<T, Error> {
    field.ok_or_else(|| Error::Protocol(format!("{name} is missing")))
}

/// A duration as the wire format's milliseconds, rounded up so that a
/// non-zero duration never becomes the "0 = default / none" of a `*_ms`
/// field; saturates at `u64::MAX`.
pub fn duration_ms(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_accepts_http_and_bare_host_port() {
        let e = Client::endpoint("http://127.0.0.1:50051").expect("valid");
        assert_eq!(e.uri().port_u16(), Some(50051));
        let e = Client::endpoint("localhost:7000").expect("valid");
        assert_eq!(e.uri().scheme_str(), Some("http"));
    }

    #[test]
    fn endpoint_rejects_other_schemes_and_garbage() {
        for url in ["ftp://x", "http://", "http://a b"] {
            let err = Client::endpoint(url).expect_err(url);
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
        }
        // https is TLS now; TLS options with http:// are a mistake.
        assert!(Client::endpoint("https://x:1").is_ok());
        let tls = TlsOptions {
            ca_cert_pem: Some(b"pem".to_vec()),
            ..TlsOptions::default()
        };
        let err = Client::endpoint_with("http://x:1", &tls).expect_err("http with TLS");
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    }

    #[test]
    fn millis_round_up() {
        assert_eq!(duration_ms(Duration::ZERO), 0);
        assert_eq!(duration_ms(Duration::from_micros(1)), 1);
        assert_eq!(duration_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(duration_ms(Duration::from_micros(1500)), 2);
    }
}
