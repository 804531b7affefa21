//! The WatchJob stream: a job's kept outcomes in frames that fit a default
//! client, then its live outcomes, then its summary.
//!
//! A watcher may read a job only while it may read every queue the job's
//! tasks went to; a task of the job landing in a queue it may not read
//! ends the stream with PERMISSION_DENIED.

use std::collections::HashSet;

use sluice_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tonic::Status;

use crate::api::auth::{Access, Role};
use crate::broker::{Broker, FRAME_BYTES};
use crate::error::Error;
use crate::jobs::{Event, Watch};

type Out = mpsc::Sender<Result<pb::WatchJobResponse, Status>>;

/// Streams job `job` to `out`, starting from `first`; returns when the
/// job completes, the watcher leaves, or the broker stops.
pub async fn run(broker: Broker, access: Access, job: String, first: Watch, out: Out) {
    let mut allowed: HashSet<String> = first.queues.iter().cloned().collect();
    // Outcomes sent so far: after falling behind the live feed, the watch
    // picks up from here in the kept history.
    let mut sent = 0usize;
    let mut next = Some(first);
    loop {
        let w = match next.take() {
            Some(w) => w,
            None => match broker.jobs().watch(&job) {
                Some(w) => w,
                None => {
                    let _ = out.send(Err(Error::JobNotFound(job).into())).await;
                    return;
                }
            },
        };
        for q in &w.queues {
            if !allowed.contains(q) {
                if let Err(denied) = access.require(Role::Read, q) {
                    let _ = out.send(Err(denied)).await;
                    return;
                }
                allowed.insert(q.clone());
            }
        }
        let Watch {
            history,
            unkept,
            summary,
            mut live,
            ..
        } = w;
        if sent > 0 && unkept > 0 {
            let msg = format!(
                "the watcher fell behind job {job:?}'s outcomes, and the broker did not keep \
                 all of them (at most {} per job, and a quarter of --max-memory-bytes for all \
                 jobs); watch again to get the kept ones and the summary",
                crate::jobs::MAX_OUTCOMES
            );
            let _ = out.send(Err(Status::aborted(msg))).await;
            return;
        }
        let start = sent.min(history.len());
        for frame in frames(&history[start..]) {
            sent += frame.task_complete.len();
            if out.send(Ok(frame)).await.is_err() {
                return;
            }
        }
        if let Some(summary) = summary {
            let frame = pb::WatchJobResponse {
                task_complete: Vec::new(),
                job_complete: Some(summary),
            };
            let _ = out.send(Ok(frame)).await;
            return;
        }
        loop {
            let event = tokio::select! {
                e = live.recv() => e,
                _ = broker.shutdown().cancelled() => {
                    let _ = out.send(Err(Error::ShuttingDown.into())).await;
                    return;
                }
                _ = out.closed() => return,
            };
            let frame = match event {
                Ok(Event::Outcome { queue, outcome }) => {
                    if !allowed.contains(&*queue) {
                        if let Err(denied) = access.require(Role::Read, &queue) {
                            let _ = out.send(Err(denied)).await;
                            return;
                        }
                        allowed.insert(queue.to_string());
                    }
                    sent += 1;
                    pb::WatchJobResponse {
                        task_complete: vec![outcome],
                        job_complete: None,
                    }
                }
                Ok(Event::Done(summary)) => {
                    let frame = pb::WatchJobResponse {
                        task_complete: Vec::new(),
                        job_complete: Some(summary),
                    };
                    let _ = out.send(Ok(frame)).await;
                    return;
                }
                // Behind the live feed: start again from the history.
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return,
            };
            if out.send(Ok(frame)).await.is_err() {
                return;
            }
        }
    }
}

/// Outcomes in frames of at most [`FRAME_BYTES`] (one larger outcome goes
/// alone).
fn frames(outcomes: &[pb::TaskOutcome]) -> Vec<pb::WatchJobResponse> {
    let mut out: Vec<pb::WatchJobResponse> = Vec::new();
    let mut bytes = 0;
    for o in outcomes {
        let size = o.payload.len() + o.result.len() + o.error.len() + 64;
        if out.is_empty() || (bytes > 0 && bytes + size > FRAME_BYTES) {
            out.push(pb::WatchJobResponse::default());
            bytes = 0;
        }
        bytes += size;
        if let Some(last) = out.last_mut() {
            last.task_complete.push(o.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn outcome(size: usize) -> pb::TaskOutcome {
        pb::TaskOutcome {
            payload: Bytes::from(vec![1u8; size]),
            ..Default::default()
        }
    }

    #[test]
    fn history_frames_fit_a_default_client() {
        // What a late Python watcher choked on: five 900 KiB outcomes.
        let history: Vec<_> = (0..5).map(|_| outcome(900 << 10)).collect();
        let f = frames(&history);
        assert_eq!(f.len(), 5);
        assert!(f.iter().all(|f| f.task_complete.len() == 1));
        let small: Vec<_> = (0..3000).map(|_| outcome(10)).collect();
        let f = frames(&small);
        assert_eq!(f.len(), 1, "small outcomes share a frame");
        assert_eq!(f[0].task_complete.len(), 3000);
    }
}
