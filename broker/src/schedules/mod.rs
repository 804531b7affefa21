//! Schedules: tasks the broker enqueues by itself on the ticks of a cron
//! expression or a fixed interval ([`when`]).
//!
//! The registry holds every schedule's state as the log describes it (a
//! `wal::ScheduleState` each: its definition, paused or not, its last tick
//! and counts) and decides, from a clock reading it is given, which ticks
//! are due: a tick fires on time within its grace (the time to the next
//! tick, at most a minute); older ones were missed — while the broker was
//! down or the cluster had no leader — and are fired late (the latest
//! `catch_up` of them) or only counted. It never reads a clock or writes a
//! log itself: the broker fires the ticks it names and journals each run
//! (`wal::ScheduleTick`), and a cluster's members apply the same records,
//! so every member holds the same schedules.
//!
//! A tick's task carries the key `NAME@TICK`: a tick fired again after a
//! crash between its task's store and its run's record finds the task by
//! its key while it is unfinished.

pub mod when;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;
use sluice_proto::v1 as pb;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::engine::Millis;
use crate::wal::{self, ScheduleRecord, ScheduleState, schedule_record::Kind};
pub use when::When;

/// Most missed ticks a schedule may fire late.
pub const MAX_CATCH_UP: u32 = 100;
/// Missed ticks counted at most in one run (a month of every-second ticks
/// is not walked one by one).
const COUNT_CAP: u64 = 1_000_000;
/// How far a tick's key may be ahead of the clock that stored its task
/// and still count as fired: the members' clocks and the broker's two
/// (the engine's, the schedules' wall clock) differ a little; a key far
/// in the future is not a tick that fired, and must not silence the
/// schedule until then.
const CLOCK_SLACK_MS: u64 = 60_000;
/// What a schedule costs in the memory budget beyond its encoded state.
const SCHEDULE_OVERHEAD: u64 = 512;

/// When a schedule's definition says it fires.
pub fn when_of(spec: &pb::ScheduleSpec) -> Result<When, String> {
    match (spec.cron.is_empty(), spec.every_ms) {
        (false, 0) => When::cron(&spec.cron, Some(spec.time_zone.as_str())),
        (true, 0) => Err("a schedule needs a cron expression or an interval (every_ms)".into()),
        (false, _) => Err("a schedule has a cron expression or an interval, not both".into()),
        (true, ms) if spec.time_zone.is_empty() => When::every(ms),
        (true, _) => Err("a time zone applies to a cron expression, not to an interval".into()),
    }
}

pub use crate::wal::{tick_key, tick_text};

/// A job id template with its placeholders filled.
pub fn job_id(template: &str, name: &str, tick: Millis) -> String {
    template
        .replace("{tick}", &tick_text(tick))
        .replace("{schedule}", name)
}

/// A run of a schedule the broker is to make now.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub name: String,
    pub created_at: Millis,
    pub queue: String,
    pub task: pb::ScheduledTask,
    /// Ticks to fire, oldest first: late ones (catch-up), then the one on
    /// time.
    pub ticks: Vec<Millis>,
    /// Ticks missed and not fired.
    pub missed: u64,
    /// The latest tick this run handles.
    pub last: Millis,
    /// The tick after it: each enqueue waits for space until then at most.
    pub next: Option<Millis>,
    /// Cancelled when the schedule is paused or deleted: the run stops,
    /// and a tick waiting for space withdraws.
    pub cancel: CancellationToken,
}

struct Entry {
    state: ScheduleState,
    when: When,
    /// The run under way, if any: no other starts until it ends.
    run: Option<CancellationToken>,
    bytes: u64,
}

impl Entry {
    fn info(&self) -> &pb::ScheduleInfo {
        // Entries are made only from states with their info (`apply`).
        static EMPTY: std::sync::OnceLock<pb::ScheduleInfo> = std::sync::OnceLock::new();
        self.state
            .info
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
    }

    /// Ticks after this are its business.
    fn from(&self) -> Millis {
        self.info().last_tick_unix_ms.max(self.state.since)
    }

    fn next_tick(&self) -> Option<Millis> {
        match self.info().paused {
            true => None,
            false => self.when.next_after(self.from()),
        }
    }

    fn view(&self) -> pb::ScheduleInfo {
        let mut info = self.info().clone();
        info.next_tick_unix_ms = self.next_tick().unwrap_or(0);
        info
    }
}

/// Every schedule of the broker.
#[derive(Default)]
pub struct Schedules {
    entries: Mutex<BTreeMap<String, Entry>>,
    /// What every schedule together holds, for the memory budget.
    bytes: AtomicU64,
    /// Wakes the broker's runner: a schedule changed, or a run ended.
    pub changed: Notify,
    /// Ticks this broker's runner handled since it started, for metrics.
    pub ran: TickCounts,
}

/// Ticks handled, by outcome.
#[derive(Default)]
pub struct TickCounts {
    pub fired: AtomicU64,
    pub failed: AtomicU64,
    pub missed: AtomicU64,
}

impl Schedules {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any schedule exists, without the lock (every schedule costs
    /// bytes): the enqueue path skips reading keys as ticks without one.
    pub fn any(&self) -> bool {
        self.bytes() > 0
    }

    /// What every schedule together holds, for the memory budget.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// A schedule as the API shows it, with its next tick.
    pub fn get(&self, name: &str) -> Option<pb::ScheduleInfo> {
        self.lock().get(name).map(Entry::view)
    }

    /// Every schedule, by name.
    pub fn list(&self) -> Vec<pb::ScheduleInfo> {
        self.lock().values().map(Entry::view).collect()
    }

    /// Applies a record: a change made here (after the log took it, or, on
    /// a cluster's leader, before it is proposed), one a member follows, or
    /// one a restart replays. `journal` is called with it under the
    /// registry's lock, so that a compaction's snapshot ([`Self::states`])
    /// and the records around it cannot cross.
    pub fn apply(&self, r: ScheduleRecord, journal: impl FnOnce(&ScheduleRecord)) {
        let mut entries = self.lock();
        journal(&r);
        match r.kind {
            Some(Kind::Define(state)) => {
                let Some(spec) = state.info.as_ref().and_then(|i| i.spec.as_ref()) else {
                    tracing::error!("schedule record without a definition; ignored");
                    return;
                };
                let name = spec.name.clone();
                match when_of(spec) {
                    Ok(when) => {
                        let state = *state;
                        let bytes = SCHEDULE_OVERHEAD + state.encoded_len() as u64;
                        self.bytes.fetch_add(bytes, Ordering::Relaxed);
                        let old = entries.insert(
                            name,
                            Entry {
                                state,
                                when,
                                run: None,
                                bytes,
                            },
                        );
                        if let Some(old) = old {
                            self.bytes.fetch_sub(old.bytes, Ordering::Relaxed);
                            if let Some(run) = old.run {
                                run.cancel();
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(schedule = %name, error = %e, "schedule not restored")
                    }
                }
            }
            Some(Kind::Delete(name)) => {
                if let Some(old) = entries.remove(&name) {
                    self.bytes.fetch_sub(old.bytes, Ordering::Relaxed);
                    if let Some(run) = old.run {
                        run.cancel();
                    }
                }
            }
            kind => {
                let name = match &kind {
                    Some(Kind::Paused(p)) => p.name.clone(),
                    Some(Kind::Tick(t)) => t.name.clone(),
                    _ => return,
                };
                if let Some(e) = entries.get_mut(&name) {
                    if let Some(Kind::Paused(p)) = &kind
                        && p.paused
                        && let Some(run) = &e.run
                    {
                        run.cancel();
                    }
                    let mut one = BTreeMap::new();
                    one.insert(name.clone(), std::mem::take(&mut e.state));
                    if let Err(err) = wal::apply_schedule(&mut one, ScheduleRecord { kind }) {
                        tracing::error!(schedule = %name, error = %err, "schedule record not applied");
                    }
                    e.state = one.remove(&name).unwrap_or_default();
                    // Its last task id and error may have grown or shrunk.
                    let bytes = SCHEDULE_OVERHEAD + e.state.encoded_len() as u64;
                    self.bytes.fetch_add(bytes, Ordering::Relaxed);
                    self.bytes.fetch_sub(e.bytes, Ordering::Relaxed);
                    e.bytes = bytes;
                }
            }
        }
        drop(entries);
        self.changed.notify_one();
    }

    /// Replaces every schedule with the ones `states` describe (a restart,
    /// or a cluster member installing a snapshot).
    pub fn replace_with(&self, states: impl IntoIterator<Item = ScheduleState>) {
        {
            let mut entries = self.lock();
            entries.clear();
            self.bytes.store(0, Ordering::Relaxed);
        }
        for st in states {
            self.apply(
                ScheduleRecord {
                    kind: Some(Kind::Define(Box::new(st))),
                },
                |_| {},
            );
        }
    }

    /// Every schedule's whole state (compaction, a cluster's snapshot);
    /// `reserve` runs under the lock, as [`Self::apply`]'s journal does.
    pub fn states<T>(&self, reserve: impl FnOnce() -> T) -> (Vec<ScheduleState>, T) {
        let entries = self.lock();
        let states = entries.values().map(|e| e.state.clone()).collect();
        (states, reserve())
    }

    /// A schedule's definition and whether it is paused.
    pub fn spec(&self, name: &str) -> Option<(pb::ScheduleSpec, bool)> {
        let entries = self.lock();
        let info = entries.get(name)?.info();
        Some((info.spec.clone().unwrap_or_default(), info.paused))
    }

    /// The earliest tick of a running schedule with no run under way.
    pub fn next_due(&self) -> Option<Millis> {
        self.lock()
            .values()
            .filter(|e| e.run.is_none())
            .filter_map(Entry::next_tick)
            .min()
    }

    /// The runs due at `now`, each schedule marked as firing until
    /// [`Self::finished`].
    pub fn due(&self, now: Millis) -> Vec<Run> {
        let mut entries = self.lock();
        let mut runs = Vec::new();
        for (name, e) in entries.iter_mut() {
            if e.run.is_some() || e.info().paused {
                continue;
            }
            if let Some(run) = plan(name, e, now) {
                e.run = Some(run.cancel.clone());
                runs.push(run);
            }
        }
        runs
    }

    /// A task with the key `key` was stored in `queue` at `now`: when the
    /// key is a tick of this queue's schedule (`NAME@TICK`, exactly as the
    /// broker writes it, a tick of its expression, after the schedule's
    /// start and not in the future), the tick fired, whether or not its
    /// run's record made it to the log. Derived wherever the task's store
    /// runs or is replayed (the broker storing it, a cluster member
    /// applying the enqueue, a restart reading the log), never journaled.
    pub fn stored_tick(&self, key: &str, queue: &str, now: Millis) {
        let Some((name, tick)) = wal::scheduled_tick(key) else {
            return;
        };
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(name) else {
            return;
        };
        let on_grid = e.when.next_after(tick.saturating_sub(1)) == Some(tick);
        if e.from() >= tick || tick > now.saturating_add(CLOCK_SLACK_MS) || !on_grid {
            return;
        }
        if let Some(info) = &mut e.state.info
            && info.spec.as_ref().is_some_and(|s| s.queue == queue)
        {
            info.last_tick_unix_ms = tick;
            info.fired += 1;
        }
    }

    /// A run ended (recorded or not): the schedule, if it is still the one
    /// the run was for, may run again.
    pub fn finished(&self, name: &str, created_at: Millis) {
        if let Some(e) = self.lock().get_mut(name)
            && e.info().created_at_unix_ms == created_at
        {
            e.run = None;
        }
        self.changed.notify_one();
    }

    /// How many schedules are (running, paused).
    pub fn by_state(&self) -> (u64, u64) {
        let entries = self.lock();
        let paused = entries.values().filter(|e| e.info().paused).count() as u64;
        (entries.len() as u64 - paused, paused)
    }

    /// How many schedules each queue has (the dashboard, stats).
    pub fn per_queue(&self) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        for e in self.lock().values() {
            if let Some(spec) = &e.info().spec {
                *out.entry(spec.queue.clone()).or_insert(0) += 1;
            }
        }
        out
    }
}

/// What a schedule is to do at `now`: None when no tick is due.
fn plan(name: &str, e: &Entry, now: Millis) -> Option<Run> {
    let info = e.info();
    let spec = info.spec.as_ref()?;
    let catch_up = spec.catch_up.min(MAX_CATCH_UP) as usize;
    let (count, mut last) = e.when.ticks_between(e.from(), now, catch_up + 1, COUNT_CAP);
    let latest = *last.last()?;
    if count == 0 {
        return None;
    }
    let on_time = now.saturating_sub(latest) <= e.when.grace_ms(latest);
    let mut missed = count;
    let mut ticks = Vec::new();
    if on_time {
        last.pop();
        missed -= 1;
    }
    // The latest missed ones, oldest first.
    let late: Vec<Millis> = last
        .into_iter()
        .rev()
        .take(catch_up)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    missed -= late.len() as u64;
    ticks.extend(late);
    if on_time {
        ticks.push(latest);
    }
    Some(Run {
        name: name.to_owned(),
        created_at: info.created_at_unix_ms,
        queue: spec.queue.clone(),
        task: spec.task.clone().unwrap_or_default(),
        ticks,
        missed,
        last: latest,
        next: e.when.next_after(latest.max(now)),
        cancel: CancellationToken::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1000;
    /// 2026-12-01T00:00:00Z
    const T0: u64 = 1_796_083_200_000;

    fn define(name: &str, every_ms: u64, catch_up: u32, at: Millis) -> ScheduleRecord {
        ScheduleRecord {
            kind: Some(Kind::Define(Box::new(ScheduleState {
                info: Some(pb::ScheduleInfo {
                    spec: Some(pb::ScheduleSpec {
                        name: name.into(),
                        queue: "q".into(),
                        every_ms,
                        catch_up,
                        task: Some(pb::ScheduledTask {
                            payload: "hi".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    created_at_unix_ms: at,
                    ..Default::default()
                }),
                since: at,
            }))),
        }
    }

    fn ran(s: &Schedules, run: &Run, fired: u64, now: Millis) {
        s.apply(
            ScheduleRecord {
                kind: Some(Kind::Tick(wal::ScheduleTick {
                    name: run.name.clone(),
                    created_at: run.created_at,
                    tick: run.last,
                    run_at: now,
                    task_id: "t".into(),
                    fired,
                    missed: run.missed,
                    ..Default::default()
                })),
            },
            |_| {},
        );
        s.finished(&run.name, run.created_at);
    }

    #[test]
    fn a_tick_fires_on_time_once_and_the_next_is_due_after_it() {
        let s = Schedules::default();
        s.apply(define("a", 10 * SEC, 0, T0 + 1), |_| {});
        assert_eq!(s.next_due(), Some(T0 + 10 * SEC));
        assert!(s.due(T0 + 9 * SEC).is_empty());
        let runs = s.due(T0 + 10 * SEC + 300);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].ticks, vec![T0 + 10 * SEC]);
        assert_eq!(runs[0].missed, 0);
        assert_eq!(runs[0].next, Some(T0 + 20 * SEC));
        // Under way: not due again, not counted as next.
        assert!(s.due(T0 + 10 * SEC + 400).is_empty());
        assert_eq!(s.next_due(), None);
        ran(&s, &runs[0], 1, T0 + 10 * SEC + 500);
        assert!(s.due(T0 + 11 * SEC).is_empty());
        assert_eq!(s.next_due(), Some(T0 + 20 * SEC));
        let info = s.get("a").expect("there");
        assert_eq!(info.last_tick_unix_ms, T0 + 10 * SEC);
        assert_eq!(info.fired, 1);
        assert_eq!(info.next_tick_unix_ms, T0 + 20 * SEC);
    }

    #[test]
    fn ticks_found_late_are_missed_and_catch_up_fires_the_latest_of_them() {
        // Every second; the broker comes back 10.2 s after tick 0.
        let skip = Schedules::default();
        skip.apply(define("s", SEC, 0, T0 - 1), |_| {});
        let runs = skip.due(T0 + 10 * SEC + 200);
        assert_eq!(runs[0].ticks, vec![T0 + 10 * SEC], "only the tick on time");
        assert_eq!(runs[0].missed, 10);

        let catch = Schedules::default();
        catch.apply(define("c", SEC, 3, T0 - 1), |_| {});
        let runs = catch.due(T0 + 10 * SEC + 200);
        assert_eq!(
            runs[0].ticks,
            vec![T0 + 7 * SEC, T0 + 8 * SEC, T0 + 9 * SEC, T0 + 10 * SEC]
        );
        assert_eq!(runs[0].missed, 7);
        assert_eq!(runs[0].last, T0 + 10 * SEC);
    }

    #[test]
    fn a_tick_later_than_its_grace_is_missed_even_alone() {
        // Hourly: the grace is a minute.
        let s = Schedules::default();
        s.apply(define("h", 3600 * SEC, 0, T0 - 1), |_| {});
        let runs = s.due(T0 + 61 * SEC);
        assert!(runs[0].ticks.is_empty());
        assert_eq!(runs[0].missed, 1);
        ran(&s, &runs[0], 0, T0 + 61 * SEC);
        assert_eq!(s.get("h").expect("there").missed, 1);
        assert_eq!(s.next_due(), Some(T0 + 3600 * SEC));
        // Within the minute it fires.
        let s = Schedules::default();
        s.apply(define("h", 3600 * SEC, 0, T0 - 1), |_| {});
        assert_eq!(s.due(T0 + 59 * SEC)[0].ticks, vec![T0]);
    }

    #[test]
    fn a_paused_schedule_is_never_due_and_resumes_from_its_next_tick() {
        let s = Schedules::default();
        s.apply(define("p", SEC, 5, T0 - 1), |_| {});
        let pause = |paused, at| ScheduleRecord {
            kind: Some(Kind::Paused(wal::SchedulePaused {
                name: "p".into(),
                paused,
                at,
            })),
        };
        s.apply(pause(true, T0), |_| {});
        assert!(s.due(T0 + 100 * SEC).is_empty());
        assert_eq!(s.next_due(), None);
        assert_eq!(s.get("p").expect("there").next_tick_unix_ms, 0);
        s.apply(pause(false, T0 + 100 * SEC + 500), |_| {});
        // Ticks while paused are neither fired nor missed.
        assert!(s.due(T0 + 100 * SEC + 600).is_empty());
        let runs = s.due(T0 + 101 * SEC);
        assert_eq!(runs[0].ticks, vec![T0 + 101 * SEC]);
        assert_eq!(runs[0].missed, 0);
    }

    #[test]
    fn a_run_of_a_deleted_and_remade_schedule_is_not_the_new_ones() {
        let s = Schedules::default();
        s.apply(define("r", SEC, 0, T0 - 1), |_| {});
        let runs = s.due(T0 + 200);
        s.apply(
            ScheduleRecord {
                kind: Some(Kind::Delete("r".into())),
            },
            |_| {},
        );
        assert_eq!(s.bytes(), 0);
        s.apply(define("r", SEC, 0, T0 + 500), |_| {});
        ran(&s, &runs[0], 1, T0 + 600);
        let info = s.get("r").expect("there");
        assert_eq!((info.fired, info.last_tick_unix_ms), (0, 0));
    }

    #[test]
    fn a_tick_learnt_from_its_task_then_recorded_counts_once() {
        // A cluster member applies the tick's enqueue, then the leader's
        // record of it; or the record never comes (a failover between).
        let s = Schedules::default();
        s.apply(define("a", SEC, 0, T0 - 1), |_| {});
        let runs = s.due(T0 + 100);
        s.stored_tick(&tick_key("a", T0), "q", T0 + 100);
        // Another queue's task with the key is not this schedule's.
        s.stored_tick(&tick_key("a", T0 + SEC), "elsewhere", T0 + 1100);
        let info = s.get("a").expect("there");
        assert_eq!((info.last_tick_unix_ms, info.fired), (T0, 1));
        ran(&s, &runs[0], 1, T0 + 200);
        let info = s.get("a").expect("there");
        assert_eq!((info.last_tick_unix_ms, info.fired), (T0, 1));
        assert_eq!(info.last_task_id, "t");
        // A member that leads next does not find the tick due again.
        s.finished("a", T0 - 1);
        assert!(s.due(T0 + 500).is_empty());
    }

    #[test]
    fn states_survive_a_snapshot() {
        let s = Schedules::default();
        s.apply(define("a", SEC, 0, T0 - 1), |_| {});
        let runs = s.due(T0 + 100);
        ran(&s, &runs[0], 1, T0 + 200);
        let (states, ()) = s.states(|| ());
        let t = Schedules::default();
        t.replace_with(states);
        assert_eq!(t.get("a"), s.get("a"));
        assert_eq!(t.bytes(), s.bytes());
    }

    #[test]
    fn keys_and_job_ids_name_the_tick() {
        assert_eq!(tick_key("nightly", T0), "nightly@2026-12-01T00:00:00Z");
        assert_eq!(tick_text(T0 + 1500), "2026-12-01T00:00:01.500Z");
        assert_eq!(
            job_id("{schedule}-{tick}", "r", T0),
            "r-2026-12-01T00:00:00Z"
        );
    }
}
