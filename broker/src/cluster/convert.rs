//! openraft's types to the `sluice.cluster.v1` messages and back: what
//! goes between members and onto their disks.
//!
//! Decoding never panics on what a peer or a disk sent: a missing field
//! a message cannot do without is a [`Malformed`] error.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LeaderId, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};
use sluice_proto::cluster as pb;

use super::{Proposal, TypeConfig};

/// A message lacks what it must say.
#[derive(Debug, thiserror::Error)]
#[error("malformed cluster message: {0}")]
pub struct Malformed(pub &'static str);

pub fn vote_to_pb(v: &Vote<u64>) -> pb::RaftVote {
    pb::RaftVote {
        term: v.leader_id.term,
        node_id: v.leader_id.node_id,
        committed: v.committed,
    }
}

pub fn vote_from_pb(v: &pb::RaftVote) -> Vote<u64> {
    Vote {
        leader_id: LeaderId::new(v.term, v.node_id),
        committed: v.committed,
    }
}

pub fn need_vote(v: Option<&pb::RaftVote>) -> Result<Vote<u64>, Malformed> {
    v.map(vote_from_pb).ok_or(Malformed("vote missing"))
}

pub fn log_id_to_pb(id: &LogId<u64>) -> pb::LogId {
    pb::LogId {
        term: id.leader_id.term,
        node_id: id.leader_id.node_id,
        index: id.index,
    }
}

pub fn log_id_from_pb(id: &pb::LogId) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(id.term, id.node_id), id.index)
}

pub fn opt_log_id_to_pb(id: &Option<LogId<u64>>) -> Option<pb::LogId> {
    id.as_ref().map(log_id_to_pb)
}

pub fn opt_log_id_from_pb(id: &Option<pb::LogId>) -> Option<LogId<u64>> {
    id.as_ref().map(log_id_from_pb)
}

pub fn membership_to_pb(m: &Membership<u64, BasicNode>) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|c| pb::NodeSet {
                ids: c.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
    }
}

pub fn membership_from_pb(m: &pb::Membership) -> Membership<u64, BasicNode> {
    let configs: Vec<BTreeSet<u64>> = m
        .configs
        .iter()
        .map(|c| c.ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, BasicNode> = m
        .nodes
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    Membership::new(configs, nodes)
}

pub fn entry_to_pb(e: &Entry<TypeConfig>) -> pb::Entry {
    let payload = match &e.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(p) => pb::entry::Payload::Command(p.0.clone()),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry {
        log_id: Some(log_id_to_pb(&e.log_id)),
        payload: Some(payload),
    }
}

pub fn entry_from_pb(e: pb::Entry) -> Result<Entry<TypeConfig>, Malformed> {
    let log_id = e
        .log_id
        .as_ref()
        .map(log_id_from_pb)
        .ok_or(Malformed("entry without log id"))?;
    let payload = match e.payload.ok_or(Malformed("entry without payload"))? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Command(bytes) => EntryPayload::Normal(Proposal(bytes)),
        pb::entry::Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(&m)),
    };
    Ok(Entry { log_id, payload })
}

pub fn snapshot_meta_to_pb(m: &SnapshotMeta<u64, BasicNode>) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: opt_log_id_to_pb(&m.last_log_id),
        last_membership_log_id: opt_log_id_to_pb(m.last_membership.log_id()),
        last_membership: Some(membership_to_pb(m.last_membership.membership())),
        snapshot_id: m.snapshot_id.clone(),
    }
}

pub fn snapshot_meta_from_pb(m: &pb::SnapshotMeta) -> SnapshotMeta<u64, BasicNode> {
    let membership = m
        .last_membership
        .as_ref()
        .map(membership_from_pb)
        .unwrap_or_default();
    SnapshotMeta {
        last_log_id: opt_log_id_from_pb(&m.last_log_id),
        last_membership: StoredMembership::new(
            opt_log_id_from_pb(&m.last_membership_log_id),
            membership,
        ),
        snapshot_id: m.snapshot_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn entries_and_metas_survive_the_round_trip() {
        let m = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([
                (1, BasicNode::new("127.0.0.1:1")),
                (2, BasicNode::new("127.0.0.1:2")),
                (3, BasicNode::new("127.0.0.1:3")),
            ]),
        );
        let id = LogId::new(CommittedLeaderId::new(3, 2), 17);
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(Proposal(Bytes::from_static(b"cmd"))),
            EntryPayload::Membership(m.clone()),
        ] {
            let e = Entry::<TypeConfig> {
                log_id: id,
                payload,
            };
            let back = entry_from_pb(entry_to_pb(&e)).expect("decodes");
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }
        let meta = SnapshotMeta {
            last_log_id: Some(id),
            last_membership: StoredMembership::new(Some(id), m),
            snapshot_id: "s-1".into(),
        };
        assert_eq!(snapshot_meta_from_pb(&snapshot_meta_to_pb(&meta)), meta);
        let v = Vote::new_committed(4, 1);
        assert_eq!(vote_from_pb(&vote_to_pb(&v)), v);
        assert!(entry_from_pb(pb::Entry::default()).is_err());
    }
}
