//! `GetBrokerInfo`: what the broker tells tools about itself — version,
//! limits, storage, security, features. Gathered once at start ([`Setup`]
//! from the command line, plus the [`Limits`]); nothing here changes while
//! it runs, but for a cluster member's view of its cluster
//! ([`ClusterView`]), read from its Raft at each call.

use sluice_proto::v1 as pb;

use crate::limits::Limits;
use crate::storage::FsyncPolicy;

/// How the broker was started, beyond its [`Limits`].
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// `--in-memory`: no log, durable queues refused.
    pub in_memory: bool,
    pub fsync: FsyncPolicy,
    pub max_disk_bytes: Option<u64>,
    /// Tokens required (`--auth-file`).
    pub auth: bool,
    pub tls: bool,
    /// Mutual TLS (`--tls-client-ca`).
    pub tls_client_certificates: bool,
    pub max_streams_per_connection: u32,
}

/// What this version serves whatever its flags; the proto lists each
/// name's meaning. Only "durable" depends on the set-up.
const FEATURES: &[&str] = &[
    "enqueue",
    "publish",
    "consume",
    "get",
    "join",
    "jobs",
    "delay",
    "priority",
    "idempotency-keys",
    "dead-letter",
    "health",
    "reflection",
    "schedules",
];

/// The answer to `GetBrokerInfo`.
pub fn response(setup: &Setup, limits: &Limits) -> pb::GetBrokerInfoResponse {
    let (fsync, fsync_interval_ms) = match (setup.in_memory, setup.fsync) {
        (true, _) => (pb::FsyncPolicy::Unspecified, 0),
        (false, FsyncPolicy::Always) => (pb::FsyncPolicy::Always, 0),
        (false, FsyncPolicy::Never) => (pb::FsyncPolicy::Never, 0),
        (false, FsyncPolicy::Interval(d)) => (
            pb::FsyncPolicy::Interval,
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        ),
    };
    let mut features: Vec<String> = FEATURES.iter().map(|f| (*f).to_owned()).collect();
    if !setup.in_memory {
        features.push("durable".to_owned());
    }
    let max_message = limits.max_message_bytes() as u64;
    pb::GetBrokerInfoResponse {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        // No git commit: that needs a build script, and the version names
        // the release. The profile explains a slow broker; arch and OS
        // come free from std.
        build: format!(
            "{} {} {}",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            std::env::consts::ARCH,
            std::env::consts::OS
        ),
        limits: Some(pb::BrokerLimits {
            max_payload_bytes: limits.max_payload_bytes as u64,
            max_memory_bytes: limits.max_memory_bytes,
            max_queues: limits.max_queues as u64,
            max_schedules: limits.max_schedules as u64,
            max_consumers_per_queue: limits.max_consumers_per_queue,
            max_consumers: limits.max_consumers,
            max_credit: limits.max_credit,
            max_batch: limits.max_batch as u64,
            max_request_bytes: max_message,
            max_response_bytes: max_message,
            consume_frame_payload_bytes: crate::broker::FRAME_BYTES as u64,
            max_streams_per_connection: setup.max_streams_per_connection,
            max_disk_bytes: if setup.in_memory {
                0
            } else {
                setup.max_disk_bytes.unwrap_or(0)
            },
        }),
        in_memory: setup.in_memory,
        fsync: fsync as i32,
        fsync_interval_ms,
        auth: setup.auth,
        tls: setup.tls,
        tls_client_certificates: setup.tls_client_certificates,
        features,
        cluster: None,
    }
}

/// Where a cluster member reads its view of the cluster from.
#[derive(Clone)]
pub struct ClusterView {
    pub current: crate::cluster::proposer::Current,
    /// This member's URL, as clients reach it.
    pub own_url: String,
}

impl ClusterView {
    /// The member's view now; None while its Raft restarts.
    pub fn info(&self, broker: &crate::broker::Broker) -> Option<pb::ClusterInfo> {
        let raft = self.current.get()?;
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let matched = |id: u64| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map_or(0, |l| l.index)
        };
        Some(pb::ClusterInfo {
            node_id: m.id,
            leader: broker.serving(),
            leader_url: match broker.serving() {
                true => self.own_url.clone(),
                false => broker.leader_hint().unwrap_or_default(),
            },
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            members: membership
                .nodes()
                .map(|(id, node)| pb::ClusterMember {
                    node_id: *id,
                    address: node.addr.clone(),
                    voter: voters.contains(id),
                    matched_index: matched(*id),
                })
                .collect(),
            millis_since_quorum_ack: m.millis_since_quorum_ack.unwrap_or(0),
        })
    }
}

/// A membership change's failure as a status.
fn membership_error(e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::failed_precondition(format!("membership change refused: {e}"))
}

impl ClusterView {
    /// Adds member `id` at `addr`: a learner until it caught up, then a
    /// voter. A voter already at that address is left as it is.
    pub async fn add_member(
        &self,
        broker: &crate::broker::Broker,
        id: u64,
        addr: String,
    ) -> Result<pb::ClusterInfo, tonic::Status> {
        use openraft::{BasicNode, ChangeMembers};
        if id == 0 {
            return Err(tonic::Status::invalid_argument(
                "node_id 0 is not a member id",
            ));
        }
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(tonic::Status::invalid_argument(format!(
                "address {addr:?} is not HOST:PORT"
            )));
        }
        let raft = self.raft()?;
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if let Some(node) = membership.get_node(&id) {
            let voter = membership.voter_ids().any(|v| v == id);
            if node.addr != addr {
                return Err(tonic::Status::failed_precondition(format!(
                    "node {id} is a member at {}; remove it first to move it",
                    node.addr
                )));
            }
            if voter {
                return self.answer(broker);
            }
        }
        // Blocks until the learner has caught up, so that making it a voter
        // does not leave the cluster waiting on a member far behind.
        raft.add_learner(id, BasicNode { addr }, true)
            .await
            .map_err(membership_error)?;
        raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false)
            .await
            .map_err(membership_error)?;
        self.answer(broker)
    }

    /// Removes member `id` (voter or learner); the last voter stays.
    pub async fn remove_member(
        &self,
        broker: &crate::broker::Broker,
        id: u64,
    ) -> Result<pb::ClusterInfo, tonic::Status> {
        use openraft::ChangeMembers;
        let raft = self.raft()?;
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return self.answer(broker);
        }
        let voters: Vec<u64> = membership.voter_ids().collect();
        if voters == [id] {
            return Err(tonic::Status::failed_precondition(format!(
                "node {id} is the cluster's last voter"
            )));
        }
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        raft.change_membership(change, false)
            .await
            .map_err(membership_error)?;
        self.answer(broker)
    }

    fn raft(&self) -> Result<openraft::Raft<crate::cluster::TypeConfig>, tonic::Status> {
        self.current
            .get()
            .ok_or_else(|| tonic::Status::unavailable("this member is restarting its Raft"))
    }

    fn answer(&self, broker: &crate::broker::Broker) -> Result<pb::ClusterInfo, tonic::Status> {
        self.info(broker)
            .ok_or_else(|| tonic::Status::unavailable("this member is restarting its Raft"))
    }
}
