//! Jobs: a batch of tasks, enqueued under one job id, whose outcomes are
//! streamed to any number of watchers — each task as it completes
//! (task-complete), then a summary once the sealed job is whole
//! (job-complete). A watcher that connects late first gets what already
//! happened.
//!
//! The registry is broker-wide (a job's tasks may go to several queues) and
//! in memory: a job exists from its first stored task and is kept until
//! `ttl` after its last activity. What it keeps counts in the broker's
//! memory budget: a small fixed cost, the names of its queues, and the
//! outcomes kept for late watchers — at most [`MAX_OUTCOMES`] per job, and
//! for all jobs together at most a quarter of the budget. Beyond that,
//! outcomes are still streamed live and counted exactly, but not kept. No
//! broadcast buffer exists until someone watches.
//!
//! Who may watch or seal a job depends on the queues its tasks went to, so
//! those are kept too. With a log, what happens to tasks of durable queues
//! is logged (each change appended under the registry's lock, so a
//! compaction snapshot and the events around it cannot cross), and jobs
//! come back after a restart.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_proto::v1 as pb;
use tokio::sync::broadcast;

use crate::engine::{Completion, Millis};
use crate::ids::task_id_str;

/// Outcomes kept per job for late watchers.
pub const MAX_OUTCOMES: usize = 100_000;
/// What a job costs beyond its id, queue names and kept outcomes: the
/// `Job` itself (176 bytes), its entry in the map, and its queue list.
const JOB_OVERHEAD: u64 = 512;
/// What a kept outcome costs beyond its payload, result, error and id.
const OUTCOME_OVERHEAD: u64 = 96;
/// Live events buffered per watched job; a watcher further behind picks
/// up again from the kept history.
const LIVE_CAPACITY: usize = 256;

/// What a watcher hears as it happens.
#[derive(Debug, Clone)]
pub enum Event {
    /// A task of the job ended; `queue` is where it was.
    Outcome {
        queue: std::sync::Arc<str>,
        outcome: pb::TaskOutcome,
    },
    /// The sealed job is whole.
    Done(pb::JobSummary),
}

struct Job {
    enqueued: u64,
    /// Set by sealing: how many tasks the job has in all.
    total: Option<u64>,
    succeeded: u64,
    failed: u64,
    /// The first outcomes, kept for late watchers.
    outcomes: Vec<pb::TaskOutcome>,
    /// Outcomes that were not kept (over a limit).
    unkept: u64,
    started: Millis,
    last: Millis,
    summary: Option<pb::JobSummary>,
    /// Queues its tasks were stored in (usually one: a list, not a set).
    queues: Vec<String>,
    /// What this job costs in the memory budget.
    bytes: u64,
    /// Created by the first watcher.
    tx: Option<broadcast::Sender<Event>>,
}

impl Job {
    fn new(id: &str, now: Millis) -> Self {
        Job {
            enqueued: 0,
            total: None,
            succeeded: 0,
            failed: 0,
            outcomes: Vec::new(),
            unkept: 0,
            started: now,
            last: now,
            summary: None,
            queues: Vec::new(),
            bytes: JOB_OVERHEAD + id.len() as u64,
            tx: None,
        }
    }

    /// Completes the job if it is sealed and every task ended.
    fn check_done(&mut self, id: &str, now: Millis) {
        if self.summary.is_some() {
            return;
        }
        if let Some(total) = self.total
            && self.succeeded + self.failed >= total
        {
            let summary = pb::JobSummary {
                job_id: id.to_owned(),
                succeeded: self.succeeded,
                failed: self.failed,
                duration_ms: now.saturating_sub(self.started),
            };
            self.summary = Some(summary.clone());
            if let Some(tx) = &self.tx {
                let _ = tx.send(Event::Done(summary));
            }
        }
    }
}

fn outcome_bytes(o: &pb::TaskOutcome) -> u64 {
    (o.payload.len() + o.result.len() + o.error.len() + o.task_id.len()) as u64 + OUTCOME_OVERHEAD
}

/// A job at a glance (the dashboard's view of it).
#[derive(Debug, Clone)]
pub struct JobBrief {
    pub id: String,
    pub stored: u64,
    pub total: Option<u64>,
    pub succeeded: u64,
    pub failed: u64,
    pub done: bool,
    pub started: Millis,
    pub last: Millis,
    pub queues: Vec<String>,
}

fn brief(id: &str, j: &Job) -> JobBrief {
    JobBrief {
        id: id.to_owned(),
        stored: j.enqueued,
        total: j.total,
        succeeded: j.succeeded,
        failed: j.failed,
        done: j.summary.is_some(),
        started: j.started,
        last: j.last,
        queues: j.queues.clone(),
    }
}

/// What a new watcher starts from.
pub struct Watch {
    /// The kept outcomes, oldest first.
    pub history: Vec<pb::TaskOutcome>,
    /// Outcomes that happened but were not kept.
    pub unkept: u64,
    pub summary: Option<pb::JobSummary>,
    pub live: broadcast::Receiver<Event>,
    /// Queues the job's tasks went to, so far.
    pub queues: Vec<String>,
}

/// Why a seal was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealError {
    /// No task was ever stored under the id (or the job expired).
    NotFound,
    /// Sealed before with another total.
    Sealed { total: u64 },
}

#[derive(Default)]
struct State {
    jobs: HashMap<String, Job>,
    /// Bytes of kept outcomes, all jobs together.
    kept: u64,
}

/// Every job the broker knows.
pub struct Jobs {
    state: Mutex<State>,
    journal: crate::journal::Journal,
    ttl_ms: AtomicU64,
    /// What all jobs cost, readable without the lock (the budget check of
    /// every enqueue reads it).
    bytes: AtomicU64,
    /// Most bytes of outcomes kept for late watchers, all jobs together.
    max_kept: AtomicU64,
}

impl Jobs {
    pub fn new(ttl: Duration, journal: crate::journal::Journal) -> Self {
        Jobs {
            state: Mutex::new(State::default()),
            journal,
            ttl_ms: AtomicU64::new(ttl.as_millis() as u64),
            bytes: AtomicU64::new(0),
            max_kept: AtomicU64::new(u64::MAX),
        }
    }

    /// How long a job is kept after its last outcome (or seal).
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(ttl.as_millis() as u64, Ordering::Relaxed);
    }

    /// Most bytes of outcomes kept for late watchers, all jobs together.
    pub fn set_max_kept(&self, bytes: u64) {
        self.max_kept.store(bytes, Ordering::Relaxed);
    }

    /// Every job, most recently active first, at most `limit`.
    pub fn list(&self, limit: usize) -> Vec<JobBrief> {
        let st = self.lock();
        let mut out: Vec<JobBrief> = st.jobs.iter().map(|(id, j)| brief(id, j)).collect();
        out.sort_by(|a, b| b.last.cmp(&a.last).then_with(|| a.id.cmp(&b.id)));
        out.truncate(limit);
        out
    }

    /// A job and its last `limit` kept outcomes, newest first, with how
    /// many outcomes were not kept.
    pub fn detail(&self, id: &str, limit: usize) -> Option<(JobBrief, Vec<pb::TaskOutcome>, u64)> {
        let st = self.lock();
        let j = st.jobs.get(id)?;
        let outcomes = j.outcomes.iter().rev().take(limit).cloned().collect();
        Some((brief(id, j), outcomes, j.unkept))
    }

    /// What every job together holds, for the memory budget.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Journals a job event that happened on a durable queue. Not waited
    /// for, as acks are not: at-least-once either way. A cluster needs no
    /// job events: every member derives them from the commands it
    /// applies, as the leader did from the commands it ran.
    fn log(&self, durable: bool, r: crate::wal::JobRecord) {
        if durable && self.journal.is_durable() && !self.journal.is_replicated() {
            self.journal.note(crate::wal::job(r));
        }
    }

    /// Keeps an outcome if the limits allow; counts it either way.
    fn keep(&self, st: &mut State, id: &str, outcome: &pb::TaskOutcome) {
        let max = self.max_kept.load(Ordering::Relaxed);
        let cost = outcome_bytes(outcome);
        let Some(job) = st.jobs.get_mut(id) else {
            return;
        };
        if job.outcomes.len() < MAX_OUTCOMES && st.kept.saturating_add(cost) <= max {
            job.outcomes.push(outcome.clone());
            job.bytes += cost;
            st.kept += cost;
            self.bytes.fetch_add(cost, Ordering::Relaxed);
        } else {
            job.unkept += 1;
        }
    }

    /// Finds or makes a job.
    fn entry<'a>(&self, st: &'a mut State, id: &str, now: Millis) -> &'a mut Job {
        st.jobs.entry(id.to_owned()).or_insert_with(|| {
            let job = Job::new(id, now);
            self.bytes.fetch_add(job.bytes, Ordering::Relaxed);
            job
        })
    }

    /// Notes a queue the job's tasks went to.
    fn add_queue(&self, job: &mut Job, queue: &str) {
        if !job.queues.iter().any(|q| q == queue) {
            job.queues.push(queue.to_owned());
            job.bytes += queue.len() as u64;
            self.bytes.fetch_add(queue.len() as u64, Ordering::Relaxed);
        }
    }

    /// Puts jobs back as the log described them: each from its last
    /// snapshot, with the events after it counted as they were live.
    pub fn restore(&self, recovered: std::collections::BTreeMap<String, crate::wal::JobHistory>) {
        let mut st = self.lock();
        for (id, history) in recovered {
            if let Some(r) = history.snapshot {
                let job = self.entry(&mut st, &id, r.started_at);
                job.enqueued = r.stored;
                job.total = r.sealed.then_some(r.total);
                job.succeeded = r.succeeded;
                job.failed = r.failed;
                job.last = r.last.max(r.started_at);
                for q in &r.queues {
                    self.add_queue(job, q);
                }
                let recorded = r.succeeded + r.failed;
                for o in &r.outcomes {
                    self.keep(&mut st, &id, o);
                }
                if let Some(job) = st.jobs.get_mut(&id) {
                    job.unkept = recorded.saturating_sub(job.outcomes.len() as u64);
                }
            }
            for r in history.events {
                let job = self.entry(&mut st, &id, r.started_at);
                job.enqueued += r.stored;
                for q in &r.queues {
                    self.add_queue(job, q);
                }
                if r.sealed {
                    job.total = Some(r.total);
                }
                job.last = job.last.max(r.last);
                for o in &r.outcomes {
                    if let Some(job) = st.jobs.get_mut(&id) {
                        if o.succeeded {
                            job.succeeded += 1;
                        } else {
                            job.failed += 1;
                        }
                    }
                    self.keep(&mut st, &id, o);
                }
            }
            if let Some(job) = st.jobs.get_mut(&id) {
                let last = job.last;
                job.check_done(&id, last);
            }
        }
    }

    /// Takes every job's whole state and the place in the log where it
    /// goes (compaction), under the lock, so that no event falls between
    /// the two. The records are cheap clones (payloads are shared); the
    /// caller encodes them after the lock is released. None without jobs.
    pub fn snapshot(
        &self,
        log: &crate::storage::Log,
    ) -> Result<
        Option<(Vec<crate::wal::JobRecord>, crate::storage::Slot)>,
        crate::storage::StorageError,
    > {
        let st = self.lock();
        if st.jobs.is_empty() {
            return Ok(None);
        }
        Ok(Some((Self::records_of(&st), log.reserve()?)))
    }

    /// Every job's whole state, as a compaction or a cluster's snapshot
    /// keeps it.
    pub fn records(&self) -> Vec<crate::wal::JobRecord> {
        Self::records_of(&self.lock())
    }

    /// Replaces every job with the ones `records` describe (a cluster
    /// member installing a snapshot). Watchers of jobs that are gone see
    /// their streams end.
    pub fn replace_with(&self, records: Vec<crate::wal::JobRecord>) {
        {
            let mut st = self.lock();
            st.jobs.clear();
            st.kept = 0;
            self.bytes.store(0, Ordering::Relaxed);
        }
        self.restore(
            records
                .into_iter()
                .map(|r| {
                    let history = crate::wal::JobHistory {
                        snapshot: Some(r.clone()),
                        events: Vec::new(),
                    };
                    (r.job, history)
                })
                .collect(),
        );
    }

    fn records_of(st: &State) -> Vec<crate::wal::JobRecord> {
        st.jobs
            .iter()
            .map(|(id, j)| crate::wal::JobRecord {
                job: id.clone(),
                stored: j.enqueued,
                total: j.total.unwrap_or(0),
                sealed: j.total.is_some(),
                outcomes: j.outcomes.clone(),
                snapshot: true,
                started_at: j.started,
                succeeded: j.succeeded,
                failed: j.failed,
                last: j.last,
                queues: j.queues.clone(),
            })
            .collect()
    }

    /// Tasks of jobs were stored in `queue` (`durable`: a durable queue).
    pub fn stored(&self, queue: &str, jobs: &[Box<str>], now: Millis, durable: bool) {
        let mut st = self.lock();
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for j in jobs {
            *counts.entry(j).or_insert(0) += 1;
        }
        for (j, n) in counts {
            self.log(
                durable,
                crate::wal::JobRecord {
                    job: j.to_owned(),
                    stored: n,
                    started_at: now,
                    last: now,
                    queues: vec![queue.to_owned()],
                    ..Default::default()
                },
            );
            let job = self.entry(&mut st, j, now);
            job.enqueued += n;
            job.last = now;
            self.add_queue(job, queue);
        }
    }

    /// Tasks of jobs in `queue` ended; tell the watchers.
    pub fn completed(&self, queue: &str, done: Vec<Completion>, now: Millis, durable: bool) {
        let mut st = self.lock();
        let queue: std::sync::Arc<str> = queue.into();
        for c in done {
            let outcome = pb::TaskOutcome {
                task_id: task_id_str(c.id),
                succeeded: c.succeeded,
                result: c.result,
                error: c.error,
                attempts: c.attempts,
                completed_at_unix_ms: now,
                payload: c.payload,
            };
            self.log(
                durable,
                crate::wal::JobRecord {
                    job: c.job.to_string(),
                    outcomes: vec![outcome.clone()],
                    started_at: now,
                    last: now,
                    ..Default::default()
                },
            );
            let id: &str = &c.job;
            let job = self.entry(&mut st, id, now);
            if c.succeeded {
                job.succeeded += 1;
            } else {
                job.failed += 1;
            }
            job.last = now;
            self.keep(&mut st, id, &outcome);
            if let Some(job) = st.jobs.get_mut(id) {
                if let Some(tx) = &job.tx {
                    let _ = tx.send(Event::Outcome {
                        queue: queue.clone(),
                        outcome,
                    });
                }
                job.check_done(id, now);
            }
        }
    }

    /// The queues a job's tasks went to, or None for an unknown job.
    pub fn queues(&self, id: &str) -> Option<Vec<String>> {
        self.lock().jobs.get(id).map(|j| j.queues.clone())
    }

    /// The producer has sent all of the job: `total` tasks (None: as many
    /// as were stored so far). Returns the total. Sealing again answers
    /// the same total when `total` is None or equal to it.
    pub fn seal(
        &self,
        id: &str,
        total: Option<u64>,
        now: Millis,
    ) -> Result<(u64, Option<crate::storage::Durability>), SealError> {
        let mut st = self.lock();
        let job = st.jobs.get_mut(id).ok_or(SealError::NotFound)?;
        if let Some(sealed) = job.total {
            return match total {
                None => Ok((sealed, None)),
                Some(t) if t == sealed => Ok((sealed, None)),
                Some(_) => Err(SealError::Sealed { total: sealed }),
            };
        }
        let total = total.unwrap_or(job.enqueued);
        job.total = Some(total);
        job.last = now;
        job.check_done(id, now);
        let record = match self.journal.is_replicated() {
            true => crate::wal::replicated::seal(id, total, now),
            false => crate::wal::job(crate::wal::JobRecord {
                job: id.to_owned(),
                total,
                sealed: true,
                started_at: now,
                last: now,
                ..Default::default()
            }),
        };
        let durability = self.journal.commit(record, 0);
        Ok((total, durability))
    }

    /// A seal the cluster's leader made, applied by a member: the job's
    /// total as the leader decided it, nothing journaled.
    pub fn apply_seal(&self, id: &str, total: u64, now: Millis) {
        let mut st = self.lock();
        let job = self.entry(&mut st, id, now);
        if job.total.is_none() {
            job.total = Some(total);
            job.last = now;
            job.check_done(id, now);
        }
    }

    /// Starts watching a job; None for an unknown one.
    pub fn watch(&self, id: &str) -> Option<Watch> {
        let mut st = self.lock();
        let job = st.jobs.get_mut(id)?;
        let live = job
            .tx
            .get_or_insert_with(|| broadcast::channel(LIVE_CAPACITY).0)
            .subscribe();
        // Under the same lock as every send: nothing is missed or doubled
        // between the history and the live feed.
        Some(Watch {
            history: job.outcomes.clone(),
            unkept: job.unkept,
            summary: job.summary.clone(),
            live,
            queues: job.queues.clone(),
        })
    }

    /// Forgets jobs whose time is up (unless someone watches them).
    pub fn sweep(&self, now: Millis) {
        let ttl = self.ttl_ms.load(Ordering::Relaxed);
        let mut st = self.lock();
        let mut freed = 0;
        let mut freed_kept = 0;
        st.jobs.retain(|_, j| {
            let watched = j.tx.as_ref().is_some_and(|tx| tx.receiver_count() > 0);
            let keep = now.saturating_sub(j.last) < ttl || watched;
            if !keep {
                freed += j.bytes;
                freed_kept += j.outcomes.iter().map(outcome_bytes).sum::<u64>();
            }
            keep
        });
        st.kept = st.kept.saturating_sub(freed_kept);
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::engine::TaskId;

    fn done(job: &str, id: u64, ok: bool) -> Completion {
        Completion {
            job: job.into(),
            id: TaskId(id),
            payload: Bytes::new(),
            succeeded: ok,
            result: Bytes::from(format!("r{id}")),
            error: if ok { String::new() } else { "bad".into() },
            attempts: 1,
        }
    }

    fn outcome(e: Event) -> pb::TaskOutcome {
        match e {
            Event::Outcome { outcome, .. } => outcome,
            Event::Done(s) => panic!("expected an outcome, got {s:?}"),
        }
    }

    #[test]
    fn a_late_watcher_gets_history_then_live_then_the_summary() {
        let jobs = Jobs::new(Duration::from_secs(60), Default::default());
        let j: Box<str> = "j".into();
        jobs.stored("q", &[j.clone(), j.clone(), j.clone()], 0, false);
        jobs.completed("q", vec![done("j", 1, true)], 1, false);
        let mut w = jobs.watch("j").expect("known job");
        assert_eq!(w.history.len(), 1);
        assert_eq!(w.queues, ["q"]);
        assert!(w.summary.is_none());
        assert_eq!(jobs.seal("j", None, 3).map(|s| s.0), Ok(3));
        jobs.completed("q", vec![done("j", 2, true), done("j", 3, false)], 4, false);
        let a = outcome(w.live.try_recv().expect("task 2"));
        assert_eq!(a.result, Bytes::from("r2"));
        let b = outcome(w.live.try_recv().expect("task 3"));
        assert!(!b.succeeded);
        let Event::Done(s) = w.live.try_recv().expect("summary") else {
            panic!("expected the summary");
        };
        assert_eq!((s.succeeded, s.failed), (2, 1));
        // A watcher after the end gets it all at once.
        let w2 = jobs.watch("j").expect("known job");
        assert_eq!(w2.history.len(), 3);
        assert!(w2.summary.is_some());
    }

    #[test]
    fn a_job_comes_back_from_its_snapshot_and_the_events_after_it() {
        use crate::wal::{JobHistory, JobRecord};
        let outcome = |id: u64| pb::TaskOutcome {
            task_id: task_id_str(TaskId(id)),
            succeeded: true,
            ..Default::default()
        };
        let history = JobHistory {
            snapshot: Some(JobRecord {
                job: "j".into(),
                stored: 2,
                succeeded: 1,
                outcomes: vec![outcome(1)],
                snapshot: true,
                queues: vec!["q".into()],
                ..Default::default()
            }),
            events: vec![
                JobRecord {
                    job: "j".into(),
                    outcomes: vec![outcome(2)],
                    ..Default::default()
                },
                JobRecord {
                    job: "j".into(),
                    sealed: true,
                    total: 2,
                    ..Default::default()
                },
            ],
        };
        let jobs = Jobs::new(Duration::from_secs(60), Default::default());
        jobs.restore([("j".to_owned(), history)].into());
        let w = jobs.watch("j").expect("restored");
        assert_eq!(w.history.len(), 2);
        assert_eq!(w.queues, ["q"]);
        let summary = w.summary.expect("sealed and whole");
        assert_eq!((summary.succeeded, summary.failed), (2, 0));
    }

    #[test]
    fn unknown_jobs_are_neither_watched_nor_sealed_and_a_seal_is_final() {
        let jobs = Jobs::new(Duration::from_secs(60), Default::default());
        assert!(jobs.watch("nobody").is_none(), "watching creates nothing");
        assert_eq!(jobs.bytes(), 0);
        assert_eq!(
            jobs.seal("nobody", Some(3), 0).err(),
            Some(SealError::NotFound)
        );
        jobs.stored("q", &["j".into(), "j".into()], 0, false);
        assert_eq!(jobs.seal("j", None, 1).map(|s| s.0), Ok(2));
        assert_eq!(
            jobs.seal("j", None, 2).map(|s| s.0),
            Ok(2),
            "a retried seal"
        );
        assert_eq!(jobs.seal("j", Some(2), 2).map(|s| s.0), Ok(2));
        assert_eq!(
            jobs.seal("j", Some(5), 2).err(),
            Some(SealError::Sealed { total: 2 })
        );
    }

    #[test]
    fn a_job_costs_what_it_holds_and_outcomes_stop_at_their_share() {
        let jobs = Jobs::new(Duration::from_millis(10), Default::default());
        // 200 jobs of one task each: about half a kilobyte apiece, not the
        // half megabyte a preallocated broadcast buffer cost.
        for i in 0..200 {
            jobs.stored("q", &[format!("job-{i}").into()], 0, false);
        }
        let per_job = jobs.bytes() / 200;
        assert!((512..1024).contains(&per_job), "{per_job} bytes per job");

        jobs.set_max_kept(3 * (OUTCOME_OVERHEAD + 16 + 2));
        let j: Box<str> = "big".into();
        jobs.stored("q", &vec![j; 5], 0, false);
        let before = jobs.bytes();
        jobs.completed(
            "q",
            (1..=5).map(|i| done("big", i, true)).collect(),
            1,
            false,
        );
        let w = jobs.watch("big").expect("known");
        assert_eq!(w.history.len(), 3, "only what fits the outcomes' share");
        assert_eq!(w.unkept, 2);
        assert!(jobs.bytes() > before);
        assert_eq!(jobs.seal("big", None, 2).map(|s| s.0), Ok(5));
        drop(w);
        // Past the ttl with nobody watching: everything is given back.
        jobs.sweep(1_000);
        assert_eq!(jobs.bytes(), 0);
        assert!(jobs.watch("big").is_none());
    }
}
