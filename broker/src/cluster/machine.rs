//! openraft's state machine over a [`Machine`]: applies committed entries
//! in order, and keeps the last snapshot on disk.
//!
//! The machine itself lives in memory; what survives a restart is the
//! snapshot file plus the Raft log after it, replayed by Raft once it
//! knows what is committed. So a snapshot is written and synced (file,
//! then directory) before Raft is told it exists, and Raft purges log
//! entries only behind a snapshot it was told of.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, Bytes};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use prost::Message;
use sluice_proto::cluster as pb;

use super::convert::{snapshot_meta_from_pb, snapshot_meta_to_pb};
use super::stats::ClusterStats;
use super::{Applied, Machine, TypeConfig};

const SNAPSHOT_FILE: &str = "snapshot";

/// What Raft needs to know of what was applied.
#[derive(Default)]
struct Applying {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    /// The last snapshot: its meta and bytes (as on disk).
    current: Option<(SnapshotMeta<u64, BasicNode>, Bytes)>,
    built: u64,
}

/// The state machine Raft drives. Cheap to clone.
#[derive(Clone)]
pub struct StateMachine {
    machine: Arc<dyn Machine>,
    dir: PathBuf,
    applying: Arc<Mutex<Applying>>,
    stats: Arc<ClusterStats>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::read_snapshot(None, &e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_snapshot(None, &e).into()
}

/// A snapshot file: the length of its encoded meta (u32 LE), the meta,
/// then the machine's bytes.
fn encode(meta: &SnapshotMeta<u64, BasicNode>, data: &[u8]) -> Vec<u8> {
    let meta = snapshot_meta_to_pb(meta).encode_to_vec();
    let mut out = Vec::with_capacity(4 + meta.len() + data.len());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(data);
    out
}

fn decode(file: &[u8]) -> Result<(SnapshotMeta<u64, BasicNode>, Bytes), String> {
    let mut b = file;
    if b.len() < 4 {
        return Err("snapshot file too short".into());
    }
    let n = b.get_u32_le() as usize;
    if b.len() < n {
        return Err("snapshot meta cut short".into());
    }
    let meta = pb::SnapshotMeta::decode(&b[..n]).map_err(|e| e.to_string())?;
    Ok((
        snapshot_meta_from_pb(&meta),
        Bytes::copy_from_slice(&b[n..]),
    ))
}

/// Writes `bytes` to `dir/name` so that a crash leaves either the old file
/// or the new one, synced.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// A snapshot of a machine that runs ahead of the log (a leader): its
/// state is captured at once, and stands for the entry of its last
/// proposal then, known once that entry is applied. None when the machine
/// does not run ahead, or the membership changed meanwhile (then the state
/// as applied is taken instead).
fn ahead(
    machine: &dyn Machine,
    applying: &Mutex<Applying>,
) -> std::io::Result<Option<(SnapshotMeta<u64, BasicNode>, Bytes)>> {
    let Some((data, ticket)) = machine.capture_ahead() else {
        return Ok(None);
    };
    let since = std::time::Instant::now();
    let (term, leader, index) = loop {
        match machine.captured_at(ticket) {
            Ok(Some(at)) => break at,
            Ok(None) if since.elapsed() < std::time::Duration::from_secs(60) => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Ok(None) => {
                return Err(std::io::Error::other(
                    "a snapshot's entries were not applied within 60 s",
                ));
            }
            Err(e) => return Err(std::io::Error::other(e)),
        }
    };
    let mut a = applying.lock().unwrap_or_else(|p| p.into_inner());
    if a.membership.log_id().is_some_and(|l| l.index > index) {
        return Ok(None);
    }
    a.built += 1;
    let meta = SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(term, leader), index)),
        last_membership: a.membership.clone(),
        snapshot_id: format!("{index}-{}", a.built),
    };
    Ok(Some((meta, data)))
}

/// A snapshot of the state as applied: read together with the log id it
/// stands for, nothing applying or running ahead meanwhile.
fn as_applied(
    machine: &dyn Machine,
    applying: &Mutex<Applying>,
) -> (SnapshotMeta<u64, BasicNode>, Bytes) {
    // A leader under load may have proposals in flight each time it is
    // asked: it is asked again, a second later, until it settles (Raft
    // goes on meanwhile; this runs on its own). Only a leader that had not
    // yet run ahead, or whose membership just changed, comes here.
    let since = std::time::Instant::now();
    let mut tries = 0u64;
    let quiet = loop {
        if let Some(q) = machine.quiesce() {
            break q;
        }
        tries += 1;
        if tries.is_multiple_of(30) {
            tracing::warn!(waited = ?since.elapsed(), "a snapshot waits for the leader's proposals to settle");
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    let mut a = applying.lock().unwrap_or_else(|p| p.into_inner());
    let data = machine.snapshot();
    a.built += 1;
    let meta = SnapshotMeta {
        last_log_id: a.last_applied,
        last_membership: a.membership.clone(),
        snapshot_id: format!("{}-{}", a.last_applied.map_or(0, |l| l.index), a.built),
    };
    drop(a);
    drop(quiet);
    (meta, data)
}

impl StateMachine {
    /// The state machine over `machine`, restored from the snapshot in
    /// `dir` if there is one.
    pub fn open(machine: Arc<dyn Machine>, dir: &Path) -> Result<StateMachine, String> {
        let mut applying = Applying::default();
        match std::fs::read(dir.join(SNAPSHOT_FILE)) {
            Ok(file) => {
                let (meta, data) = decode(&file)?;
                machine.restore(&data)?;
                applying.last_applied = meta.last_log_id;
                applying.membership = meta.last_membership.clone();
                applying.current = Some((meta, Bytes::from(file)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "reading {}: {e}",
                    dir.join(SNAPSHOT_FILE).display()
                ));
            }
        }
        Ok(StateMachine {
            machine,
            dir: dir.to_path_buf(),
            applying: Arc::new(Mutex::new(applying)),
            stats: Arc::default(),
        })
    }

    /// Counts its snapshots into `stats` (the member's, which outlive
    /// this state machine).
    pub fn with_stats(mut self, stats: Arc<ClusterStats>) -> Self {
        self.stats = stats;
        self
    }

    fn applying(&self) -> MutexGuard<'_, Applying> {
        self.applying.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last entry applied.
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        self.applying().last_applied
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let machine = self.machine.clone();
        let applying = self.applying.clone();
        let dir = self.dir.clone();
        let started = std::time::Instant::now();
        let (meta, file) = tokio::task::spawn_blocking(move || {
            let (meta, data) = match ahead(&*machine, &applying)? {
                Some(taken) => taken,
                None => as_applied(&*machine, &applying),
            };
            let file = encode(&meta, &data);
            write_durably(&dir, SNAPSHOT_FILE, &file).map(|()| (meta, file))
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)?;
        self.stats.built(file.len(), started.elapsed());
        self.applying().current = Some((meta.clone(), Bytes::from(file.clone())));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(file)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let a = self.applying();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for e in entries {
            // The machine applies under this lock too, so that a snapshot
            // never sees a command applied but not counted.
            let mut a = self.applying();
            a.last_applied = Some(e.log_id);
            out.push(match e.payload {
                EntryPayload::Blank => Applied::none(),
                EntryPayload::Normal(p) => self.machine.apply(super::Committed {
                    index: e.log_id.index,
                    term: e.log_id.leader_id.term,
                    leader: e.log_id.leader_id.node_id,
                    command: &p.0,
                }),
                EntryPayload::Membership(m) => {
                    a.membership = StoredMembership::new(Some(e.log_id), m);
                    Applied::none()
                }
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        // What arrived is a whole snapshot file, as the leader built it.
        let file = snapshot.into_inner();
        let (_, data) = decode(&file).map_err(|e| read_err(std::io::Error::other(e)))?;
        let dir = self.dir.clone();
        let bytes = file.clone();
        tokio::task::spawn_blocking(move || write_durably(&dir, SNAPSHOT_FILE, &bytes))
            .await
            .map_err(write_err)?
            .map_err(write_err)?;
        let mut a = self.applying();
        self.machine
            .restore(&data)
            .map_err(|e| read_err(std::io::Error::other(e)))?;
        a.last_applied = meta.last_log_id;
        a.membership = meta.last_membership.clone();
        self.stats.installed(file.len());
        a.current = Some((meta.clone(), Bytes::from(file)));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        Ok(self
            .applying()
            .current
            .as_ref()
            .map(|(meta, file)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(file.to_vec())),
            }))
    }
}
