//! Serving: the gRPC service plus health and reflection on an
//! already-bound listener, until the shutdown token fires.

use std::time::Duration;

use sluice_proto::v1::sluice_service_server::SluiceServiceServer;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::info::Setup;
use crate::api::service::Service;
use crate::broker::Broker;
use crate::limits::Limits;

/// Beyond the consumers' grace period, how long other open calls get to
/// finish before the broker exits anyway.
const CALLS_GRACE: Duration = Duration::from_secs(5);

/// What a cluster member serves besides the API: Raft, to the others.
pub struct ClusterServing {
    pub current: crate::cluster::proposer::Current,
    pub secret: Option<String>,
    /// This member's URL, as clients reach it.
    pub own_url: String,
}

/// Serves on `listener` until `shutdown` is cancelled. Waiting calls are
/// answered UNAVAILABLE and Consume streams get a Drain notice. A cluster
/// member also serves Raft, and queue calls only while it leads.
pub async fn run(
    listener: TcpListener,
    limits: Limits,
    broker: Broker,
    tls: Option<tonic::transport::ServerTlsConfig>,
    tokens: Option<crate::api::auth::Tokens>,
    setup: Setup,
    cluster: Option<ClusterServing>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let gate = cluster
        .as_ref()
        .map(|_| crate::api::leader::LeaderGate::new(broker.clone()));
    let view = cluster.as_ref().map(|c| crate::api::info::ClusterView {
        current: c.current.clone(),
        own_url: c.own_url.clone(),
    });
    let raft = cluster.map(|c| crate::cluster::service::RaftServer::service(c.current, c.secret));
    let cluster_reflection = raft.is_some();
    let shutdown = broker.shutdown().clone();
    let broker_grace = broker.shutdown_grace();
    let max_message = limits.max_message_bytes();
    let max_streams_per_connection = setup.max_streams_per_connection;
    let service = Service::new(broker, limits, setup, view);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SluiceServiceServer<Service>>().await;
    let reflection = || {
        let b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        match cluster_reflection {
            true => {
                b.register_encoded_file_descriptor_set(sluice_proto::CLUSTER_FILE_DESCRIPTOR_SET)
            }
            false => b,
        }
    };
    let reflection_v1 = reflection().build_v1()?;
    // grpcurl and Python's grpcio-reflection still speak v1alpha.
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // The builder's tcp_nodelay only applies to listeners tonic binds
    // itself; without it here, Nagle's algorithm and delayed acks hold
    // every multi-segment answer back ~40 ms.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    });
    let stop = shutdown.clone();
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(max_streams_per_connection));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .layer(crate::api::auth::AuthLayer::new(tokens))
        .layer(tower::util::option_layer(gate))
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_optional_service(raft)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            SluiceServiceServer::new(service)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await });
    tokio::pin!(server);

    tokio::select! {
        r = &mut server => return r.map_err(Into::into),
        _ = shutdown.cancelled() => {}
    }
    health
        .set_not_serving::<SluiceServiceServer<Service>>()
        .await;
    let grace = broker_grace + CALLS_GRACE;
    match tokio::time::timeout(grace, &mut server).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => {
            tracing::warn!(
                ?grace,
                "calls still open after the grace period; exiting anyway"
            );
            Ok(())
        }
    }
}
