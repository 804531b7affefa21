//! Schedules end to end with the real broker: an every-second schedule
//! fires about once a second, each tick once (key `NAME@TICK`, headers
//! naming it); a broker killed and restarted fires no tick twice and
//! catches up the missed ones to its limit; a paused schedule fires
//! nothing until resumed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_client::proto as pb;
use sluice_client::proto::sluice_service_client::SluiceServiceClient;
use sluice_tests::{Broker, DEADLINE, eventually, num};

/// Runs `f` with a client of the broker at `url`, on a runtime of its own
/// (the tests themselves are plain threads, as `eventually` is).
fn rpc<T>(
    url: &str,
    f: impl AsyncFnOnce(&mut SluiceServiceClient<tonic::transport::Channel>) -> T,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = SluiceServiceClient::connect(url.to_owned())
            .await
            .expect("connect");
        f(&mut c).await
    })
}

fn every_second(name: &str, queue: &str, catch_up: u32) -> pb::ScheduleSpec {
    pb::ScheduleSpec {
        name: name.into(),
        queue: queue.into(),
        every_ms: 1000,
        catch_up,
        task: Some(pb::ScheduledTask {
            payload: "beat".into(),
            headers: [("from".to_owned(), "test".to_owned())].into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn create(url: &str, spec: pb::ScheduleSpec, paused: bool) -> pb::ScheduleInfo {
    rpc(url, async |c| {
        c.create_schedule(pb::CreateScheduleRequest {
            schedule: Some(spec),
            paused,
        })
        .await
        .expect("created")
        .into_inner()
        .schedule
        .expect("schedule")
    })
}

fn schedule(url: &str, name: &str) -> pb::ScheduleInfo {
    let list = rpc(url, async |c| {
        c.list_schedules(pb::ListSchedulesRequest::default())
            .await
            .expect("listed")
            .into_inner()
    });
    list.schedules
        .into_iter()
        .find(|s| s.spec.as_ref().is_some_and(|s| s.name == name))
        .unwrap_or_else(|| panic!("no schedule {name}"))
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The tick a task names, in ms.
fn tick_of(t: &pb::Task) -> u64 {
    let text = t
        .headers
        .get("x-sluice-tick")
        .expect("x-sluice-tick header");
    ms(humantime::parse_rfc3339(text).expect("an RFC 3339 tick"))
}

/// Takes (and acks) every ready task of `queue`: (task id, tick, its task).
fn take_all(url: &str, queue: &str) -> Vec<(String, u64, pb::Task)> {
    rpc(url, async |c| {
        let got = c
            .get(pb::GetRequest {
                queue: queue.into(),
                max_tasks: 100,
                wait_ms: 0,
            })
            .await
            .expect("get")
            .into_inner();
        let mut out = Vec::new();
        let mut acks = Vec::new();
        for d in got.deliveries {
            let t = d.task.clone().expect("task");
            acks.push(sluice_tests::lease_of(&d));
            out.push((t.id.clone(), tick_of(&t), t));
        }
        if !acks.is_empty() {
            c.ack(pb::AckRequest {
                queue: queue.into(),
                acks: acks
                    .into_iter()
                    .map(|lease| pb::AckItem {
                        lease: Some(lease),
                        ..Default::default()
                    })
                    .collect(),
            })
            .await
            .expect("acked");
        }
        out
    })
}

#[test]
fn an_every_second_schedule_enqueues_one_task_per_tick() {
    let b = Broker::start();
    b.ok(&["queue", "create", "beats"]);
    let created = ms(SystemTime::now());
    let info = create(&b.url(), every_second("beat", "beats", 0), false);
    assert!(info.next_tick_unix_ms > created.saturating_sub(1000));
    assert_eq!(info.next_tick_unix_ms % 1000, 0, "ticks on whole seconds");
    eventually(DEADLINE, "five ticks' tasks", || {
        num(&b.stats("beats"), &["stats", "ready"]) >= 5
    });
    let tasks = take_all(&b.url(), "beats");
    let ticks: Vec<u64> = tasks.iter().map(|(_, t, _)| *t).collect();
    let distinct: BTreeSet<u64> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "each tick once: {ticks:?}");
    let (first, last) = (ticks[0], ticks[ticks.len() - 1]);
    // One a second: whole seconds, in order; on a loaded machine a tick may
    // be found late and missed, but not many.
    assert!(ticks.windows(2).all(|w| w[1] > w[0]), "{ticks:?}");
    assert!(ticks.iter().all(|t| t % 1000 == 0), "{ticks:?}");
    assert!(
        (last - first) / 1000 < ticks.len() as u64 + 2,
        "ticks {ticks:?} leave gaps"
    );
    for (_, tick, t) in &tasks {
        assert_eq!(t.payload.as_ref(), b"beat");
        assert_eq!(t.headers.get("from").map(String::as_str), Some("test"));
        assert_eq!(
            t.headers.get("x-sluice-schedule").map(String::as_str),
            Some("beat")
        );
        let text = &t.headers["x-sluice-tick"];
        assert_eq!(t.key, format!("beat@{text}"));
        // Enqueued on time: within its grace (a second) of its tick.
        assert!(
            t.enqueued_at_unix_ms >= *tick && t.enqueued_at_unix_ms <= tick + 1000,
            "tick {text} enqueued at {}",
            t.enqueued_at_unix_ms
        );
    }
    let info = schedule(&b.url(), "beat");
    assert!(info.fired >= ticks.len() as u64);
    assert!(info.last_tick_unix_ms >= last);
    assert!(info.next_tick_unix_ms > info.last_tick_unix_ms);
    assert_eq!(info.last_error, "");
    assert!(!info.last_task_id.is_empty());
}

#[test]
fn a_killed_broker_fires_no_tick_twice_and_catches_up_to_its_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start_durable(dir.path());
    b.ok(&["queue", "create", "beats", "--durable"]);
    create(&b.url(), every_second("beat", "beats", 2), false);
    // Tasks by id: a task whose ack the kill cut off comes back, under
    // its id, and is not a second firing.
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    eventually(DEADLINE, "three ticks taken", || {
        seen.extend(
            take_all(&b.url(), "beats")
                .into_iter()
                .map(|(id, t, _)| (id, t)),
        );
        seen.len() >= 3
    });
    drop(b); // SIGKILL
    let killed = ms(SystemTime::now());
    // Down for five seconds: about five ticks come due meanwhile. (Not a
    // wait for anything: the outage under test.)
    std::thread::sleep(Duration::from_secs(5));
    let b = Broker::start_durable(dir.path());
    eventually(DEADLINE, "ticks after the restart", || {
        seen.extend(
            take_all(&b.url(), "beats")
                .into_iter()
                .map(|(id, t, _)| (id, t)),
        );
        seen.values().filter(|&&t| t > killed + 5000).count() >= 3
    });
    seen.extend(
        take_all(&b.url(), "beats")
            .into_iter()
            .map(|(id, t, _)| (id, t)),
    );
    let mut ticks: Vec<u64> = seen.values().copied().collect();
    ticks.sort_unstable();
    let distinct: BTreeSet<u64> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick fired twice: {ticks:?}");

    let info = schedule(&b.url(), "beat");
    assert_eq!(
        info.fired,
        ticks.len() as u64,
        "every fired tick counted once (what was taken: {ticks:?})"
    );
    // The outage's ticks: the two latest caught up, the rest missed.
    let before: Vec<u64> = ticks.iter().copied().filter(|&t| t <= killed).collect();
    let after: Vec<u64> = ticks.iter().copied().filter(|&t| t > killed).collect();
    let last_before = *before.last().expect("ticks before the kill");
    let gap: Vec<u64> = (last_before / 1000 + 1..after[0] / 1000)
        .map(|s| s * 1000)
        .collect();
    assert!(info.missed >= 2, "five seconds down, catch-up 2: {info:?}");
    assert_eq!(
        gap.len() as u64,
        info.missed,
        "the ticks neither fired nor caught up are the missed ones: {ticks:?}"
    );
    assert_eq!(
        &after[..3],
        &[after[0], after[0] + 1000, after[0] + 2000],
        "two missed ticks caught up, then the one on time: {ticks:?}"
    );
}

#[test]
fn a_paused_schedule_fires_nothing_until_resumed() {
    let b = Broker::start();
    b.ok(&["queue", "create", "quiet"]);
    b.ok(&["queue", "create", "clock"]);
    let info = create(&b.url(), every_second("held", "quiet", 5), true);
    assert!(info.paused);
    assert_eq!(
        info.next_tick_unix_ms, 0,
        "a paused schedule has no next tick"
    );
    // A running schedule is the clock: three of its ticks pass.
    create(&b.url(), every_second("clock", "clock", 0), false);
    eventually(DEADLINE, "three clock ticks", || {
        num(&b.stats("clock"), &["stats", "ready"]) >= 3
    });
    assert_eq!(num(&b.stats("quiet"), &["stats", "ready"]), 0);
    assert_eq!(schedule(&b.url(), "held").fired, 0);
    let resumed_at = ms(SystemTime::now());
    let info = rpc(&b.url(), async |c| {
        c.resume_schedule(pb::ResumeScheduleRequest {
            name: "held".into(),
        })
        .await
        .expect("resumed")
        .into_inner()
        .schedule
        .expect("schedule")
    });
    assert!(!info.paused);
    assert!(info.next_tick_unix_ms >= resumed_at);
    eventually(DEADLINE, "a tick after the resume", || {
        num(&b.stats("quiet"), &["stats", "ready"]) >= 1
    });
    let ticks: Vec<u64> = take_all(&b.url(), "quiet")
        .iter()
        .map(|(_, t, _)| *t)
        .collect();
    // Ticks while paused are neither fired nor caught up.
    assert!(
        ticks.iter().all(|&t| t + 1000 > resumed_at),
        "resumed at {resumed_at}, fired {ticks:?}"
    );
    assert_eq!(schedule(&b.url(), "held").missed, 0);
}

#[test]
fn bad_schedules_are_refused_with_the_reason() {
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    let refuse = |spec: pb::ScheduleSpec| {
        rpc(&b.url(), async |c| {
            c.create_schedule(pb::CreateScheduleRequest {
                schedule: Some(spec),
                paused: false,
            })
            .await
            .expect_err("refused")
        })
    };
    let cron = |expr: &str, tz: &str| pb::ScheduleSpec {
        name: "s".into(),
        queue: "q".into(),
        cron: expr.into(),
        time_zone: tz.into(),
        ..Default::default()
    };
    for (spec, says) in [
        (cron("61 * * * *", ""), "cron"),
        (cron("0 3 * * *", "Mars/Olympus"), "time zone"),
        (every_second("s", "q", 101), "catch_up"),
        (
            pb::ScheduleSpec {
                every_ms: 10,
                ..every_second("s", "q", 0)
            },
            "interval",
        ),
        (
            pb::ScheduleSpec {
                cron: "* * * * *".into(),
                ..every_second("s", "q", 0)
            },
            "not both",
        ),
        (every_second("bad name", "q", 0), "schedule name"),
        (cron(&"* ".repeat(200), ""), "at most 256 bytes"),
    ] {
        let e = refuse(spec);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains(says),
            "{says:?} not in {:?}",
            e.message()
        );
    }
    let e = refuse(every_second("s", "nowhere", 0));
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = rpc(&b.url(), async |c| {
        c.pause_schedule(pb::PauseScheduleRequest {
            name: "ghost".into(),
        })
        .await
        .expect_err("unknown")
    });
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[test]
fn a_tick_that_finds_its_queue_full_fails_when_the_next_is_due_and_says_why() {
    let b = Broker::start();
    b.ok(&["queue", "create", "tiny", "--capacity", "1"]);
    create(&b.url(), every_second("full", "tiny", 0), false);
    let mut info = schedule(&b.url(), "full");
    eventually(DEADLINE, "a tick failed on the full queue", || {
        info = schedule(&b.url(), "full");
        info.failed >= 1
    });
    assert!(
        info.last_error.contains("queue \"tiny\" full"),
        "{:?}",
        info.last_error
    );
    assert_eq!(info.fired, 1, "only the first tick found room");
    assert_eq!(num(&b.stats("tiny"), &["stats", "ready"]), 1);
    // Room again: the next tick fires, and the error is gone.
    take_all(&b.url(), "tiny");
    eventually(DEADLINE, "a tick fired after the queue drained", || {
        info = schedule(&b.url(), "full");
        info.fired >= 2 && info.last_error.is_empty()
    });
}

#[test]
fn pausing_withdraws_a_tick_waiting_for_space_and_it_never_fires() {
    let b = Broker::start();
    b.ok(&["queue", "create", "tiny", "--capacity", "1"]);
    b.ok(&["queue", "create", "clock"]);
    b.ok(&["enqueue", "tiny", "filler"]);
    // A daily schedule whose one tick is due now would need a clock; an
    // every-10 s one waits for space for up to 10 s, long enough to pause.
    create(
        &b.url(),
        pb::ScheduleSpec {
            every_ms: 10_000,
            ..every_second("held", "tiny", 0)
        },
        false,
    );
    eventually(DEADLINE, "the tick waiting for space", || {
        num(&b.stats("tiny"), &["stats", "waiting_producers"]) == 1
    });
    rpc(&b.url(), async |c| {
        c.pause_schedule(pb::PauseScheduleRequest {
            name: "held".into(),
        })
        .await
        .expect("paused")
    });
    // The waiting tick leaves the line at once...
    eventually(DEADLINE, "the waiting tick withdrawn", || {
        num(&b.stats("tiny"), &["stats", "waiting_producers"]) == 0
    });
    // ...and room made afterwards stores nothing of it.
    assert_eq!(b.ok(&["get", "tiny"]).trim(), "filler");
    create(&b.url(), every_second("clock", "clock", 0), false);
    eventually(DEADLINE, "two clock ticks", || {
        num(&b.stats("clock"), &["stats", "ready"]) >= 2
    });
    assert_eq!(num(&b.stats("tiny"), &["stats", "ready"]), 0);
    let info = schedule(&b.url(), "held");
    assert_eq!((info.fired, info.paused), (0, true), "{info:?}");
}
