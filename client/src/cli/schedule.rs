//! `sluice schedule create|list|delete|pause|resume`: tasks the broker
//! enqueues by itself on every tick of a cron expression or an interval.

use std::ffi::OsString;
use std::time::Duration;

use bytes::Bytes;
use clap::{ArgGroup, Args, Subcommand};
use serde_json::json;
use sluice_client::proto::{ScheduleInfo, ScheduleSpec, ScheduledTask};
use sluice_client::{Client, duration_ms};

use super::exit::Failure;
use super::{human, json, parse, print, print_json};

/// The shortest and longest --every the broker takes (ScheduleSpec.every_ms).
const EVERY_MIN: Duration = Duration::from_secs(1);
const EVERY_MAX: Duration = Duration::from_secs(366 * 86_400);

/// The most missed ticks `--missed catch-up:N` may fire late
/// (ScheduleSpec.catch_up).
const CATCH_UP_MAX: u32 = 100;

/// Schedule administration.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: a task enqueued to --queue on every tick of
    /// --cron or --every.
    ///
    /// Each tick's task has the idempotency key NAME@TICK (the tick's time,
    /// RFC 3339 in UTC) and the headers x-sluice-schedule and x-sluice-tick,
    /// so a tick fires once, across broker restarts too. Succeeds without
    /// change if the schedule exists with the same definition (paused or
    /// running as it was); fails (ALREADY_EXISTS) if it exists with
    /// another: delete it first.
    Create(Box<CreateArgs>),
    /// List schedules with their next and last tick and how their ticks
    /// went.
    List {
        /// Only the schedules of this queue.
        #[arg(long, value_name = "QUEUE")]
        queue: Option<String>,
    },
    /// Delete a schedule: it fires no more (a tick already firing
    /// completes). The tasks it enqueued stay.
    Delete {
        /// Schedule name.
        name: String,
    },
    /// Stop a schedule's ticks until `schedule resume`.
    Pause {
        /// Schedule name.
        name: String,
    },
    /// Start a paused schedule again from its next tick.
    ///
    /// The ticks that came due while it was paused are missed: fired late
    /// up to its --missed catch-up:N, else skipped.
    Resume {
        /// Schedule name.
        name: String,
    },
}

/// Options of `schedule create`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("when").required(true).args(["cron", "every"])))]
pub struct CreateArgs {
    /// Schedule name: 1 to 128 characters from [A-Za-z0-9._-].
    name: String,
    /// The payload of every tick's task (default: empty).
    #[arg(value_name = "PAYLOAD")]
    payload: Option<OsString>,
    /// The queue each tick's task goes to; it must exist.
    #[arg(long, value_name = "QUEUE")]
    queue: String,
    /// Tick at the times a cron expression matches: 5 fields (minute hour
    /// day-of-month month day-of-week), 6 with seconds first, or @yearly,
    /// @monthly, @weekly, @daily, @hourly. Quote it: "0 3 * * *".
    #[arg(long, value_name = "EXPR")]
    cron: Option<String>,
    /// Tick at a fixed interval, 1s to 366 days (30s, 5m, 1h30m), on its
    /// multiples since the Unix epoch: every 30s ticks at :00 and :30.
    #[arg(long, value_name = "DURATION")]
    every: Option<String>,
    /// The IANA time zone the cron expression is read in (Europe/Paris);
    /// default UTC. A local time skipped by daylight saving does not fire
    /// that day, a repeated one fires once.
    // Not `requires = "cron"`: clap takes any member of the group "when"
    // as meeting it (clap-rs/clap#4707), and one of them is always given.
    #[arg(long, value_name = "ZONE", conflicts_with = "every")]
    tz: Option<String>,
    /// Ticks the broker could not fire on time (it was down, or the
    /// schedule paused): skip them, or fire the latest N of them late,
    /// oldest first (catch-up:N, N from 1 to 100). Skipped ones are counted
    /// (MISSED in `schedule list`).
    #[arg(long, value_name = "skip|catch-up:N", default_value = "skip")]
    missed: String,
    /// Header on every tick's task, as NAME=VALUE; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// Priority of every tick's task; PRIORITY queues serve the lowest
    /// first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Fairness group of every tick's task.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// The job every tick's task belongs to; {tick} in it becomes the
    /// tick's time and {schedule} the schedule's name, so report-{tick}
    /// makes one job per tick (follow it with `sluice watch`).
    #[arg(long, value_name = "ID")]
    job: Option<String>,
    /// Create it paused: no tick fires until `schedule resume`.
    #[arg(long)]
    paused: bool,
}

impl CreateArgs {
    /// The schedule to create, with what clap could not check (the
    /// interval, --missed, headers) checked before any network traffic.
    fn spec(&self) -> Result<ScheduleSpec, Failure> {
        let cron = match &self.cron {
            Some(cron) if cron.trim().is_empty() => {
                return Err(Failure::Usage(
                    "--cron needs an expression, e.g. --cron \"0 3 * * *\"".into(),
                ));
            }
            Some(cron) => cron.trim().to_owned(),
            None => String::new(),
        };
        let every_ms = match &self.every {
            Some(text) => every(text).map_err(Failure::Usage)?,
            None => 0,
        };
        Ok(ScheduleSpec {
            name: self.name.clone(),
            queue: self.queue.clone(),
            cron,
            every_ms,
            time_zone: self
                .tz
                .as_deref()
                .map(str::trim)
                .unwrap_or_default()
                .to_owned(),
            catch_up: missed(&self.missed).map_err(Failure::Usage)?,
            task: Some(ScheduledTask {
                // Arguments are bytes on Unix; pass them through unchanged.
                payload: self
                    .payload
                    .clone()
                    .map_or_else(Bytes::new, |p| Bytes::from(p.into_encoded_bytes())),
                headers: parse::headers(&self.headers).map_err(Failure::Usage)?,
                priority: self.priority,
                group: self.group.clone().unwrap_or_default(),
                job_id: self.job.clone().unwrap_or_default(),
            }),
        })
    }
}

/// Parses `--every`: a duration from 1s to 366 days, in whole
/// milliseconds (the proto's `every_ms`).
fn every(text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("invalid --every {text:?}: {why}");
    let d = parse::duration(text).map_err(|e| bad(&e))?;
    if d < EVERY_MIN {
        return Err(bad("the shortest interval is 1s"));
    }
    if d > EVERY_MAX {
        return Err(bad("the longest interval is 366 days"));
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(bad("the interval must be whole milliseconds"));
    }
    Ok(duration_ms(d))
}

/// Parses `--missed`: `skip` is 0, `catch-up:N` is N (1 to 100).
fn missed(text: &str) -> Result<u32, String> {
    let bad = |why: &str| {
        format!(
            "invalid --missed {text:?}: {why} (expected skip or catch-up:N, N from 1 to {CATCH_UP_MAX})"
        )
    };
    let text = text.trim();
    if text.eq_ignore_ascii_case("skip") {
        return Ok(0);
    }
    let Some(n) = text.strip_prefix("catch-up:") else {
        return Err(bad("unknown policy"));
    };
    match n.trim().parse::<u32>() {
        Ok(n @ 1..=CATCH_UP_MAX) => Ok(n),
        Ok(_) => Err(bad("N out of range")),
        Err(_) => Err(bad("N must be a whole number")),
    }
}

impl ScheduleCommand {
    /// Checks what clap could not, before any network traffic.
    pub fn check(&self) -> Result<(), Failure> {
        match self {
            ScheduleCommand::Create(args) => args.spec().map(drop),
            _ => Ok(()),
        }
    }
}

/// Prints a schedule a command answered: `human`, or with `--json` the
/// schedule (the Pause/ResumeScheduleResponse shape).
fn print_schedule(schedule: &ScheduleInfo, human: String, as_json: bool) -> Result<(), Failure> {
    if as_json {
        return print_json(&json!({ "schedule": json::schedule(schedule) }));
    }
    print(&human)
}

/// Runs a schedule command.
pub async fn run(client: &Client, command: ScheduleCommand, as_json: bool) -> Result<(), Failure> {
    match command {
        ScheduleCommand::Create(args) => {
            let (schedule, created) = client.create_schedule(args.spec()?, args.paused).await?;
            if as_json {
                return print_json(&json!({
                    "created": created,
                    "schedule": json::schedule(&schedule),
                }));
            }
            print(&created_line(&args.name, &schedule, created, args.paused))
        }
        ScheduleCommand::List { queue } => {
            let schedules = client.list_schedules(queue.as_deref()).await?;
            if as_json {
                let list: Vec<_> = schedules.iter().map(json::schedule).collect();
                return print_json(&list.into());
            }
            print(&human::schedule_list(&schedules))
        }
        ScheduleCommand::Delete { name } => {
            client.delete_schedule(&name).await?;
            if as_json {
                return print_json(&json!({ "schedule": name, "deleted": true }));
            }
            print(&format!("deleted schedule {name}\n"))
        }
        ScheduleCommand::Pause { name } => {
            let schedule = client.pause_schedule(&name).await?;
            let text = format!(
                "paused schedule {name}: no tick fires until `sluice schedule resume {name}`\n"
            );
            print_schedule(&schedule, text, as_json)
        }
        ScheduleCommand::Resume { name } => {
            let schedule = client.resume_schedule(&name).await?;
            let text = format!(
                "resumed schedule {name}: {}\n",
                human::schedule_next(&schedule)
            );
            print_schedule(&schedule, text, as_json)
        }
    }
}

/// What `schedule create` says: the schedule's next tick when it created
/// it; when it existed, that, and its state if it is not the one asked
/// for (--paused only applies to a schedule this call creates).
fn created_line(name: &str, schedule: &ScheduleInfo, created: bool, paused: bool) -> String {
    if created {
        return format!(
            "created schedule {name}: {}\n",
            human::schedule_next(schedule)
        );
    }
    let mut line = format!("schedule {name} exists with the same definition");
    match (schedule.paused, paused) {
        (true, false) => line.push_str(&format!(
            " (paused: `sluice schedule resume {name}` starts it)"
        )),
        (false, true) => line.push_str(&format!(
            " (running: --paused only applies to a new schedule; \
             `sluice schedule pause {name}` pauses it)"
        )),
        _ => {}
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: CreateArgs,
    }

    fn parse(argv: &[&str]) -> Result<CreateArgs, clap::Error> {
        let argv = std::iter::once("create").chain(argv.iter().copied());
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    fn try_spec(argv: &[&str]) -> Result<ScheduleSpec, Failure> {
        parse(argv).expect("clap accepts").spec()
    }

    fn spec(argv: &[&str]) -> ScheduleSpec {
        try_spec(argv).expect("valid")
    }

    /// A usage error's line: one line, exit 2.
    fn usage_line(f: Failure) -> String {
        assert_eq!(f.exit() as u8, 2, "{f}");
        let line = f.line();
        assert!(!line.contains('\n'));
        line
    }

    #[test]
    fn cron_flags_map_to_the_spec() {
        let s = spec(&[
            "nightly",
            "--queue",
            "reports",
            "--cron",
            "0 3 * * *",
            "--tz",
            "Europe/Paris",
            "--missed",
            "catch-up:3",
            "--header",
            "kind=report",
            "--priority",
            "-2",
            "--group",
            "acme",
            "--job",
            "report-{tick}",
            "{\"full\": true}",
        ]);
        assert_eq!(s.name, "nightly");
        assert_eq!(s.queue, "reports");
        assert_eq!(s.cron, "0 3 * * *");
        assert_eq!(s.every_ms, 0);
        assert_eq!(s.time_zone, "Europe/Paris");
        assert_eq!(s.catch_up, 3);
        let t = s.task.expect("a task");
        assert_eq!(&t.payload[..], b"{\"full\": true}");
        assert_eq!(t.headers["kind"], "report");
        assert_eq!(t.priority, -2);
        assert_eq!(t.group, "acme");
        assert_eq!(t.job_id, "report-{tick}");
    }

    #[test]
    fn every_with_defaults() {
        let args = parse(&["poll", "--queue", "q", "--every", "30s"]).expect("clap accepts");
        assert!(!args.paused);
        let s = args.spec().expect("valid");
        assert_eq!(s.every_ms, 30_000);
        assert_eq!(s.cron, "");
        assert_eq!(s.time_zone, "", "UTC");
        assert_eq!(s.catch_up, 0, "skip by default");
        // No PAYLOAD: an empty task.
        assert_eq!(s.task, Some(ScheduledTask::default()));
        for (text, ms) in [
            ("1s", 1000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("1h 30m", 5_400_000),
            ("1500ms", 1500),
            ("366days", 31_622_400_000),
        ] {
            assert_eq!(spec(&["p", "--queue", "q", "--every", text]).every_ms, ms);
        }
        assert_eq!(
            spec(&[
                "p",
                "--queue",
                "q",
                "--every",
                "1s",
                "--missed",
                "catch-up:100"
            ])
            .catch_up,
            100
        );
        assert!(
            parse(&["p", "--queue", "q", "--every", "1s", "--paused"])
                .expect("clap accepts")
                .paused
        );
    }

    #[test]
    fn bad_values_are_one_line_usage_errors() {
        for (argv, says) in [
            (
                &["p", "--queue", "q", "--every", "500ms"][..],
                "invalid --every \"500ms\": the shortest interval is 1s",
            ),
            (&["p", "--queue", "q", "--every", "0"], "shortest interval"),
            (&["p", "--queue", "q", "--every", "367days"], "366 days"),
            (&["p", "--queue", "q", "--every", "1s 500us"], "whole milli"),
            (&["p", "--queue", "q", "--every", "soon"], "invalid --every"),
            (&["p", "--queue", "q", "--every", "30"], "invalid --every"),
            (
                &[
                    "p",
                    "--queue",
                    "q",
                    "--every",
                    "1s",
                    "--missed",
                    "catch-up:0",
                ],
                "N out of range",
            ),
            (
                &[
                    "p",
                    "--queue",
                    "q",
                    "--every",
                    "1s",
                    "--missed",
                    "catch-up:101",
                ],
                "N out of range",
            ),
            (
                &[
                    "p",
                    "--queue",
                    "q",
                    "--every",
                    "1s",
                    "--missed",
                    "catch-up:x",
                ],
                "whole number",
            ),
            (
                &["p", "--queue", "q", "--every", "1s", "--missed", "catch-up"],
                "expected skip or catch-up:N",
            ),
            (
                &["p", "--queue", "q", "--every", "1s", "--missed", "all"],
                "invalid --missed \"all\"",
            ),
            (
                &["p", "--queue", "q", "--every", "1s", "--header", "oops"],
                "invalid header \"oops\"",
            ),
            (&["p", "--queue", "q", "--cron", " "], "--cron needs"),
        ] {
            let line = usage_line(try_spec(argv).expect_err("refused"));
            assert!(line.starts_with("error: "), "{line}");
            assert!(line.contains(says), "{argv:?}: {line}");
        }
    }

    #[test]
    fn exactly_one_of_cron_and_every_and_tz_only_with_cron() {
        for argv in [
            &["p", "--queue", "q"][..],
            &["p", "--queue", "q", "--cron", "@hourly", "--every", "1h"],
            &["p", "--queue", "q", "--every", "1h", "--tz", "Europe/Paris"],
            &["p", "--cron", "@hourly"],
        ] {
            let err = parse(argv).expect_err("clap refuses");
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
    }

    #[test]
    fn subcommands_parse_through_the_whole_command_line() {
        use crate::cli::{Args, Command};
        let parse = |argv: &[&str]| {
            let argv = ["sluice", "schedule"]
                .into_iter()
                .chain(argv.iter().copied());
            match Args::try_parse_from(argv).expect("clap accepts").command {
                Command::Schedule(s) => s,
                other => panic!("{other:?}"),
            }
        };
        assert!(matches!(parse(&["pause", "s"]), ScheduleCommand::Pause { name } if name == "s"));
        assert!(matches!(parse(&["resume", "s"]), ScheduleCommand::Resume { name } if name == "s"));
        assert!(matches!(parse(&["delete", "s"]), ScheduleCommand::Delete { name } if name == "s"));
        assert!(matches!(
            parse(&["list", "--queue", "q"]),
            ScheduleCommand::List { queue: Some(q) } if q == "q"
        ));
        assert!(matches!(
            parse(&["list"]),
            ScheduleCommand::List { queue: None }
        ));
        // clap takes any text; the check before connecting refuses it.
        let cmd = parse(&["create", "s", "--queue", "q", "--every", "500ms"]);
        assert!(cmd.check().is_err());
        let cmd = parse(&["create", "s", "--queue", "q", "--every", "1s"]);
        assert!(cmd.check().is_ok());
    }

    #[test]
    fn create_says_what_it_did() {
        let info = |paused: bool| ScheduleInfo {
            spec: Some(ScheduleSpec {
                name: "s".into(),
                ..ScheduleSpec::default()
            }),
            paused,
            ..ScheduleInfo::default()
        };
        assert_eq!(
            created_line("s", &info(true), true, true),
            "created schedule s: paused, no tick fires until `sluice schedule resume s`\n"
        );
        assert_eq!(
            created_line("s", &info(false), false, false),
            "schedule s exists with the same definition\n"
        );
        assert_eq!(
            created_line("s", &info(true), false, true),
            "schedule s exists with the same definition\n"
        );
        let line = created_line("s", &info(false), false, true);
        assert!(
            line.starts_with("schedule s exists with the same definition (running: "),
            "{line}"
        );
        let line = created_line("s", &info(true), false, false);
        assert!(line.contains("(paused: `sluice schedule resume s` starts it)"));
    }
}
