//! Schedules: a task the broker enqueues by itself on every tick of a cron
//! expression or a fixed interval, each tick's task keyed `NAME@TICK` so
//! that it fires once. Creating, listing (every page), pausing, resuming
//! and deleting them.

use crate::Error;
use crate::client::{Client, required};
use crate::proto::{
    CreateScheduleRequest, DeleteScheduleRequest, ListSchedulesRequest, PauseScheduleRequest,
    ResumeScheduleRequest, ScheduleInfo, ScheduleSpec,
};

impl Client {
    /// Creates schedule `spec.name` (`CreateSchedule`), paused if `paused`
    /// (no tick fires until [`Client::resume_schedule`]). Answers the
    /// schedule as it now exists and whether this call created it.
    ///
    /// Idempotent on the definition: a schedule that exists with an equal
    /// `spec` answers `false` and is left as it is — paused or running,
    /// whatever `paused` says here. Another definition is `AlreadyExists`
    /// (delete it first). `NotFound` when the queue does not exist,
    /// `InvalidArgument` for a bad name, expression, interval, time zone or
    /// task, `ResourceExhausted` beyond the broker's `--max-schedules`.
    ///
    /// ```no_run
    /// # async fn f(client: &sluice_client::Client) -> Result<(), sluice_client::Error> {
    /// use sluice_client::proto::{ScheduleSpec, ScheduledTask};
    /// // every night at 3, Paris time, one job per night
    /// let (schedule, created) = client
    ///     .create_schedule(
    ///         ScheduleSpec {
    ///             name: "nightly-report".into(),
    ///             queue: "reports".into(),
    ///             cron: "0 3 * * *".into(),
    ///             time_zone: "Europe/Paris".into(),
    ///             task: Some(ScheduledTask {
    ///                 job_id: "report-{tick}".into(),
    ///                 ..ScheduledTask::default()
    ///             }),
    ///             ..ScheduleSpec::default()
    ///         },
    ///         false,
    ///     )
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn create_schedule(
        &self,
        spec: ScheduleSpec,
        paused: bool,
    ) -> Result<(ScheduleInfo, bool), Error> {
        let request = CreateScheduleRequest {
            schedule: Some(spec),
            paused,
        };
        let answer = self
            .call(|mut raw| {
                let request = request.clone();
                async move { raw.create_schedule(request).await }
            })
            .await?;
        Ok((
            required(answer.schedule, "CreateScheduleResponse.schedule")?,
            answer.created,
        ))
    }

    /// Every schedule the token may see, by name, with its next and last
    /// tick; only those of `queue` when given. Reads every page
    /// (`ListSchedulesResponse.next_after`) before it answers.
    pub async fn list_schedules(&self, queue: Option<&str>) -> Result<Vec<ScheduleInfo>, Error> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let request = ListSchedulesRequest {
                queue: queue.unwrap_or_default().to_owned(),
                after: after.clone(),
            };
            let page = self
                .call_again(|mut raw| {
                    let request = request.clone();
                    async move { raw.list_schedules(request).await }
                })
                .await?;
            all.extend(page.schedules);
            if page.next_after.is_empty() {
                return Ok(all);
            }
            // Names only grow from page to page; one that does not would
            // have us ask for the same page forever.
            if page.next_after <= after {
                return Err(Error::Protocol(format!(
                    "ListSchedulesResponse.next_after {:?} does not come after {after:?}",
                    page.next_after
                )));
            }
            after = page.next_after;
        }
    }

    /// Deletes schedule `name`: it fires no more (a tick already firing
    /// completes). `NotFound` when unknown.
    pub async fn delete_schedule(&self, name: &str) -> Result<(), Error> {
        let request = DeleteScheduleRequest {
            name: name.to_owned(),
        };
        self.call(|mut raw| {
            let request = request.clone();
            async move { raw.delete_schedule(request).await }
        })
        .await?;
        Ok(())
    }

    /// Pauses schedule `name`: no tick fires until
    /// [`Client::resume_schedule`]. Pausing a paused schedule is fine.
    /// Returns the schedule. `NotFound` when unknown.
    pub async fn pause_schedule(&self, name: &str) -> Result<ScheduleInfo, Error> {
        let request = PauseScheduleRequest {
            name: name.to_owned(),
        };
        // Pausing twice is pausing once: safe to send again after a
        // failover.
        let answer = self
            .call_again(|mut raw| {
                let request = request.clone();
                async move { raw.pause_schedule(request).await }
            })
            .await?;
        required(answer.schedule, "PauseScheduleResponse.schedule")
    }

    /// Resumes schedule `name` from its next tick. The ticks that came due
    /// while it was paused are missed: fired late up to its `catch_up`,
    /// else skipped. Resuming a running schedule is fine. Returns the
    /// schedule. `NotFound` when unknown.
    pub async fn resume_schedule(&self, name: &str) -> Result<ScheduleInfo, Error> {
        let request = ResumeScheduleRequest {
            name: name.to_owned(),
        };
        let answer = self
            .call_again(|mut raw| {
                let request = request.clone();
                async move { raw.resume_schedule(request).await }
            })
            .await?;
        required(answer.schedule, "ResumeScheduleResponse.schedule")
    }
}
