//! In a cluster, only the leader serves queue calls: on any other member a
//! call of the sluice API is answered UNAVAILABLE with the leader's
//! address in `sluice-leader` metadata (clients follow it), except
//! `GetBrokerInfo`, which every member answers. Health, reflection and
//! the members' own Raft calls pass.

use std::task::{Context, Poll};

use crate::broker::Broker;

/// The path prefix of the calls that only the leader serves.
const API: &str = "/sluice.v1.SluiceService/";

/// Tower layer: answers queue calls on a member that does not lead.
#[derive(Clone)]
pub struct LeaderGate {
    broker: Broker,
}

impl LeaderGate {
    pub fn new(broker: Broker) -> Self {
        LeaderGate { broker }
    }
}

impl<S> tower::Layer<S> for LeaderGate {
    type Service = Gated<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Gated {
            inner,
            broker: self.broker.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    broker: Broker,
}

impl<S, B> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let gated = path.starts_with(API) && !path.ends_with("/GetBrokerInfo");
        if gated && !self.broker.serving() {
            let status = tonic::Status::from(self.broker.not_leader());
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(req))
    }
}
