//! Following a job: `sluice watch JOB`, and `sluice enqueue --job J --wait`.

use base64::Engine;
use clap::Args;
use serde_json::json;
use sluice_client::proto::TaskOutcome;
use sluice_client::{Client, JobEvent};

use super::exit::Failure;
use super::print;
use super::progress::Progress;

/// Watch a job's tasks complete.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The job id.
    job: String,
}

pub async fn run(client: &Client, args: WatchArgs, as_json: bool) -> Result<(), Failure> {
    follow(client, &args.job, None, as_json).await
}

/// Bytes as text when they are UTF-8, base64 otherwise, with which.
fn text_or_base64(b: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(b) {
        Ok(s) => (s.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(b),
            "base64",
        ),
    }
}

fn line(t: &TaskOutcome, as_json: bool) -> String {
    let (payload, payload_encoding) = text_or_base64(&t.payload);
    let (result, result_encoding) = text_or_base64(&t.result);
    if as_json {
        let v = json!({
            "task_id": t.task_id,
            "payload": payload,
            "payload_encoding": payload_encoding,
            "outcome": if t.succeeded { "succeeded" } else { "failed" },
            "attempts": t.attempts,
            "result": result,
            "result_encoding": result_encoding,
            "error": t.error,
        });
        return format!("{v}\n");
    }
    if t.succeeded {
        format!("{}  ok      {}\n", t.task_id, result.trim_end())
    } else {
        format!(
            "{}  failed  after {} attempts: {}\n",
            t.task_id, t.attempts, t.error
        )
    }
}

/// Prints each outcome (a JSON line each with `as_json`) and the summary;
/// fails if any task failed. `total` sizes the progress bar.
pub async fn follow(
    client: &Client,
    job: &str,
    total: Option<u64>,
    as_json: bool,
) -> Result<(), Failure> {
    let mut watch = client.watch_job(job).await?;
    let progress = Progress::new(total);
    while let Some(events) = watch.next().await? {
        for e in events {
            match e {
                JobEvent::Task(t) => {
                    progress.advance_done(1);
                    let text = line(&t, as_json);
                    progress.suspend(|| print(&text))?;
                }
                JobEvent::Done(s) => {
                    progress.finish();
                    let summary = if as_json {
                        format!(
                            "{}\n",
                            json!({
                                "job_id": s.job_id,
                                "succeeded": s.succeeded,
                                "failed": s.failed,
                                "duration_ms": s.duration_ms,
                            })
                        )
                    } else {
                        format!(
                            "job {}: {} succeeded, {} failed in {:.1}s\n",
                            s.job_id,
                            s.succeeded,
                            s.failed,
                            s.duration_ms as f64 / 1000.0
                        )
                    };
                    print(&summary)?;
                    if s.failed > 0 {
                        return Err(Failure::Refused(format!(
                            "job {}: {} of {} tasks failed",
                            s.job_id,
                            s.failed,
                            s.failed + s.succeeded
                        )));
                    }
                    return Ok(());
                }
            }
        }
    }
    progress.finish();
    Err(Failure::Refused(format!(
        "job {job}: the broker ended the watch before the job completed"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_text_or_base64_and_say_which() {
        assert_eq!(text_or_base64(b"ok"), ("ok".to_owned(), "utf8"));
        assert_eq!(text_or_base64(&[0xff, 0x00]), ("/wA=".to_owned(), "base64"));
    }
}
