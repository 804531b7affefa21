//! [`Client`]: a connection to one broker and a method per unary RPC.

use std::sync::Arc;
use std::time::Duration;

use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::Error;
use crate::proto::sluice_service_client::SluiceServiceClient;
use crate::proto::{
    AckItem, AckRequest, CreateQueueRequest, DeleteQueueRequest, Delivery, EnqueueMode,
    EnqueueRequest, EnqueueResponse, ExtendItem, ExtendLeaseRequest, GetBrokerInfoRequest,
    GetBrokerInfoResponse, GetQueueRequest, GetRequest, JoinRequest, ListQueuesRequest, NackItem,
    NackRequest, NewTask, PurgeQueueRequest, QueueInfo, QueueOptions, SettleError,
};

/// How long [`Client::connect`] tries to open the connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle to one broker. Cheap to clone; clones share the connection
/// (HTTP/2 multiplexes concurrent calls), so one `Client` can serve many
/// tasks. Methods take `&self` for that reason.
#[derive(Clone, Debug)]
pub struct Client {
    raw: Raw,
    url: Arc<str>,
}

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
    /// `host:port` means `http://`). Connects eagerly, so an unreachable
    /// broker is [`Error::Connect`] here rather than on the first call.
    /// Later calls reconnect on their own if the connection drops.
    pub async fn connect(url: &str) -> Result<Client, Error> {
        Self::connect_with(url, &TlsOptions::default()).await
    }

    /// [`Client::connect`] with TLS settings (a CA to trust, a client
    /// certificate) for `https://` URLs.
    pub async fn connect_with(url: &str, tls: &TlsOptions) -> Result<Client, Error> {
        let endpoint = Self::endpoint_with(url, tls)?;
        let url = with_scheme(url);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Error::connect(&url, &e))?;
        let token = match &tls.token {
            None => Token(None),
            Some(t) => Token(Some(format!("Bearer {t}").parse().map_err(|_| {
                Error::InvalidUrl {
                    url: url.clone(),
                    reason: "the token has characters a header cannot carry".into(),
                }
            })?)),
        };
        Ok(Self::with_channel_and_token(channel, url, token))
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
        let raw = SluiceServiceClient::with_interceptor(channel, token)
            // The broker bounds what it sends (max_tasks or credit times its
            // payload limit) and the caller asked for that much, so tonic's
            // 4 MiB default would only turn legal answers into errors.
            .max_decoding_message_size(usize::MAX);
        Client {
            raw,
            url: url.into().into(),
        }
    }

    /// The broker URL, as used in error messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A clone of the generated tonic client on this connection, for what
    /// this type does not wrap (the `Consume` stream).
    pub fn raw(&self) -> Raw {
        self.raw.clone()
    }

    pub(crate) fn error(&self, status: tonic::Status) -> Error {
        Error::from_status(status, &self.url)
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
            .raw()
            .create_queue(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
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
            .raw()
            .get_queue(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        required(answer.queue, "GetQueueResponse.queue")
    }

    /// Every queue, sorted by name.
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>, Error> {
        let answer = self
            .raw()
            .list_queues(ListQueuesRequest {})
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        Ok(answer.queues)
    }

    /// The broker's version, limits in force, storage, security and
    /// features (`GetBrokerInfo`). Any valid token may ask.
    pub async fn broker_info(&self) -> Result<GetBrokerInfoResponse, Error> {
        Ok(self
            .raw()
            .get_broker_info(GetBrokerInfoRequest {})
            .await
            .map_err(|s| self.error(s))?
            .into_inner())
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
            .raw()
            .delete_queue(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        Ok(answer.discarded)
    }

    /// Removes every ready and delayed task; answers how many.
    pub async fn purge_queue(&self, name: &str) -> Result<u64, Error> {
        let request = PurgeQueueRequest {
            name: name.to_owned(),
        };
        let answer = self
            .raw()
            .purge_queue(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        Ok(answer.purged)
    }

    /// Adds `tasks` to `queue`, all or none. In `Wait` mode the call waits
    /// for space; `timeout` bounds that wait as the call's gRPC deadline
    /// (expiry is `DeadlineExceeded`; `None` waits as long as it takes). In
    /// `FailFast` mode a full queue is `ResourceExhausted` at once.
    ///
    /// A deadline that passes while the answer is on its way reports
    /// `DeadlineExceeded` although the tasks were stored: as with any
    /// deadline, expiry means "outcome not confirmed", not "not stored".
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
            ..EnqueueRequest::default()
        };
        let answer = self
            .raw()
            .enqueue(with_deadline(request, timeout))
            .await
            .map_err(|s| self.error(s))?;
        Ok(answer.into_inner())
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
            .raw()
            .get(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
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
            .raw()
            .ack(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        Ok(answer.errors)
    }

    /// Nacks leases taken with [`Client::get`]; answers the refused items.
    pub async fn nack(&self, queue: &str, nacks: Vec<NackItem>) -> Result<Vec<SettleError>, Error> {
        let request = NackRequest {
            queue: queue.to_owned(),
            nacks,
        };
        let answer = self
            .raw()
            .nack(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
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
            .raw()
            .extend_lease(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
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
            .raw()
            .join(with_deadline(request, timeout))
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
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

fn required<T>(field: Option<T>, name: &str) -> Result<T, Error> {
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
