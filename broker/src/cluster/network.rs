//! Raft's RPCs to the other members, over gRPC.
//!
//! One lazily connected channel per member: a member that is down costs a
//! refused connection per attempt, which openraft answers by backing off
//! ([`RPCError::Unreachable`]). A request bigger than [`MAX_MESSAGE`] is
//! refused before it is sent with a hint to send fewer entries, so a
//! backlog of large commands is replicated in several calls.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    SnapshotMismatch, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, SnapshotSegmentId};
use prost::Message;
use sluice_proto::cluster as pb;
use sluice_proto::cluster::raft_service_client::RaftServiceClient;
use tonic::transport::{Channel, Endpoint};

use super::TypeConfig;
use super::convert::{
    entry_to_pb, log_id_from_pb, need_vote, opt_log_id_from_pb, opt_log_id_to_pb,
    snapshot_meta_to_pb, vote_to_pb,
};

/// The largest message members send each other: room for many commands
/// per call, and far below what a member's memory would mind.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Makes a [`Peer`] per member. With a cluster secret, every call
/// carries it.
#[derive(Clone, Default)]
pub struct Network {
    pub secret: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// This member's own `--peers`: where it dials each member.
    pub peers: Arc<BTreeMap<u64, String>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        // The membership Raft stores holds the addresses of the `--peers`
        // it was initialized with (or of another member's, received in a
        // snapshot). This member dials the address its own `--peers` gives
        // instead, when it has one: how a member reaches another may
        // differ from member to member (NAT, a proxy, a partition test
        // routing each pair of members through a link it can cut). The
        // membership's address is the fallback, for a member this one was
        // not told of.
        let addr = self
            .peers
            .get(&target)
            .cloned()
            .unwrap_or_else(|| node.addr.clone());
        Peer {
            target,
            addr,
            client: None,
            secret: self.secret.clone(),
        }
    }
}

/// The connection to one member.
pub struct Peer {
    target: u64,
    addr: String,
    client: Option<RaftServiceClient<Channel>>,
    secret: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

type Failed<E = openraft::error::Infallible> = RPCError<u64, BasicNode, RaftError<u64, E>>;

fn unreachable<E: std::error::Error>(e: impl std::fmt::Display) -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.to_string())))
}

fn network<E: std::error::Error>(e: impl std::fmt::Display) -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
}

/// A failed call: a member that cannot be reached (or is shutting down)
/// is backed off from; anything else is retried.
fn failed<E: std::error::Error>(s: tonic::Status) -> RPCError<u64, BasicNode, E> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled => unreachable(s.message()),
        _ => network(format!("{}: {}", s.code(), s.message())),
    }
}

impl Peer {
    /// The channel to the member; an error names an address that is not
    /// one.
    fn client(&mut self) -> Result<RaftServiceClient<Channel>, String> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| format!("bad address {:?}: {e}", self.addr))?
            .tcp_nodelay(true);
        let c = RaftServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        self.client = Some(c.clone());
        Ok(c)
    }

    fn request<T>(&self, message: T, option: &RPCOption) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(option.hard_ttl());
        if let Some(s) = &self.secret {
            r.metadata_mut().insert(super::SECRET_METADATA, s.clone());
        }
        r
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, Failed> {
        let n = rpc.entries.len() as u64;
        let msg = pb::AppendEntriesRequest {
            vote: Some(vote_to_pb(&rpc.vote)),
            prev_log_id: opt_log_id_to_pb(&rpc.prev_log_id),
            entries: rpc.entries.iter().map(entry_to_pb).collect(),
            leader_commit: opt_log_id_to_pb(&rpc.leader_commit),
        };
        if n > 1 && msg.encoded_len() > MAX_MESSAGE {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(n / 2),
            ));
        }
        let mut client = self.client().map_err(unreachable)?;
        let resp = client
            .append_entries(self.request(msg, &option))
            .await
            .map_err(failed)?
            .into_inner();
        use pb::append_entries_response::Result as R;
        match resp.result {
            Some(R::Success(_)) => Ok(AppendEntriesResponse::Success),
            Some(R::Partial(p)) => Ok(AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(
                &p.log_id,
            ))),
            Some(R::Conflict(_)) => Ok(AppendEntriesResponse::Conflict),
            Some(R::HigherVote(v)) => Ok(AppendEntriesResponse::HigherVote(
                super::convert::vote_from_pb(&v),
            )),
            None => Err(network("append_entries answered nothing")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, Failed<InstallSnapshotError>> {
        let got = SnapshotSegmentId {
            id: rpc.meta.snapshot_id.clone(),
            offset: rpc.offset,
        };
        let msg = pb::InstallSnapshotRequest {
            vote: Some(vote_to_pb(&rpc.vote)),
            meta: Some(snapshot_meta_to_pb(&rpc.meta)),
            offset: rpc.offset,
            data: rpc.data.into(),
            done: rpc.done,
        };
        let mut client = self.client().map_err(unreachable)?;
        let resp = match client.install_snapshot(self.request(msg, &option)).await {
            Ok(r) => r.into_inner(),
            // The member expected another chunk: the sender starts over.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                let mismatch = SnapshotMismatch {
                    expect: SnapshotSegmentId {
                        id: s.message().to_owned(),
                        offset: 0,
                    },
                    got,
                };
                return Err(RPCError::RemoteError(RemoteError::new(
                    self.target,
                    RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch)),
                )));
            }
            Err(s) => return Err(failed(s)),
        };
        Ok(InstallSnapshotResponse {
            vote: need_vote(resp.vote.as_ref()).map_err(network)?,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, Failed> {
        let msg = pb::VoteRequest {
            vote: Some(vote_to_pb(&rpc.vote)),
            last_log_id: opt_log_id_to_pb(&rpc.last_log_id),
        };
        let mut client = self.client().map_err(unreachable)?;
        let resp = client
            .vote(self.request(msg, &option))
            .await
            .map_err(failed)?
            .into_inner();
        Ok(VoteResponse {
            vote: need_vote(resp.vote.as_ref()).map_err(network)?,
            vote_granted: resp.vote_granted,
            last_log_id: resp.last_log_id.as_ref().map(log_id_from_pb),
        })
    }
}
