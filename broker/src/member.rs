//! A broker as a member of a cluster: its Raft (on its data directory),
//! its broker (replicated through that Raft), and the task that follows
//! its leadership.
//!
//! - A fresh cluster forms by itself: every member initializes Raft with
//!   the same membership (`--peers`), which Raft allows, and the first
//!   majority to be up elects a leader. A member that restarts comes back
//!   from its data directory; one that lost it rejoins from a snapshot.
//! - A member that becomes leader first applies everything committed
//!   before its term, then takes over (see `Broker::begin_leading`), then
//!   serves. Until then, and on every other member, queue calls are
//!   answered UNAVAILABLE with the leader's address (`api::leader`).
//! - A leader runs calls before their commands are committed. When it
//!   stops leading, or a proposal of its is not committed, its state may
//!   hold what the log does not: it stops serving and restarts its Raft
//!   and state from its snapshot, as if it had crashed; Raft then
//!   re-applies the committed log.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Replica};
use crate::cluster::log_store::LogStore;
use crate::cluster::machine::StateMachine;
use crate::cluster::network::Network;
use crate::cluster::proposer::{Current, Proposer};
use crate::cluster::{Machine, TypeConfig};
use crate::journal::Journal;
use crate::storage::LogOptions;

/// What a member is started with.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// This member's id: its key in `peers`.
    pub id: u64,
    /// Every member's id and gRPC address (HOST:PORT), this one's
    /// included: where this member reaches each of the others (Raft's
    /// calls, and the leader hint it gives clients). Members are normally
    /// given the same list; the ids must agree, the addresses may differ.
    pub peers: BTreeMap<u64, String>,
    /// Where its Raft log and snapshot live.
    pub dir: PathBuf,
    /// How its Raft log is written (fsync policy, segment size, quota).
    pub log: LogOptions,
    /// Shared by every member; when set, Raft calls must carry it.
    pub secret: Option<String>,
    /// Whether clients reach the members over TLS (for the leader hint's
    /// scheme).
    pub tls: bool,
    /// Joining a running cluster (`--join`): wait to be added by its
    /// leader (AddClusterMember) instead of forming a cluster of `peers`.
    pub join: bool,
    /// Log entries between snapshots (`--snapshot-every`).
    pub snapshot_every: u64,
}

/// A running member.
pub struct Member {
    pub broker: Broker,
    /// The Raft it runs now, for the gRPC service.
    pub current: Current,
}

/// Raft's timing and snapshots, tuned for a broker: heartbeats every
/// 200 ms, elections after 0.8–1.6 s without one (room for a loaded
/// machine), a snapshot every 50,000 entries.
fn raft_config(snapshot_every: u64) -> Result<Arc<Config>, String> {
    let c = Config {
        cluster_name: "sluice".into(),
        heartbeat_interval: 200,
        election_timeout_min: 800,
        election_timeout_max: 1600,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every.max(1)),
        // Entries kept behind a snapshot, so that a follower a little
        // behind catches up from the log rather than a whole snapshot.
        max_in_snapshot_log_to_keep: (snapshot_every / 2).min(1_000),
        snapshot_max_chunk_size: 1024 * 1024,
        ..Default::default()
    };
    c.validate().map(Arc::new).map_err(|e| e.to_string())
}

struct Parts {
    cfg: MemberConfig,
    config: Arc<Config>,
    store: LogStore,
    machine: Arc<dyn Machine>,
    network: Network,
    current: Current,
    proposer: Proposer,
    broker: Broker,
    shutdown: CancellationToken,
}

impl Member {
    /// Opens the member's Raft log and snapshot, starts its Raft, joins
    /// (or forms) the cluster, and starts following its leadership.
    pub async fn start(cfg: MemberConfig, shutdown: CancellationToken) -> Result<Member, String> {
        if !cfg.peers.contains_key(&cfg.id) {
            return Err(format!(
                "--node-id {} is not one of --peers ({})",
                cfg.id,
                cfg.peers
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let current = Current::default();
        let proposer = Proposer::start(current.clone());
        let broker = Broker::clustered(shutdown.clone(), Journal::replicated(proposer.clone()));
        let store = LogStore::open(&cfg.dir.join("raft"), cfg.log.clone())?
            .with_stats(current.stats().clone());
        let network = Network {
            secret: match &cfg.secret {
                Some(s) => Some(
                    s.parse()
                        .map_err(|_| "the cluster secret must be printable ASCII".to_owned())?,
                ),
                None => None,
            },
            peers: Arc::new(cfg.peers.clone()),
        };
        let parts = Arc::new(Parts {
            config: raft_config(cfg.snapshot_every)?,
            machine: Arc::new(Replica(broker.clone())),
            store,
            network,
            current: current.clone(),
            proposer,
            broker: broker.clone(),
            shutdown,
            cfg,
        });
        let raft = parts.raft().await?;
        current.set(Some(raft.clone()));
        if !parts.cfg.join && !raft.is_initialized().await.unwrap_or(true) {
            tokio::spawn(parts.clone().form(raft));
        }
        tokio::spawn(parts.clone().follow());
        Ok(Member { broker, current })
    }
}

impl Parts {
    /// Forms the cluster of `--peers`, unless another member did first.
    ///
    /// Any member may: the cluster must form once a majority is up,
    /// whichever. But not all at once: a member that initializes stands
    /// for election at once, and openraft ranks candidates of one term by
    /// id, so a member starting a moment after another won the first term
    /// would unseat it (it recovers, one election later, having thrown its
    /// first leader's work away). So members take turns, in the order of
    /// their ids, each after the one before had time to win an election
    /// and reach it; a member that heard from a leader meanwhile is a
    /// member already and does nothing. (A member that comes back from
    /// its disk, or `--join`s, never forms one.)
    async fn form(self: Arc<Self>, raft: Raft<TypeConfig>) {
        let turn = self
            .cfg
            .peers
            .keys()
            .position(|id| *id == self.cfg.id)
            .unwrap_or(0);
        let wait = std::time::Duration::from_millis(
            (self.config.election_timeout_max + 2 * self.config.heartbeat_interval) * turn as u64,
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.shutdown.cancelled() => return,
        }
        if raft.is_initialized().await.unwrap_or(true) {
            return;
        }
        // The same voters on every member, that is: Raft's safety rests on
        // the ids alone; the addresses are each member's own `--peers`,
        // only used to dial.
        let nodes: BTreeMap<u64, BasicNode> = self
            .cfg
            .peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        if let Err(e) = raft.initialize(nodes).await {
            tracing::debug!(error = %e, "cluster already formed");
        }
    }

    /// A Raft over the state the member's snapshot holds.
    async fn raft(&self) -> Result<Raft<TypeConfig>, String> {
        let sm = StateMachine::open(self.machine.clone(), &self.cfg.dir)?
            .with_stats(self.current.stats().clone());
        Raft::new(
            self.cfg.id,
            self.config.clone(),
            self.network.clone(),
            self.store.clone(),
            sm,
        )
        .await
        .map_err(|e| format!("starting Raft: {e}"))
    }

    /// Follows this member's leadership until shutdown.
    async fn follow(self: Arc<Self>) {
        let mut failed_term = None;
        loop {
            let Some(raft) = self.current.get() else {
                return;
            };
            let Some(term) = self.until_leader(&raft).await else {
                break;
            };
            // Everything committed before this term is applied first.
            if let Err(e) = raft.ensure_linearizable().await {
                // Said once per term: cut off from a majority, this repeats
                // every heartbeat until the partition heals.
                if failed_term != Some(term) {
                    tracing::info!(error = %e, term, "cannot serve: no majority confirms this leader");
                    failed_term = Some(term);
                } else {
                    tracing::debug!(error = %e, "still no majority");
                }
                // Not at once: a member that led before it (or its Raft)
                // restarted is a leader again from the start, and while
                // it cannot reach a majority it stays one, and the check
                // fails as fast as connections are refused: without a
                // pause this loop spins (thousands of turns a second).
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(
                        self.config.heartbeat_interval,
                    )) => {}
                    _ = self.shutdown.cancelled() => break,
                }
                continue;
            }
            // A member restarted with a vote of its own that a majority
            // had granted leads again in that very term (openraft keeps
            // it), and its log may hold entries of that term an earlier
            // run of it wrote: those are not in this run's state, so they
            // are applied, all of them, before it runs ahead of the log.
            let Some(from) = self.applied_own_log(&raft, term).await else {
                continue;
            };
            match self.broker.begin_leading(term, self.cfg.id, from).await {
                Ok(()) => {
                    tracing::info!(term, node = self.cfg.id, "leading");
                    self.broker.set_serving(true);
                }
                Err(e) => tracing::warn!(error = %e, "could not take over; restarting"),
            }
            let why = match self.broker.serving() {
                true => match self.while_leading(&raft, term).await {
                    Some(why) => why,
                    None => break,
                },
                false => "it could not take over",
            };
            self.broker.set_serving(false);
            tracing::info!(
                term,
                why,
                "no longer leading; restarting the replicated state"
            );
            if let Err(e) = self.restart(&raft).await {
                tracing::error!(error = %e, "restarting Raft failed; this member stops");
                self.shutdown.cancel();
                return;
            }
        }
        if let Some(raft) = self.current.get() {
            let _ = raft.shutdown().await;
        }
    }

    /// Waits until this member leads; keeps the leader hint current
    /// meanwhile. None at shutdown.
    async fn until_leader(&self, raft: &Raft<TypeConfig>) -> Option<u64> {
        let mut metrics = raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                self.hint(m.current_leader, &m.membership_config);
                if m.state == ServerState::Leader && m.current_leader == Some(self.cfg.id) {
                    return Some(m.current_term);
                }
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return None },
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }

    /// Waits until everything in this member's log now is applied; the
    /// index after it (where this run's own proposals start). None if it
    /// stopped leading meanwhile, or the log did not commit in time.
    async fn applied_own_log(&self, raft: &Raft<TypeConfig>, term: u64) -> Option<u64> {
        let mut metrics = raft.metrics();
        let last = metrics.borrow().last_log_index.unwrap_or(0);
        let give_up = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.state != ServerState::Leader || m.current_term != term {
                    return None;
                }
                if m.last_applied.map_or(0, |l| l.index) >= last {
                    return Some(last + 1);
                }
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return None },
                _ = tokio::time::sleep_until(give_up) => {
                    tracing::warn!(term, last, "this leader's log did not commit in time; restarting");
                    return None;
                }
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }

    /// Waits while this member leads in `term`; says why it stopped, None
    /// at shutdown.
    ///
    /// Also ends when no majority has answered it for longer than an
    /// election takes: cut off from the others (a partition), it could
    /// commit nothing, and the others have elected a leader of their own
    /// by now. openraft keeps it a leader until it hears of that one; it
    /// stops serving at once instead, so that its clients go looking for
    /// the new leader rather than wait on calls that cannot commit, and
    /// its workers stop taking tasks the new leader hands out too.
    async fn while_leading(&self, raft: &Raft<TypeConfig>, term: u64) -> Option<&'static str> {
        let mut metrics = raft.metrics();
        let quorum_lost_after =
            self.config.election_timeout_max + 2 * self.config.heartbeat_interval;
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.state != ServerState::Leader || m.current_term != term {
                    tracing::debug!(state = ?m.state, term = m.current_term, leader = ?m.current_leader, "leadership changed");
                    self.hint(m.current_leader, &m.membership_config);
                    return Some("another member leads, or an election is under way");
                }
                if let Some(ms) = m.millis_since_quorum_ack
                    && ms > quorum_lost_after
                {
                    tracing::warn!(
                        term,
                        millis_since_quorum_ack = ms,
                        "no majority answers this leader: it stops serving"
                    );
                    self.hint(None, &m.membership_config);
                    return Some("no majority answers it");
                }
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return Some("its Raft stopped") },
                // Raft reports at least every heartbeat; this is in case
                // it does not.
                _ = tokio::time::sleep(std::time::Duration::from_millis(self.config.heartbeat_interval)) => {}
                // A proposal of this leader was not committed.
                _ = self.proposer.lost().notified() => return Some("a proposal was not committed"),
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }

    /// Points clients at the leader Raft knows of.
    fn hint(&self, leader: Option<u64>, membership: &openraft::StoredMembership<u64, BasicNode>) {
        self.current.stats().saw_leader(leader);
        let scheme = if self.cfg.tls { "https" } else { "http" };
        // Not itself: a leader that does not serve yet is catching up, and
        // sending clients back to it would only loop them. The address is
        // the one this member reaches the leader by (its `--peers`, as the
        // network dials), else the membership's: see `Network::new_client`.
        let addr = leader
            .filter(|id| *id != self.cfg.id)
            .and_then(|id| {
                self.cfg.peers.get(&id).cloned().or_else(|| {
                    membership
                        .membership()
                        .get_node(&id)
                        .map(|n| n.addr.clone())
                })
            })
            .map(|addr| format!("{scheme}://{addr}"));
        self.broker.set_leader_hint(addr);
    }

    /// Stops Raft, puts the state back to the member's snapshot (every
    /// queue and its calls end), and starts Raft again over it.
    async fn restart(&self, old: &Raft<TypeConfig>) -> Result<(), String> {
        self.current.set(None);
        let _ = old.shutdown().await;
        self.broker.drop_every_queue();
        // No snapshot file: the state starts empty and Raft re-applies the
        // whole log.
        self.machine.restore(&[])?;
        let raft = self.raft().await?;
        self.current.set(Some(raft));
        Ok(())
    }
}
