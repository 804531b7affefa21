//! `sluice enqueue`: payloads from arguments or stdin lines, sent in
//! batches, ids printed as each batch is stored.
//!
//! Each batch is one Enqueue call, stored all or none; a multi-batch run
//! that fails part way leaves the earlier batches stored, and their ids have
//! been printed, so the caller knows exactly what went in. While a WAIT
//! batch waits for space no more input is read, so a full queue pauses the
//! writer of our stdin too: backpressure reaches the start of the pipe.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use sluice_client::proto::{EnqueueMode, NewTask};
use sluice_client::{Client, Code, Publisher, duration_ms};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use super::batch::{Batcher, Limits, MAX_BATCH_TASKS};
use super::exit::Failure;
use super::progress::{Progress, SAY_WAITING_AFTER};
use super::{parse, print_json};

/// How long a partial batch may wait for more stdin lines before it is sent
/// anyway, so `tail -f log | sluice enqueue q` delivers promptly.
const LINGER: Duration = Duration::from_millis(100);

/// Protobuf framing per task beside payload and header bytes (tags,
/// lengths, priority, delay); an upper bound is all batching needs.
const TASK_FRAMING: usize = 32;

/// Add tasks to a queue.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Queue name.
    queue: String,
    /// Task payloads, one task per argument. With none, one task per line of
    /// stdin (the line without its "\n" or "\r\n"; an empty line is an empty
    /// task).
    #[arg(value_name = "PAYLOAD")]
    payloads: Vec<OsString>,
    /// Priority of every task; PRIORITY queues serve the lowest first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Header on every task, as NAME=VALUE; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// Keep the tasks back this long before they can be delivered (500ms, 1h).
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    delay: Option<Duration>,
    /// Enqueue the tasks as job ID: each one's outcome is reported to the
    /// job's watchers; the job is sealed with these tasks once all are
    /// stored.
    #[arg(long, value_name = "ID")]
    job: Option<String>,
    /// With --job: stay, show completed/total, print each task's outcome
    /// (a JSON line each with --json) and the summary; exit 1 if any task
    /// failed.
    #[arg(long, requires = "job")]
    wait: bool,
    /// Fairness group of every task (a tenant, a customer): the queue
    /// serves its groups round-robin, and caps each with its
    /// --max-in-flight-per-group.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Idempotency key of the task (one PAYLOAD only): while a task with
    /// this key is unfinished in the queue, and for the queue's key window
    /// after, the same key stores nothing and prints the existing task's id.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Keep the tasks back until this time (RFC 3339, e.g.
    /// 2026-12-24T18:00:00Z); a time in the past means at once.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak, conflicts_with = "delay", value_name = "TIME")]
    at: Option<std::time::SystemTime>,
    /// Fail at once when the queue is full ("queue full", exit 75) instead
    /// of waiting for space.
    #[arg(long)]
    no_wait: bool,
    /// Give up when a batch has waited this long for space ("timed out
    /// waiting for space", exit 1). Default: wait as long as it takes.
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    timeout: Option<Duration>,
    /// Most tasks per Enqueue call or Publish frame. Lower it to fit a
    /// broker started with a smaller --max-batch; the CLI also never sends
    /// more than the queue's capacity at once.
    #[arg(long, value_name = "N", default_value_t = MAX_BATCH_TASKS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
}

/// A checked `enqueue` command, ready to run.
#[derive(Debug)]
pub struct Plan {
    queue: String,
    payloads: Vec<OsString>,
    template: NewTask,
    mode: EnqueueMode,
    timeout: Option<Duration>,
    job: Option<String>,
    wait: bool,
    batch: usize,
}

impl EnqueueArgs {
    /// Checks what clap could not (headers), before any network traffic.
    pub fn plan(self) -> Result<Plan, Failure> {
        let headers = parse::headers(&self.headers).map_err(Failure::Usage)?;
        if self.key.is_some() && self.payloads.len() != 1 {
            // One key on many tasks would keep only the first of them.
            return Err(Failure::Usage(
                "--key names one task: give exactly one PAYLOAD".into(),
            ));
        }
        Ok(Plan {
            job: self.job.clone(),
            wait: self.wait,
            queue: self.queue,
            payloads: self.payloads,
            template: NewTask {
                headers,
                key: self.key.unwrap_or_default(),
                job_id: self.job.unwrap_or_default(),
                group: self.group.unwrap_or_default(),
                priority: self.priority,
                delay_ms: match (self.delay, self.at) {
                    (Some(d), _) => duration_ms(d),
                    // Relative to this machine's clock; the broker keeps the
                    // delay, not the wall time.
                    (None, Some(at)) => at
                        .duration_since(std::time::SystemTime::now())
                        .map_or(0, duration_ms),
                    (None, None) => 0,
                },
                ..NewTask::default()
            },
            mode: if self.no_wait {
                EnqueueMode::FailFast
            } else {
                EnqueueMode::Wait
            },
            timeout: self.timeout,
            batch: self.batch as usize,
        })
    }
}

/// Runs the command; `json` prints the ids as one array at the end instead
/// of one per line as they come.
pub async fn run(client: &Client, plan: Plan, json: bool) -> Result<(), Failure> {
    // The capacity bounds the batch size (a WAIT batch larger than the queue
    // could never fit), and an unknown queue fails here, before any input is
    // read.
    let info = client.get_queue(&plan.queue).await?;
    let capacity = info
        .options
        .as_ref()
        .map(|o| o.capacity)
        .filter(|&c| c > 0)
        .or(info.stats.as_ref().map(|s| s.capacity).filter(|&c| c > 0))
        .unwrap_or(MAX_BATCH_TASKS as u64);
    // What the queue holds now, until the broker's answers tell more.
    let depth = info.stats.as_ref().map_or(0, |s| s.ready + s.delayed);
    let overhead = TASK_FRAMING
        + plan.template.group.len()
        + plan
            .template
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>();
    let mut limits = Limits::for_capacity(capacity, overhead);
    limits.max_tasks = limits.max_tasks.min(plan.batch);

    let from_args = !plan.payloads.is_empty();
    let total = from_args.then_some(plan.payloads.len() as u64);
    // Bulk input that may wait for space goes over a Publish stream: the
    // broker grants credit as the queue drains, so the CLI reads no further
    // ahead than it may send.
    let publisher = if !from_args && plan.mode == EnqueueMode::Wait && plan.timeout.is_none() {
        // A window of a quarter of the queue (at most 1000): enough to keep
        // the stream full without reserving the whole queue for one producer.
        let window = u32::try_from((capacity / 4).clamp(1, 1000)).unwrap_or(1000);
        // A window wider than the batch still sends frames of at most one
        // batch, also when the publisher merges what queued up.
        let frame = sluice_client::FrameLimit {
            items: limits.max_tasks,
            // The batch limit counts each task's overhead; merging counts
            // payloads only.
            bytes: limits
                .max_bytes
                .saturating_sub(limits.max_tasks.saturating_mul(limits.overhead)),
        };
        Some(client.publisher_with(&plan.queue, window, frame).await?)
    } else {
        None
    };
    let mut sender = Sender {
        client,
        plan,
        json,
        ids: Vec::new(),
        progress: Progress::new(total),
        publisher,
        sent: 0,
        depth,
        capacity,
    };
    let result = if from_args {
        let payloads = std::mem::take(&mut sender.plan.payloads);
        send_args(&mut sender, limits, payloads).await
    } else {
        send_stdin(&mut sender, limits).await
    };
    let result = match result {
        Ok(()) => sender.finish().await,
        Err(e) => Err(e),
    };
    sender.progress.finish();
    let waiting = sender.plan.wait;
    if json && !waiting {
        // Printed on failure too: the ids of the batches that were stored.
        print_json(&serde_json::Value::from(std::mem::take(&mut sender.ids)))?;
    }
    result?;
    if let Some(job) = sender.plan.job.clone() {
        // Total 0: what the broker stored under the job (a task whose key
        // was taken is not part of it).
        let total = client.seal_job(&job, 0).await?;
        if waiting {
            return super::watch::follow(client, &job, Some(total), json).await;
        }
    }
    Ok(())
}

async fn send_args(
    sender: &mut Sender<'_>,
    limits: Limits,
    payloads: Vec<OsString>,
) -> Result<(), Failure> {
    let mut batcher = Batcher::new(limits);
    for payload in payloads {
        // Arguments are bytes on Unix; pass them through unchanged.
        batcher.push(Bytes::from(payload.into_encoded_bytes()));
        while let Some(batch) = batcher.next_batch() {
            sender.send(batch).await?;
        }
    }
    batcher.seal();
    while let Some(batch) = batcher.next_batch() {
        sender.send(batch).await?;
    }
    Ok(())
}

async fn send_stdin(sender: &mut Sender<'_>, limits: Limits) -> Result<(), Failure> {
    if std::io::stdin().is_terminal() {
        // Not an error, just a hint: a bare `sluice enqueue q` would
        // otherwise seem to hang.
        let _ = writeln!(
            std::io::stderr(),
            "reading tasks from stdin, one per line; end with Ctrl-D"
        );
    }
    let stdin = BufReader::with_capacity(256 * 1024, tokio::io::stdin());
    // `Split` keeps a partial line in itself, so dropping `next_segment` at
    // the linger deadline loses nothing (unlike `read_until`).
    let mut lines = stdin.split(b'\n');
    let mut batcher = Batcher::new(limits);
    let mut open_since: Option<Instant> = None;
    loop {
        let next = match open_since {
            None => lines.next_segment().await,
            Some(since) => {
                match tokio::time::timeout_at(since + LINGER, lines.next_segment()).await {
                    Ok(next) => next,
                    Err(_idle) => {
                        batcher.seal();
                        open_since = None;
                        while let Some(batch) = batcher.next_batch() {
                            sender.send(batch).await?;
                        }
                        continue;
                    }
                }
            }
        };
        let Some(line) = next.map_err(|e| Failure::Io("reading stdin", e))? else {
            break;
        };
        batcher.push(Bytes::from(strip_cr(line)));
        while let Some(batch) = batcher.next_batch() {
            sender.send(batch).await?;
        }
        open_since = match (batcher.has_open(), open_since) {
            (false, _) => None,
            (true, None) => Some(Instant::now()),
            (true, since) => since,
        };
    }
    batcher.seal();
    while let Some(batch) = batcher.next_batch() {
        sender.send(batch).await?;
    }
    Ok(())
}

/// Drops the "\r" of a "\r\n" line end (the "\n" is already gone).
fn strip_cr(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

/// Sends batches and reports their ids.
struct Sender<'a> {
    client: &'a Client,
    plan: Plan,
    json: bool,
    ids: Vec<String>,
    progress: Progress,
    publisher: Option<Publisher>,
    /// Tasks stored so far.
    sent: u64,
    /// The queue's depth and capacity at the broker's last word, for the
    /// line that says we wait for space.
    depth: u64,
    capacity: u64,
}

impl Sender<'_> {
    async fn send(&mut self, batch: Vec<Bytes>) -> Result<(), Failure> {
        let tasks: Vec<NewTask> = batch
            .into_iter()
            .map(|payload| NewTask {
                payload,
                ..self.plan.template.clone()
            })
            .collect();
        if let Some(mut p) = self.publisher.take() {
            let sent = self.publish(&mut p, tasks).await;
            self.publisher = Some(p);
            return sent;
        }
        self.enqueue(tasks).await
    }

    /// Sends over the Publish stream as credit comes. While none comes the
    /// queue is full: say so, and keep reporting what gets confirmed.
    async fn publish(&mut self, p: &mut Publisher, mut tasks: Vec<NewTask>) -> Result<(), Failure> {
        while !tasks.is_empty() {
            while !p.wait_credit_for(SAY_WAITING_AFTER).await? {
                self.confirmed(p, 0)?;
                // With tasks unconfirmed the broker is slow to store them
                // (a stalled disk), which is not the queue being full.
                if p.unconfirmed() == 0 {
                    self.progress
                        .waiting_for_space(&self.plan.queue, self.depth, self.capacity);
                }
            }
            // Only we spend credit: what there is now goes without waiting.
            let n = usize::try_from(p.credit())
                .unwrap_or(usize::MAX)
                .clamp(1, tasks.len());
            let rest = tasks.split_off(n);
            p.send_batch(std::mem::replace(&mut tasks, rest)).await?;
            self.confirmed(p, n as u64)?;
        }
        Ok(())
    }

    /// Counts `sent` tasks more, shows the queue's fullness and reports the
    /// ids confirmed since last time.
    fn confirmed(&mut self, p: &mut Publisher, sent: u64) -> Result<(), Failure> {
        let (depth, capacity) = p.depth();
        if capacity > 0 {
            (self.depth, self.capacity) = (depth, capacity);
        }
        self.progress.advance(sent, self.depth, self.capacity);
        self.progress.waited(p.waited());
        self.report(p.take_confirmed())
    }

    /// Sends one Enqueue call; in WAIT mode the broker holds it until the
    /// batch fits, and after a while we say so.
    async fn enqueue(&mut self, tasks: Vec<NewTask>) -> Result<(), Failure> {
        let Sender {
            client,
            plan,
            progress,
            depth,
            capacity,
            ..
        } = self;
        let answer = {
            let call = client.enqueue(&plan.queue, tasks, plan.mode, plan.timeout);
            tokio::pin!(call);
            let mut said = plan.mode != EnqueueMode::Wait;
            loop {
                tokio::select! {
                    answer = &mut call => break answer,
                    () = tokio::time::sleep(SAY_WAITING_AFTER), if !said => {
                        progress.waiting_for_space(&plan.queue, *depth, *capacity);
                        said = true;
                    }
                }
            }
        };
        let answer = answer.map_err(|e| match e.code() {
            Code::ResourceExhausted if plan.mode == EnqueueMode::FailFast => {
                Failure::QueueFull(match e.retry_after() {
                    Some(d) => format!("retry in ~{:.1}s", d.as_secs_f64()),
                    None => e.to_string(),
                })
            }
            Code::DeadlineExceeded if plan.timeout.is_some() => Failure::TimedOut(format!(
                "timed out waiting for space in queue {:?}",
                plan.queue
            )),
            _ => Failure::Client(e),
        })?;
        if answer.capacity > 0 {
            (*depth, *capacity) = (answer.depth, answer.capacity);
        }
        progress.advance(answer.ids.len() as u64, *depth, *capacity);
        self.report(answer.ids)
    }

    /// Prints ids as they are confirmed (or keeps them for the JSON array).
    fn report(&mut self, ids: Vec<String>) -> Result<(), Failure> {
        self.sent += ids.len() as u64;
        if ids.is_empty() || self.plan.wait {
            // Following a job prints outcomes, not ids.
            return Ok(());
        }
        if self.json {
            self.ids.extend(ids);
            return Ok(());
        }
        let mut text = String::with_capacity(ids.iter().map(|id| id.len() + 1).sum());
        for id in &ids {
            text.push_str(id);
            text.push('\n');
        }
        self.progress.suspend(|| super::print(&text))
    }

    /// Ends a Publish stream and reports the last confirmations.
    async fn finish(&mut self) -> Result<(), Failure> {
        if let Some(p) = self.publisher.take() {
            let ids = p.finish().await?;
            self.report(ids)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: EnqueueArgs,
    }

    fn plan(argv: &[&str]) -> Result<Plan, Failure> {
        let cli = Cli::try_parse_from(std::iter::once("enqueue").chain(argv.iter().copied()))
            .expect("clap accepts");
        cli.args.plan()
    }

    #[test]
    fn flags_shape_every_task() {
        let p = plan(&[
            "q",
            "a",
            "b",
            "--priority",
            "-3",
            "--header",
            "k=v",
            "--group",
            "tenant-7",
            "--delay",
            "1s",
            "--no-wait",
        ])
        .expect("valid");
        assert_eq!(p.queue, "q");
        assert_eq!(p.payloads, vec![OsString::from("a"), OsString::from("b")]);
        assert_eq!(p.template.priority, -3);
        assert_eq!(p.template.headers["k"], "v");
        assert_eq!(p.template.group, "tenant-7");
        assert_eq!(p.template.delay_ms, 1000);
        assert_eq!(p.mode, EnqueueMode::FailFast);
        assert_eq!(p.timeout, None);
    }

    #[test]
    fn defaults_wait_forever() {
        let p = plan(&["q"]).expect("valid");
        assert_eq!(p.mode, EnqueueMode::Wait);
        assert!(p.payloads.is_empty());
        assert_eq!(p.template.delay_ms, 0);
        assert_eq!(p.template.group, "", "the default group");
        let p = plan(&["q", "--timeout", "250ms"]).expect("valid");
        assert_eq!(p.timeout, Some(Duration::from_millis(250)));
    }

    #[test]
    fn bad_header_is_a_one_line_usage_error() {
        let err = plan(&["q", "--header", "oops"]).expect_err("no =");
        assert_eq!(err.exit() as u8, 2);
        assert_eq!(
            err.line(),
            "error: invalid header \"oops\": expected NAME=VALUE"
        );
    }

    #[test]
    fn crlf_lines_lose_the_cr() {
        assert_eq!(strip_cr(b"a\r".to_vec()), b"a");
        assert_eq!(strip_cr(b"a".to_vec()), b"a");
        assert_eq!(strip_cr(Vec::new()), b"");
    }
}
