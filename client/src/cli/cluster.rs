//! `sluice cluster status`: a cluster as its leader sees it (or, while it
//! has none, as the member reached sees it): who leads, the term, how far
//! the log and its application have come, and each member's lag.

use clap::Subcommand;
use serde_json::json;
use sluice_client::Client;
use sluice_client::proto::ClusterInfo;

use super::exit::Failure;
use super::human::Table;
use super::{print, print_json};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the members, the leader, the term, and each member's lag.
    ///
    /// Give --broker as the members' URLs separated by commas: the leader
    /// is found through whichever answers. Exit 1 when the broker is not
    /// a cluster member.
    Status,
    /// Add a member, to replace a dead machine or grow the cluster.
    ///
    /// Start the new broker first with --join, its own --node-id, and a
    /// --peers that names it; this then has it catch up (a snapshot, then
    /// the log) and makes it a voter. Returns once it votes.
    AddNode {
        /// The new member's --node-id.
        node_id: u64,
        /// Its gRPC address, HOST:PORT, as the other members reach it.
        address: String,
    },
    /// Remove a member: it stops voting and receiving the log.
    ///
    /// Stop its process afterwards, and wipe its data directory before it
    /// ever joins again.
    RemoveNode {
        /// The member's node id.
        node_id: u64,
    },
}

/// Runs the command.
pub async fn run(client: &Client, cmd: ClusterCommand, as_json: bool) -> Result<(), Failure> {
    match cmd {
        ClusterCommand::Status => {
            let info = client.broker_info().await?;
            let Some(c) = info.cluster else {
                return Err(Failure::Refused(format!(
                    "{} runs alone: it is not a cluster member (start it with --node-id and --peers)",
                    client.url()
                )));
            };
            if as_json {
                return print_json(&status_json(&c));
            }
            print(&status_text(&c))
        }
        ClusterCommand::AddNode { node_id, address } => {
            let c = client.add_cluster_member(node_id, &address).await?;
            if as_json {
                return print_json(&status_json(&c));
            }
            print(&format!(
                "node {node_id} ({address}) votes\n{}",
                status_text(&c)
            ))
        }
        ClusterCommand::RemoveNode { node_id } => {
            let c = client.remove_cluster_member(node_id).await?;
            if as_json {
                return print_json(&status_json(&c));
            }
            print(&format!(
                "node {node_id} is no longer a member: stop it\n{}",
                status_text(&c)
            ))
        }
    }
}

fn status_json(c: &ClusterInfo) -> serde_json::Value {
    json!({
        "node_id": c.node_id,
        "leader": c.leader,
        "leader_url": c.leader_url,
        "term": c.term,
        "last_log_index": c.last_log_index,
        "last_applied_index": c.last_applied_index,
        "snapshot_index": c.snapshot_index,
        "millis_since_quorum_ack": c.millis_since_quorum_ack,
        "members": c.members.iter().map(|m| json!({
            "node_id": m.node_id,
            "address": m.address,
            "voter": m.voter,
            "matched_index": m.matched_index,
            "lag": c.leader.then(|| c.last_log_index.saturating_sub(m.matched_index)),
        })).collect::<Vec<_>>(),
    })
}

fn status_text(c: &ClusterInfo) -> String {
    let leader = match (c.leader, c.leader_url.as_str()) {
        (true, url) => format!("node {} ({url})", c.node_id),
        (false, "") => "none elected".to_owned(),
        (false, url) => url.to_owned(),
    };
    let mut out = format!(
        "cluster as node {} sees it\n  leader    {leader}\n  term      {}\n  log       up to entry {}, applied up to {}, snapshot at {}\n",
        c.node_id, c.term, c.last_log_index, c.last_applied_index, c.snapshot_index
    );
    if c.leader {
        out.push_str(&format!(
            "  quorum    answered {} ms ago\n",
            c.millis_since_quorum_ack
        ));
    }
    out.push('\n');
    let mut t = Table::new(&["node", "address", "role", "matched", "lag"]);
    for m in &c.members {
        let role = match (m.node_id == c.node_id, c.leader, m.voter) {
            (true, true, _) => "leader",
            (_, _, true) => "voter",
            (_, _, false) => "learner",
        };
        let (matched, lag) = match c.leader {
            true => (
                m.matched_index.to_string(),
                c.last_log_index.saturating_sub(m.matched_index).to_string(),
            ),
            false => ("-".to_owned(), "-".to_owned()),
        };
        t.row(vec![
            m.node_id.to_string(),
            m.address.clone(),
            role.to_owned(),
            matched,
            lag,
        ]);
    }
    out.push_str(&t.render("  "));
    out
}
