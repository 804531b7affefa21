//! Jobs from the producer's side: tasks enqueued under a job id (set
//! `NewTask::job_id`), sealed once all are sent, and watched: each task's
//! outcome as it completes, then the job's summary.

use tonic::Streaming;

use crate::Error;
use crate::client::Client;
use crate::proto::{JobSummary, SealJobRequest, TaskOutcome, WatchJobRequest, WatchJobResponse};

/// A job's outcomes as they come.
pub struct JobWatch {
    stream: Streaming<WatchJobResponse>,
    url: String,
}

/// One thing that happened to a job.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// A task ended (acked with its result, or failed for good).
    Task(TaskOutcome),
    /// Every task ended; nothing follows.
    Done(JobSummary),
}

impl Client {
    /// Says the job has `total` tasks (0: as many as the broker stored so
    /// far); it completes once they all ended. Returns the total.
    pub async fn seal_job(&self, job: &str, total: u64) -> Result<u64, Error> {
        let req = SealJobRequest {
            job_id: job.to_owned(),
            total,
        };
        let answer = self
            .raw()
            .seal_job(req)
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        Ok(answer.total)
    }

    /// Watches a job: what already happened first, then live outcomes.
    pub async fn watch_job(&self, job: &str) -> Result<JobWatch, Error> {
        let req = WatchJobRequest {
            job_id: job.to_owned(),
        };
        let stream = self
            .raw()
            .watch_job(req)
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        Ok(JobWatch {
            stream,
            url: self.url().to_owned(),
        })
    }
}

impl JobWatch {
    /// The next events (one frame's worth); None once the job is done and
    /// the stream ended.
    pub async fn next(&mut self) -> Result<Option<Vec<JobEvent>>, Error> {
        let Some(frame) = self
            .stream
            .message()
            .await
            .map_err(|s| Error::from_status(s, &self.url))?
        else {
            return Ok(None);
        };
        let mut events: Vec<JobEvent> = frame
            .task_complete
            .into_iter()
            .map(JobEvent::Task)
            .collect();
        if let Some(s) = frame.job_complete {
            events.push(JobEvent::Done(s));
        }
        Ok(Some(events))
    }

    /// Calls `on_task` for every task outcome, in order, and returns the
    /// summary once the job is done.
    pub async fn wait(
        mut self,
        mut on_task: impl FnMut(&TaskOutcome),
    ) -> Result<JobSummary, Error> {
        while let Some(events) = self.next().await? {
            for e in events {
                match e {
                    JobEvent::Task(t) => on_task(&t),
                    JobEvent::Done(s) => return Ok(s),
                }
            }
        }
        Err(Error::Protocol(
            "the job's stream ended before its summary".into(),
        ))
    }
}
