//! The ready tasks of a queue, by fairness group, and the turns the
//! groups take.
//!
//! Every task belongs to a group: the one its producer named, or the
//! default group (slot 0). Each group keeps its ready tasks in a
//! [`ReadySet`] in the queue's order; `turns` lines up the groups that may
//! be served now — with ready tasks, under the per-group in-flight cap,
//! not throttled — by (head priority, turn): the best priority first, and
//! among equals the group that waited longest. A served group goes to the
//! back of the line, so a group with a million ready tasks and one with a
//! single task alternate. A queue whose tasks are all in the default group
//! has one group in line and keeps its turn: the hot path pays a peek and
//! a comparison, no reordering.
//!
//! A named group exists while it has unfinished tasks (or a throttle):
//! names come from clients, so nothing of a group outlives its last task.

use std::collections::{BTreeSet, HashMap};

use rustc_hash::FxHashMap;

use crate::ready::{Entry, ReadySet, key};
use crate::{Millis, Order, TaskId};

/// A group's index in the table; [`DEFAULT`] is the group of tasks
/// without one.
type Slot = u32;
const DEFAULT: Slot = 0;

/// What a named group costs beside its name (its table entry, map slot
/// and set), for the memory budget.
pub const GROUP_OVERHEAD: u64 = 160;
/// What a task in a named group costs beside itself: its entry in the
/// task -> group map with the table's slack (1M tasks in 10,000 groups
/// measured about 90 bytes a task above ungrouped ones, some of it the
/// groups' own sets' slack).
pub const GROUPED_TASK_OVERHEAD: u64 = 40;

#[derive(Debug)]
struct Group {
    name: Box<str>,
    set: ReadySet,
    /// Its tasks leased now.
    in_flight: u64,
    /// Its unfinished tasks: ready, delayed and leased.
    tasks: u64,
    /// Held by a nack's throttle until then; 0 when not held.
    throttled_until: Millis,
    /// Its place in `turns` while it may be served: (head priority, turn).
    turn: Option<(i64, u64)>,
}

impl Group {
    fn new(name: Box<str>, order: Order) -> Self {
        Group {
            name,
            set: ReadySet::new(order),
            in_flight: 0,
            tasks: 0,
            throttled_until: 0,
            turn: None,
        }
    }
}

/// One group's numbers, for stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStats {
    /// "" for the default group.
    pub name: String,
    pub ready: u64,
    pub leased: u64,
    pub delayed: u64,
    /// 0 when not throttled.
    pub throttled_until: Millis,
    /// At the per-group in-flight cap.
    pub at_cap: bool,
}

/// A group as an image holds it (see `queue::image`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageGroup {
    /// "" for the default group.
    pub name: Box<str>,
    pub throttled_until: Millis,
    /// Its turn, while in line.
    pub turn: Option<u64>,
}

/// The groups as an image holds them: each group (the default first, then
/// by name), each grouped task's group, and the next turn.
pub type GroupsImage = (Vec<ImageGroup>, Vec<(TaskId, Box<str>)>, u64);

/// The ready tasks of one queue; see the module docs.
#[derive(Debug)]
pub struct Ready {
    order: Order,
    /// Slot 0 is the default group; freed slots are reused.
    groups: Vec<Group>,
    free: Vec<Slot>,
    /// Named groups by name. Names are chosen by clients: a keyed hash, so
    /// that nobody can pick names that collide.
    names: HashMap<Box<str>, Slot>,
    /// The group of each unfinished task in a named group.
    task_group: FxHashMap<TaskId, Slot>,
    /// Groups that may be served now, in the order they will be.
    turns: BTreeSet<(i64, u64, Slot)>,
    next_turn: u64,
    len: usize,
    /// Leased tasks a group may have; 0 = no cap.
    cap: u64,
    /// Group throttles by their end. Entries of a throttle that was
    /// extended stay behind; the group's own `throttled_until` decides.
    throttles: BTreeSet<(Millis, Slot)>,
    name_bytes: u64,
}

impl Ready {
    pub fn new(order: Order, cap: u64) -> Self {
        Ready {
            order,
            groups: vec![Group::new("".into(), order)],
            free: Vec::new(),
            names: HashMap::new(),
            task_group: FxHashMap::default(),
            turns: BTreeSet::new(),
            next_turn: 0,
            len: 0,
            cap,
            throttles: BTreeSet::new(),
            name_bytes: 0,
        }
    }

    fn slot_of(&self, id: TaskId) -> Slot {
        if self.task_group.is_empty() {
            return DEFAULT;
        }
        self.task_group.get(&id).copied().unwrap_or(DEFAULT)
    }

    fn slot_named(&mut self, name: &str) -> Slot {
        if let Some(s) = self.names.get(name) {
            return *s;
        }
        let group = Group::new(name.into(), self.order);
        let s = match self.free.pop() {
            Some(s) => {
                self.groups[s as usize] = group;
                s
            }
            None => {
                self.groups.push(group);
                (self.groups.len() - 1) as Slot
            }
        };
        self.names.insert(name.into(), s);
        self.name_bytes += name.len() as u64;
        s
    }

    /// A new unfinished task joins `group` (None or "": the default one).
    /// Every task is assigned once, before it is first pushed.
    pub fn assign(&mut self, id: TaskId, group: Option<&str>) {
        let s = match group {
            None | Some("") => DEFAULT,
            Some(name) => self.slot_named(name),
        };
        self.groups[s as usize].tasks += 1;
        if s != DEFAULT {
            self.task_group.insert(id, s);
        }
    }

    /// The task is finished (it is no longer ready, delayed nor leased):
    /// it leaves its group, and a group left without tasks is forgotten.
    pub fn forget(&mut self, id: TaskId) {
        let s = match self.task_group.is_empty() {
            true => DEFAULT,
            false => self.task_group.remove(&id).unwrap_or(DEFAULT),
        };
        let g = &mut self.groups[s as usize];
        g.tasks = g.tasks.saturating_sub(1);
        if s != DEFAULT {
            self.free_if_idle(s);
        }
    }

    fn free_if_idle(&mut self, s: Slot) {
        if s == DEFAULT {
            return;
        }
        let g = &self.groups[s as usize];
        if g.tasks > 0 || g.throttled_until > 0 || g.in_flight > 0 || !g.set.is_empty() {
            return;
        }
        if self.names.get(&g.name) != Some(&s) {
            // Freed already.
            return;
        }
        if let Some((p, t)) = g.turn {
            self.turns.remove(&(p, t, s));
        }
        let g = std::mem::replace(
            &mut self.groups[s as usize],
            Group::new("".into(), self.order),
        );
        self.names.remove(&g.name);
        self.name_bytes -= g.name.len() as u64;
        self.free.push(s);
    }

    /// Puts group `s` in line or takes it out, as its state says. A group
    /// already in line keeps its turn.
    fn schedule(&mut self, s: Slot) {
        let g = &mut self.groups[s as usize];
        let may = g.throttled_until == 0 && (self.cap == 0 || g.in_flight < self.cap);
        let head = match (may, self.order) {
            (false, _) => None,
            (true, Order::Priority) => g.set.peek().map(|e| i64::from(e.priority)),
            // Every head has the same rank: only whether there is one.
            (true, Order::Fifo | Order::Lifo) => (!g.set.is_empty()).then_some(0),
        };
        match (head, g.turn) {
            (Some(p), Some((was, _))) if p == was => {}
            (Some(p), old) => {
                let turn = match old {
                    Some((was, t)) => {
                        self.turns.remove(&(was, t, s));
                        t
                    }
                    None => {
                        self.next_turn += 1;
                        self.next_turn - 1
                    }
                };
                g.turn = Some((p, turn));
                self.turns.insert((p, turn, s));
            }
            (None, Some((was, t))) => {
                self.turns.remove(&(was, t, s));
                g.turn = None;
            }
            (None, None) => {}
        }
    }

    /// Schedules several groups, in name order: groups that get in line
    /// together take their turns in an order every replica agrees on,
    /// whatever slots they have here.
    fn schedule_each(&mut self, mut slots: Vec<Slot>) {
        slots.sort_by(|a, b| {
            self.groups[*a as usize]
                .name
                .cmp(&self.groups[*b as usize].name)
        });
        slots.dedup();
        for s in slots {
            self.schedule(s);
        }
    }

    /// Every live group: the default one and the named ones.
    fn live_slots(&self) -> Vec<Slot> {
        std::iter::once(DEFAULT)
            .chain(self.names.values().copied())
            .collect()
    }

    /// A task that has just arrived.
    pub fn push_new(&mut self, e: Entry) {
        let s = self.slot_of(e.id);
        self.groups[s as usize].set.push_new(e);
        self.pushed(s);
    }

    /// A task coming back (retry, lost lease, delay over), to its place.
    pub fn push_returned(&mut self, e: Entry) {
        let s = self.slot_of(e.id);
        self.groups[s as usize].set.push_returned(e);
        self.pushed(s);
    }

    fn pushed(&mut self, s: Slot) {
        self.len += 1;
        // In FIFO and LIFO order a task joining a group in line changes
        // nothing about its place (the hot path: one push, no lookup).
        if self.order == Order::Priority || self.groups[s as usize].turn.is_none() {
            self.schedule(s);
        }
    }

    /// The next task to lease: the head of the group whose turn it is,
    /// which then goes to the back of the line. None when no group may be
    /// served now.
    pub fn pop(&mut self) -> Option<Entry> {
        if self.names.is_empty() {
            // Only the default group: no line to consult.
            let g = &mut self.groups[DEFAULT as usize];
            g.turn?;
            let e = g.set.pop()?;
            g.in_flight += 1;
            self.len -= 1;
            if self.order == Order::Priority || self.cap > 0 || g.set.is_empty() {
                self.schedule(DEFAULT);
            }
            return Some(e);
        }
        let &(p, t, s) = self.turns.first()?;
        let Some(e) = self.groups[s as usize].set.pop() else {
            // Not reached: a group in line has ready tasks.
            self.turns.remove(&(p, t, s));
            self.groups[s as usize].turn = None;
            return None;
        };
        self.len -= 1;
        let g = &mut self.groups[s as usize];
        g.in_flight += 1;
        if self.turns.len() > 1 {
            self.turns.remove(&(p, t, s));
            g.turn = None;
        } else if self.order != Order::Priority && self.cap == 0 && !g.set.is_empty() {
            // Alone in line, and still in line: its turn stays.
            return Some(e);
        }
        self.schedule(s);
        Some(e)
    }

    /// A lease of task `id` ended (settled, expired, undone, its consumer
    /// gone): its group has one more place under the cap.
    pub fn lease_ended(&mut self, id: TaskId) {
        let s = self.slot_of(id);
        let g = &mut self.groups[s as usize];
        g.in_flight = g.in_flight.saturating_sub(1);
        if self.cap > 0 {
            self.schedule(s);
        }
    }

    /// Holds the group of task `id` until `until` (a later throttle
    /// extends it, an earlier one changes nothing). Returns whether it
    /// changed.
    pub fn throttle(&mut self, id: TaskId, until: Millis) -> bool {
        let s = self.slot_of(id);
        let g = &mut self.groups[s as usize];
        if until <= g.throttled_until {
            return false;
        }
        g.throttled_until = until;
        self.throttles.insert((until, s));
        self.schedule(s);
        true
    }

    /// Ends the group throttles that are over by `now`.
    pub fn release(&mut self, now: Millis) {
        let mut over = Vec::new();
        while let Some(&(until, s)) = self.throttles.first() {
            if until > now {
                break;
            }
            self.throttles.pop_first();
            if self.groups[s as usize].throttled_until == until {
                self.groups[s as usize].throttled_until = 0;
                over.push(s);
            }
        }
        self.unthrottled(over);
    }

    /// Groups whose throttle ended get in line, or are forgotten.
    fn unthrottled(&mut self, slots: Vec<Slot>) {
        if slots.is_empty() {
            return;
        }
        self.schedule_each(slots.clone());
        for s in slots {
            self.free_if_idle(s);
        }
    }

    /// Holds group `name` ("" the default group) until `until`, as a
    /// recovered throttle: the group exists for it even with no task yet.
    pub fn throttle_named(&mut self, name: &str, until: Millis) {
        let s = match name {
            "" => DEFAULT,
            name => self.slot_named(name),
        };
        let g = &mut self.groups[s as usize];
        if until > g.throttled_until {
            g.throttled_until = until;
            self.throttles.insert((until, s));
            self.schedule(s);
        }
    }

    /// The groups held by a throttle now: (name, until), by name.
    pub fn throttled(&self) -> Vec<(Box<str>, Millis)> {
        let mut out: Vec<(Box<str>, Millis)> = self
            .live()
            .filter(|(_, g)| g.throttled_until > 0)
            .map(|(_, g)| (g.name.clone(), g.throttled_until))
            .collect();
        out.sort();
        out
    }

    /// When the next group throttle ends.
    pub fn next_release(&self) -> Option<Millis> {
        self.throttles.first().map(|(t, _)| *t)
    }

    /// Ends every group throttle now (the queue was resumed).
    pub fn lift_throttles(&mut self) {
        let mut over = Vec::new();
        for (until, s) in std::mem::take(&mut self.throttles) {
            if self.groups[s as usize].throttled_until == until {
                self.groups[s as usize].throttled_until = 0;
                over.push(s);
            }
        }
        self.unthrottled(over);
    }

    /// A new per-group cap (0 = none), in force at once.
    pub fn set_cap(&mut self, cap: u64) {
        if cap == self.cap {
            return;
        }
        self.cap = cap;
        self.schedule_each(self.live_slots());
    }

    /// Ready tasks, in every group.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether some group may be served now.
    pub fn deliverable(&self) -> bool {
        !self.turns.is_empty()
    }

    /// Every ready task, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.groups.iter().flat_map(|g| g.set.iter())
    }

    /// Every ready task in the queue's order, whatever its group: a
    /// layout-free view for digests.
    pub fn in_serve_order(&self) -> Vec<&Entry> {
        let mut all: Vec<&Entry> = self.iter().collect();
        all.sort_by_key(|e| key(self.order, e));
        all
    }

    /// Keeps only the ready tasks `keep` says yes to. The caller forgets
    /// the others.
    pub fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        let mut len = 0;
        for g in &mut self.groups {
            g.set.retain(&mut keep);
            len += g.set.len();
        }
        self.len = len;
        self.schedule_each(self.live_slots());
    }

    /// Removes every ready task (the caller forgot them first); returns
    /// how many.
    pub fn clear(&mut self) -> u64 {
        let n = self.len as u64;
        for g in &mut self.groups {
            g.set.clear();
            g.turn = None;
        }
        self.turns.clear();
        self.len = 0;
        for s in 1..self.groups.len() {
            self.free_if_idle(s as Slot);
        }
        n
    }

    /// The named group of task `id`, if it has one.
    pub fn group_of(&self, id: TaskId) -> Option<&str> {
        match self.slot_of(id) {
            DEFAULT => None,
            s => Some(&self.groups[s as usize].name),
        }
    }

    /// Bytes kept for groups, for the memory budget: names, their table
    /// entries, and each grouped task's place in the map.
    pub fn bytes(&self) -> u64 {
        self.name_bytes
            + self.names.len() as u64 * GROUP_OVERHEAD
            + self.task_group.len() as u64 * GROUPED_TASK_OVERHEAD
    }

    fn live(&self) -> impl Iterator<Item = (Slot, &Group)> + '_ {
        let named = self.names.values().map(|s| (*s, &self.groups[*s as usize]));
        std::iter::once((DEFAULT, &self.groups[0])).chain(named)
    }

    /// Groups with unfinished tasks, and those of them that have ready
    /// tasks but may not be served (at their cap, or throttled).
    pub fn counts(&self) -> (u64, u64) {
        let mut groups = 0;
        let mut held = 0;
        for (_, g) in self.live() {
            if g.tasks > 0 {
                groups += 1;
            }
            if !g.set.is_empty() && g.turn.is_none() {
                held += 1;
            }
        }
        (groups, held)
    }

    /// The groups with ready tasks, most ready first (then by name), at
    /// most `limit`.
    pub fn group_stats(&self, limit: usize) -> Vec<GroupStats> {
        let mut out: Vec<GroupStats> = self
            .live()
            .filter(|(_, g)| !g.set.is_empty())
            .map(|(_, g)| GroupStats {
                name: g.name.to_string(),
                ready: g.set.len() as u64,
                leased: g.in_flight,
                delayed: g.tasks.saturating_sub(g.set.len() as u64 + g.in_flight),
                throttled_until: g.throttled_until,
                at_cap: self.cap > 0 && g.in_flight >= self.cap,
            })
            .collect();
        out.sort_by(|a, b| b.ready.cmp(&a.ready).then_with(|| a.name.cmp(&b.name)));
        out.truncate(limit);
        out
    }

    /// The groups as an image keeps them (the default group first, then
    /// by name), with each grouped task's group, and the next turn.
    pub fn image(&self) -> GroupsImage {
        let mut groups: Vec<ImageGroup> = self
            .live()
            .map(|(_, g)| ImageGroup {
                name: g.name.clone(),
                throttled_until: g.throttled_until,
                turn: g.turn.map(|(_, t)| t),
            })
            .collect();
        groups[1..].sort_by(|a, b| a.name.cmp(&b.name));
        let mut tasks: Vec<(TaskId, Box<str>)> = self
            .task_group
            .iter()
            .map(|(id, s)| (*id, self.groups[*s as usize].name.clone()))
            .collect();
        tasks.sort_unstable();
        (groups, tasks, self.next_turn)
    }

    /// The ready set an image describes: groups with their throttles and
    /// turns, each task's group, the ready tasks, and (for the caps) the
    /// leased tasks' ids. `delayed` are the other unfinished tasks.
    pub fn from_image(
        order: Order,
        cap: u64,
        image: GroupsImage,
        ready: Vec<Entry>,
        leased: &[TaskId],
        delayed: &[TaskId],
    ) -> Self {
        let (groups, tasks, next_turn) = image;
        let mut r = Ready::new(order, cap);
        for (id, name) in &tasks {
            let s = r.slot_named(name);
            r.task_group.insert(*id, s);
        }
        for g in &groups {
            let s = match &*g.name {
                "" => DEFAULT,
                name => r.slot_named(name),
            };
            if g.throttled_until > 0 {
                r.groups[s as usize].throttled_until = g.throttled_until;
                r.throttles.insert((g.throttled_until, s));
            }
        }
        for id in leased.iter().chain(delayed) {
            let s = r.slot_of(*id);
            r.groups[s as usize].tasks += 1;
        }
        for id in leased {
            let s = r.slot_of(*id);
            r.groups[s as usize].in_flight += 1;
        }
        for e in ready {
            let s = r.slot_of(e.id);
            let g = &mut r.groups[s as usize];
            g.tasks += 1;
            g.set.push_new(e);
            r.len += 1;
        }
        // Their turns as they were, then any group the image left out of
        // line that may be served (none, from a consistent image).
        for g in &groups {
            let s = match &*g.name {
                "" => Some(DEFAULT),
                name => r.names.get(name).copied(),
            };
            if let (Some(s), Some(turn)) = (s, g.turn) {
                let group = &mut r.groups[s as usize];
                let p = match (order, group.set.peek()) {
                    (Order::Priority, Some(e)) => i64::from(e.priority),
                    _ => 0,
                };
                group.turn = Some((p, turn));
                r.turns.insert((p, turn, s));
            }
        }
        r.next_turn = next_turn;
        r.schedule_each(r.live_slots());
        r
    }

    /// A digest of the groups (names, numbers, throttles, turns) and of
    /// each grouped task's group, independent of slots and map layout.
    pub fn digest(&self) -> u64 {
        use std::hash::{DefaultHasher, Hasher};
        let mut h = DefaultHasher::new();
        let (groups, tasks, next_turn) = self.image();
        for g in &groups {
            h.write(g.name.as_bytes());
            h.write_u8(0xff);
            h.write_u64(g.throttled_until);
            h.write_u64(g.turn.map_or(u64::MAX, |t| t));
            let s = match &*g.name {
                "" => Some(DEFAULT),
                name => self.names.get(name).copied(),
            };
            if let Some(s) = s {
                let g = &self.groups[s as usize];
                h.write_u64(g.tasks);
                h.write_u64(g.in_flight);
                h.write_u64(g.set.len() as u64);
            }
        }
        for (id, name) in &tasks {
            h.write_u64(id.0);
            h.write(name.as_bytes());
            h.write_u8(0xff);
        }
        h.write_u64(next_turn);
        h.write_u64(self.cap);
        h.write_u64(self.len as u64);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: u64, priority: i32) -> Entry {
        crate::ready::test_entry(id, id, priority)
    }

    fn add(r: &mut Ready, id: u64, group: &str, priority: i32) {
        r.assign(TaskId(id), Some(group));
        r.push_new(e(id, priority));
    }

    fn drain(r: &mut Ready) -> Vec<u64> {
        std::iter::from_fn(|| r.pop()).map(|e| e.id.0).collect()
    }

    #[test]
    fn a_small_group_is_not_stuck_behind_a_big_one() {
        let mut r = Ready::new(Order::Fifo, 0);
        for id in 1..=1000 {
            add(&mut r, id, "big", 0);
        }
        add(&mut r, 5000, "small", 0);
        let first: Vec<u64> = (0..2).filter_map(|_| r.pop()).map(|e| e.id.0).collect();
        assert_eq!(first, [1, 5000]);
    }

    #[test]
    fn groups_alternate_within_priority_order() {
        let mut r = Ready::new(Order::Priority, 0);
        add(&mut r, 1, "a", 5);
        add(&mut r, 2, "a", 1);
        add(&mut r, 3, "b", 1);
        add(&mut r, 4, "b", 5);
        add(&mut r, 5, "c", 9);
        // Priority 1 from a and b in turn, then 5 from each, then 9.
        assert_eq!(drain(&mut r), [2, 3, 1, 4, 5]);
    }

    #[test]
    fn a_capped_group_waits_for_a_lease_to_end() {
        let mut r = Ready::new(Order::Fifo, 1);
        add(&mut r, 1, "a", 0);
        add(&mut r, 2, "a", 0);
        add(&mut r, 3, "b", 0);
        assert_eq!(drain(&mut r), [1, 3]);
        assert!(!r.deliverable());
        assert_eq!(r.len(), 1);
        r.lease_ended(TaskId(1));
        assert_eq!(drain(&mut r), [2]);
    }

    #[test]
    fn a_throttled_group_is_skipped_until_released() {
        let mut r = Ready::new(Order::Fifo, 0);
        add(&mut r, 1, "a", 0);
        add(&mut r, 2, "b", 0);
        assert!(r.throttle(TaskId(1), 100));
        assert_eq!(drain(&mut r), [2]);
        assert_eq!(r.next_release(), Some(100));
        r.release(99);
        assert!(!r.deliverable());
        r.release(100);
        assert_eq!(drain(&mut r), [1]);
    }

    #[test]
    fn a_group_is_forgotten_with_its_last_task() {
        let mut r = Ready::new(Order::Fifo, 0);
        add(&mut r, 1, "tenant-with-a-long-name", 0);
        assert!(r.bytes() > 0);
        let t = r.pop().map(|e| e.id);
        assert_eq!(t, Some(TaskId(1)));
        r.lease_ended(TaskId(1));
        r.forget(TaskId(1));
        assert_eq!(r.bytes(), 0);
        assert_eq!(r.counts(), (0, 0));
        // Its slot is reused by the next group.
        add(&mut r, 2, "other", 0);
        assert_eq!(r.groups.len(), 2);
        assert_eq!(r.group_of(TaskId(2)), Some("other"));
    }
}
