//! Proposals go to Raft in the order they are made: callers hand them over
//! under their own locks (a plain channel send), and one task passes them
//! to Raft one after another, so the log's order is the callers' order.
//!
//! A proposal that Raft does not commit (this member is no longer leader,
//! or Raft stopped) is reported to its waiter, and to whoever watches
//! [`Proposer::lost`]: the leader ran its commands already, so its state
//! now holds something the log does not.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use openraft::Raft;
use tokio::sync::{Notify, mpsc, oneshot};

use super::stats::ClusterStats;
use super::{Proposal, TypeConfig};

/// The Raft instance a member runs now (it is replaced when the member
/// restarts its replicated state), and the member's counts, which outlive
/// it.
#[derive(Clone, Default)]
pub struct Current {
    raft: Arc<RwLock<Option<Raft<TypeConfig>>>>,
    stats: Arc<ClusterStats>,
}

impl Current {
    pub fn get(&self) -> Option<Raft<TypeConfig>> {
        self.raft.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, raft: Option<Raft<TypeConfig>>) {
        *self.raft.write().unwrap_or_else(|p| p.into_inner()) = raft;
    }

    pub fn stats(&self) -> &Arc<ClusterStats> {
        &self.stats
    }
}

/// Resolves once a proposal is committed; an error says why it was not.
pub type Commit = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

struct Proposed {
    bytes: Bytes,
    /// When it was made: commit latency counts from here.
    at: std::time::Instant,
    done: Option<oneshot::Sender<Result<(), String>>>,
    answered: Answered,
}

/// Hands proposals to Raft in order. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Proposed>,
    lost: Arc<Notify>,
    /// Proposals made and not yet answered (committed and applied, or
    /// failed).
    in_flight: Arc<AtomicU64>,
    /// Proposals made, ever: one entry each, in this order in the log.
    made: Arc<AtomicU64>,
}

/// Counts a proposal out when it is answered, however.
struct Answered(Arc<AtomicU64>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Proposer {
    /// Starts the task that feeds `current`'s Raft.
    pub fn start(current: Current) -> Proposer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Proposed>();
        let lost = Arc::new(Notify::new());
        let in_flight = Arc::new(AtomicU64::new(0));
        let notify = lost.clone();
        let stats = current.stats().clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let outcome = match current.get() {
                    None => Err("this member runs no Raft".to_owned()),
                    Some(raft) => raft
                        .client_write_ff(Proposal(p.bytes))
                        .await
                        .map_err(|e| e.to_string()),
                };
                let notify = notify.clone();
                match outcome {
                    Ok(answer) => {
                        let stats = stats.clone();
                        tokio::spawn(async move {
                            let r = match answer.await {
                                Ok(Ok(_)) => {
                                    stats.commit.observe(p.at.elapsed());
                                    Ok(())
                                }
                                Ok(Err(e)) => Err(e.to_string()),
                                Err(_) => Err("Raft stopped before answering".to_owned()),
                            };
                            if r.is_err() {
                                notify.notify_one();
                            }
                            if let Some(done) = p.done {
                                let _ = done.send(r);
                            }
                            drop(p.answered);
                        });
                    }
                    Err(e) => {
                        notify.notify_one();
                        if let Some(done) = p.done {
                            let _ = done.send(Err(e));
                        }
                    }
                }
            }
        });
        Proposer {
            tx,
            lost,
            in_flight,
            made: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Proposes `bytes`; with `wait`, returns what resolves once it is
    /// committed.
    pub fn propose(&self, bytes: Bytes, wait: bool) -> Option<Commit> {
        let (done, rx) = match wait {
            true => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.made.fetch_add(1, Ordering::AcqRel);
        let answered = Answered(self.in_flight.clone());
        if self
            .tx
            .send(Proposed {
                bytes,
                at: std::time::Instant::now(),
                done,
                answered,
            })
            .is_err()
        {
            self.lost.notify_one();
            return wait
                .then(|| Box::pin(async { Err("the proposer stopped".to_owned()) }) as Commit);
        }
        rx.map(|rx| {
            Box::pin(async move {
                rx.await
                    .unwrap_or_else(|_| Err("the proposer stopped".to_owned()))
            }) as Commit
        })
    }

    /// Woken when a proposal was not committed.
    pub fn lost(&self) -> &Notify {
        &self.lost
    }

    /// Proposals not yet answered.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }
}
