//! Jobs: a batch of tasks, enqueued under one job id, whose outcomes are
//! streamed to any number of watchers — each task as it completes
//! (task-complete), then a summary once the sealed job is whole
//! (job-complete). A watcher that connects late first gets what already
//! happened.
//!
//! The registry is broker-wide (a job's tasks may go to several queues) and
//! in memory: outcomes are kept until `ttl` after the job completed (or
//! after its last activity, for a job never sealed), at most
//! [`MAX_OUTCOMES`] per job — counts stay exact beyond that, but a late
//! watcher then sees only the first outcomes. With a log, what happens to
//! tasks of durable queues is logged (each change appended under the
//! registry's lock, so a compaction snapshot and the events around it
//! cannot cross), and jobs come back after a restart.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sluice_proto::v1 as pb;
use tokio::sync::broadcast;

use crate::engine::{Completion, Millis};
use crate::validate::task_id_str;

/// Outcomes kept per job for late watchers.
pub const MAX_OUTCOMES: usize = 100_000;

struct Job {
    enqueued: u64,
    /// Set by sealing: how many tasks the job has in all.
    total: Option<u64>,
    succeeded: u64,
    failed: u64,
    outcomes: Vec<pb::TaskOutcome>,
    started: Millis,
    last: Millis,
    summary: Option<pb::JobSummary>,
    tx: broadcast::Sender<pb::WatchJobResponse>,
}

impl Job {
    fn new(now: Millis) -> Self {
        Job {
            enqueued: 0,
            total: None,
            succeeded: 0,
            failed: 0,
            outcomes: Vec::new(),
            started: now,
            last: now,
            summary: None,
            tx: broadcast::channel(4096).0,
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
            let _ = self.tx.send(pb::WatchJobResponse {
                task_complete: Vec::new(),
                job_complete: Some(summary),
            });
        }
    }
}

/// What a new watcher starts from.
pub struct Watch {
    pub history: Vec<pb::TaskOutcome>,
    pub summary: Option<pb::JobSummary>,
    pub live: broadcast::Receiver<pb::WatchJobResponse>,
}

/// Every job the broker knows.
pub struct Jobs {
    jobs: Mutex<HashMap<String, Job>>,
    log: Option<crate::storage::Log>,
    ttl_ms: std::sync::atomic::AtomicU64,
}

impl Jobs {
    pub fn new(ttl: Duration, log: Option<crate::storage::Log>) -> Self {
        Jobs {
            jobs: Mutex::new(HashMap::new()),
            log,
            ttl_ms: std::sync::atomic::AtomicU64::new(ttl.as_millis() as u64),
        }
    }

    /// How long a job is kept after its last outcome (or seal).
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms
            .store(ttl.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a job record when there is a log and the event is durable.
    fn log(&self, durable: bool, r: crate::durable::JobRecord) {
        if let (true, Some(log)) = (durable, &self.log) {
            // Not awaited, as acks are not: at-least-once either way.
            drop(log.append(vec![crate::durable::job(r)]));
        }
    }

    /// Puts jobs back as the log described them.
    pub fn restore(
        &self,
        recovered: std::collections::BTreeMap<String, crate::durable::JobRecord>,
    ) {
        let mut all = self.lock();
        for (id, r) in recovered {
            let mut job = Job::new(r.started_at);
            job.enqueued = r.stored;
            job.total = r.sealed.then_some(r.total);
            job.succeeded = r.succeeded;
            job.failed = r.failed;
            job.outcomes = r.outcomes;
            job.last = r.last.max(r.started_at);
            job.check_done(&id, job.last);
            all.insert(id, job);
        }
    }

    /// Writes every job's whole state to the log (compaction).
    pub fn snapshot(&self) -> Vec<crate::registry::Durability> {
        let Some(log) = &self.log else {
            return Vec::new();
        };
        let all = self.lock();
        all.iter()
            .map(|(id, j)| {
                let r = crate::durable::JobRecord {
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
                };
                let append = log.append(vec![crate::durable::job(r)]);
                Box::pin(async move { append.await.map(|_| ()) }) as crate::registry::Durability
            })
            .collect()
    }

    /// Tasks of jobs were stored (`durable`: in a durable queue).
    pub fn stored(&self, jobs: &[Box<str>], now: Millis, durable: bool) {
        let mut all = self.lock();
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for j in jobs {
            *counts.entry(j).or_insert(0) += 1;
        }
        for (j, n) in counts {
            self.log(
                durable,
                crate::durable::JobRecord {
                    job: j.to_owned(),
                    stored: n,
                    started_at: now,
                    last: now,
                    ..Default::default()
                },
            );
        }
        for j in jobs {
            let job = all.entry(j.to_string()).or_insert_with(|| Job::new(now));
            job.enqueued += 1;
            job.last = now;
        }
    }

    /// Tasks of jobs ended; tell the watchers.
    pub fn completed(&self, done: Vec<Completion>, now: Millis, durable: bool) {
        let mut all = self.lock();
        for c in done {
            let logged = pb::TaskOutcome {
                task_id: task_id_str(c.id),
                succeeded: c.succeeded,
                result: c.result.clone(),
                error: c.error.clone(),
                attempts: c.attempts,
                completed_at_unix_ms: now,
                payload: c.payload.clone(),
            };
            self.log(
                durable,
                crate::durable::JobRecord {
                    job: c.job.to_string(),
                    outcomes: vec![logged],
                    started_at: now,
                    last: now,
                    ..Default::default()
                },
            );
            let id = c.job.to_string();
            let job = all.entry(id.clone()).or_insert_with(|| Job::new(now));
            if c.succeeded {
                job.succeeded += 1;
            } else {
                job.failed += 1;
            }
            job.last = now;
            let outcome = pb::TaskOutcome {
                task_id: task_id_str(c.id),
                succeeded: c.succeeded,
                result: c.result,
                error: c.error,
                attempts: c.attempts,
                completed_at_unix_ms: now,
                payload: c.payload,
            };
            if job.outcomes.len() < MAX_OUTCOMES {
                job.outcomes.push(outcome.clone());
            }
            let _ = job.tx.send(pb::WatchJobResponse {
                task_complete: vec![outcome],
                job_complete: None,
            });
            job.check_done(&id, now);
        }
    }

    /// The producer has sent all of the job: `total` tasks (None: as many
    /// as were stored so far). Returns the total.
    pub fn seal(
        &self,
        id: &str,
        total: Option<u64>,
        now: Millis,
    ) -> (u64, Option<crate::registry::Durability>) {
        let mut all = self.lock();
        let job = all.entry(id.to_owned()).or_insert_with(|| Job::new(now));
        let total = total.unwrap_or(job.enqueued);
        job.total = Some(total);
        job.last = now;
        job.check_done(id, now);
        let durability = self.log.as_ref().map(|log| {
            let r = crate::durable::JobRecord {
                job: id.to_owned(),
                total,
                sealed: true,
                started_at: now,
                last: now,
                ..Default::default()
            };
            let append = log.append(vec![crate::durable::job(r)]);
            Box::pin(async move { append.await.map(|_| ()) }) as crate::registry::Durability
        });
        (total, durability)
    }

    /// Starts watching a job (known or not yet: a watcher may come first).
    pub fn watch(&self, id: &str, now: Millis) -> Watch {
        let mut all = self.lock();
        let job = all.entry(id.to_owned()).or_insert_with(|| Job::new(now));
        // Under the same lock as every send: nothing is missed or doubled
        // between the history and the live feed.
        Watch {
            history: job.outcomes.clone(),
            summary: job.summary.clone(),
            live: job.tx.subscribe(),
        }
    }

    /// Forgets jobs whose time is up.
    pub fn sweep(&self, now: Millis) {
        let ttl = self.ttl_ms.load(std::sync::atomic::Ordering::Relaxed);
        self.lock()
            .retain(|_, j| now.saturating_sub(j.last) < ttl || j.tx.receiver_count() > 0);
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

    #[test]
    fn a_late_watcher_gets_history_then_live_then_the_summary() {
        let jobs = Jobs::new(Duration::from_secs(60), None);
        let j: Box<str> = "j".into();
        jobs.stored(&[j.clone(), j.clone(), j.clone()], 0, false);
        jobs.completed(vec![done("j", 1, true)], 1, false);
        let mut w = jobs.watch("j", 2);
        assert_eq!(w.history.len(), 1);
        assert!(w.summary.is_none());
        assert_eq!(jobs.seal("j", None, 3).0, 3);
        jobs.completed(vec![done("j", 2, true), done("j", 3, false)], 4, false);
        let a = w.live.try_recv().expect("task 2");
        assert_eq!(a.task_complete[0].result, Bytes::from("r2"));
        let b = w.live.try_recv().expect("task 3");
        assert!(!b.task_complete[0].succeeded);
        let s = w.live.try_recv().expect("summary");
        let s = s.job_complete.expect("summary");
        assert_eq!((s.succeeded, s.failed), (2, 1));
        // A watcher after the end gets it all at once.
        let w2 = jobs.watch("j", 5);
        assert_eq!(w2.history.len(), 3);
        assert!(w2.summary.is_some());
    }
}
