//! The `RaftService` a member serves to the others: each call decoded and
//! handed to the member's Raft (the one it runs now: a member restarts
//! its Raft when it stops leading). With a cluster secret, a call must
//! carry it in `sluice-cluster-secret`.

use openraft::Raft;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use sluice_proto::cluster as pb;
use sluice_proto::cluster::raft_service_server::{RaftService, RaftServiceServer};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use super::convert::{
    entry_from_pb, need_vote, opt_log_id_from_pb, opt_log_id_to_pb, snapshot_meta_from_pb,
    vote_to_pb,
};
use super::network::MAX_MESSAGE;
use super::proposer::Current;
use super::{SECRET_METADATA, TypeConfig};

/// Serves Raft's RPCs for one member.
pub struct RaftServer {
    current: Current,
    secret: Option<String>,
}

impl RaftServer {
    /// The service, ready to add to a tonic server.
    pub fn service(current: Current, secret: Option<String>) -> RaftServiceServer<RaftServer> {
        RaftServiceServer::new(RaftServer { current, secret })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The member's Raft, after checking the caller is a member.
    fn raft<T>(&self, req: &Request<T>) -> Result<Raft<TypeConfig>, Status> {
        if let Some(secret) = &self.secret {
            let given = req
                .metadata()
                .get(SECRET_METADATA)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !bool::from(given.ct_eq(secret.as_bytes())) {
                return Err(Status::unauthenticated(
                    "not a member of this cluster: wrong or missing cluster secret",
                ));
            }
        }
        self.current
            .get()
            .ok_or_else(|| Status::unavailable("this member's Raft is restarting"))
    }
}

fn malformed(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Raft refused (it is shutting down, or broke): the caller backs off.
fn raft_failed<E: std::error::Error>(e: RaftError<u64, E>) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        req: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let raft = self.raft(&req)?;
        let req = req.into_inner();
        let entries = req
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<Vec<_>, _>>()
            .map_err(malformed)?;
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: need_vote(req.vote.as_ref()).map_err(malformed)?,
            prev_log_id: opt_log_id_from_pb(&req.prev_log_id),
            entries,
            leader_commit: opt_log_id_from_pb(&req.leader_commit),
        };
        use pb::append_entries_response::Result as R;
        let result = match raft.append_entries(rpc).await.map_err(raft_failed)? {
            AppendEntriesResponse::Success => R::Success(pb::Blank {}),
            AppendEntriesResponse::PartialSuccess(id) => R::Partial(pb::PartialSuccess {
                log_id: opt_log_id_to_pb(&id),
            }),
            AppendEntriesResponse::Conflict => R::Conflict(pb::Blank {}),
            AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote_to_pb(&v)),
        };
        Ok(Response::new(pb::AppendEntriesResponse {
            result: Some(result),
        }))
    }

    async fn vote(
        &self,
        req: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let raft = self.raft(&req)?;
        let req = req.into_inner();
        let rpc = VoteRequest {
            vote: need_vote(req.vote.as_ref()).map_err(malformed)?,
            last_log_id: opt_log_id_from_pb(&req.last_log_id),
        };
        let resp = raft.vote(rpc).await.map_err(raft_failed)?;
        Ok(Response::new(pb::VoteResponse {
            vote: Some(vote_to_pb(&resp.vote)),
            vote_granted: resp.vote_granted,
            last_log_id: opt_log_id_to_pb(&resp.last_log_id),
        }))
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let raft = self.raft(&req)?;
        let req = req.into_inner();
        let meta = req
            .meta
            .as_ref()
            .map(snapshot_meta_from_pb)
            .ok_or_else(|| malformed("snapshot chunk without meta"))?;
        let rpc = InstallSnapshotRequest::<TypeConfig> {
            vote: need_vote(req.vote.as_ref()).map_err(malformed)?,
            meta,
            offset: req.offset,
            data: req.data.to_vec(),
            done: req.done,
        };
        match raft.install_snapshot(rpc).await {
            Ok(resp) => Ok(Response::new(pb::InstallSnapshotResponse {
                vote: Some(vote_to_pb(&resp.vote)),
            })),
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
                Err(Status::failed_precondition(m.expect.id))
            }
            Err(e) => Err(raft_failed(e)),
        }
    }
}
