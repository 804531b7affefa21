//! Tests of the log as the broker uses it: append, close, damage the files
//! the way crashes and disks do, reopen, and look at what replays.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::format::{self, HEADER_LEN};
use super::*;

fn rec(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn recs(items: &[&str]) -> Vec<Bytes> {
    items.iter().map(|s| rec(s)).collect()
}

fn seg(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

fn small_segments(bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes: bytes,
        ..LogOptions::default()
    }
}

/// Writes a closed log of three segments (files 1, 4 and 7: three 2-byte
/// records each, the last holding one) and returns its options.
async fn three_segments(dir: &Path) -> LogOptions {
    let opts = small_segments(32 + 3 * 10);
    let (log, _) = open(dir, opts.clone());
    append_each(&log, &["a1", "a2", "a3", "b1", "b2", "b3", "c1"]).await;
    log.close().await.expect("close");
    opts
}

/// Opens and replays everything.
fn open(dir: &Path, opts: LogOptions) -> (Log, Vec<(u64, Bytes)>) {
    let (log, replay) = Log::open(dir, opts).expect("open the log");
    let records = replay.collect::<Result<Vec<_>, _>>().expect("replay");
    (log, records)
}

fn open_err(dir: &Path, opts: LogOptions) -> StorageError {
    match Log::open(dir, opts) {
        Ok(_) => panic!("open of {} should have failed", dir.display()),
        Err(e) => e,
    }
}

fn payloads(records: &[(u64, Bytes)]) -> Vec<&str> {
    records
        .iter()
        .map(|(_, b)| std::str::from_utf8(b).expect("utf-8 test record"))
        .collect()
}

fn seqs(records: &[(u64, Bytes)]) -> Vec<u64> {
    records.iter().map(|(s, _)| *s).collect()
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").len()
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read segment");
    bytes[offset as usize] ^= 0x55;
    fs::write(path, bytes).expect("write segment");
}

fn append_raw(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open segment");
    f.write_all(bytes).expect("append to segment");
}

fn aside_copies(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    found.sort();
    found
}

/// Appends one record per call, so each is its own frame.
async fn append_each(log: &Log, items: &[&str]) -> u64 {
    let mut last = 0;
    for item in items {
        last = log.append(vec![rec(item)]).await.expect("append");
    }
    last
}

#[tokio::test]
async fn appends_replay_in_order_after_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("not/yet/there");
    let (log, replayed) = open(&dir, LogOptions::default());
    assert!(replayed.is_empty());
    assert!(seg(&dir, 1).exists(), "the first segment starts at 1");

    assert_eq!(log.append(recs(&["a", "b"])).await.ok(), Some(2));
    assert_eq!(log.append(recs(&["c"])).await.ok(), Some(3));
    assert_eq!(log.append(vec![]).await.ok(), Some(3));
    log.close().await.expect("close");
    assert!(matches!(
        log.append(recs(&["late"])).await,
        Err(StorageError::Closed)
    ));
    log.close().await.expect("closing twice is fine");

    let (log, replayed) = open(&dir, LogOptions::default());
    assert_eq!(payloads(&replayed), ["a", "b", "c"]);
    assert_eq!(seqs(&replayed), [1, 2, 3]);
    assert_eq!(log.append(recs(&["d"])).await.ok(), Some(4));
    log.close().await.expect("close");
}

#[tokio::test]
async fn torn_tails_are_truncated_and_appending_continues() {
    // (what a crash leaves at the end, records that survive)
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &[&str]); 5] = [
        (
            "frame cut short",
            |p| {
                let mut frame = Vec::new();
                format::encode_frame(&mut frame, &[7u8; 100]);
                append_raw(p, &frame[..50]);
            },
            &["a", "b", "c"],
        ),
        (
            // A power loss that kept the file's new size but not all of
            // its data: the record's start, then zeros.
            "frame cut short, then zeros",
            |p| {
                let mut frame = Vec::new();
                format::encode_frame(&mut frame, &[7u8; 100]);
                append_raw(p, &frame[..50]);
                append_raw(p, &[0u8; 512]);
            },
            &["a", "b", "c"],
        ),
        (
            "frame header cut short",
            |p| append_raw(p, &[1, 2, 3]),
            &["a", "b", "c"],
        ),
        (
            "zeros where data never arrived",
            |p| append_raw(p, &[0u8; 4096]),
            &["a", "b", "c"],
        ),
        (
            "last frame with a bad checksum",
            |p| flip_byte(p, file_len(p) - 1),
            &["a", "b"],
        ),
    ];
    for (what, damage, survivors) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = open(dir.path(), LogOptions::default());
        append_each(&log, &["a", "b", "c"]).await;
        log.close().await.expect("close");
        let path = seg(dir.path(), 1);
        let mut good_len = file_len(&path);
        if survivors.len() < 3 {
            good_len -= format::frame_len(1) as u64;
        }
        damage(&path);

        let (log, replayed) = open(dir.path(), LogOptions::default());
        assert_eq!(payloads(&replayed), survivors, "{what}");
        assert_eq!(file_len(&path), good_len, "{what}: tail cut off");
        let next = survivors.len() as u64 + 1;
        assert_eq!(log.append(recs(&["d"])).await.ok(), Some(next), "{what}");
        log.close().await.expect("close");

        let (log, replayed) = open(dir.path(), LogOptions::default());
        let mut expected = survivors.to_vec();
        expected.push("d");
        assert_eq!(payloads(&replayed), expected, "{what}");
        log.close().await.expect("close");
    }
}

#[tokio::test]
async fn damage_in_the_middle_refuses_to_open_naming_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), LogOptions::default());
    append_each(&log, &["first", "second", "third"]).await;
    log.close().await.expect("close");
    let path = seg(dir.path(), 1);
    // A payload byte of the first record; valid records follow it.
    flip_byte(&path, (HEADER_LEN + format::FRAME_HEADER_LEN) as u64);

    let err = open_err(dir.path(), LogOptions::default());
    match &err {
        StorageError::Corrupt { file, offset, .. } => {
            assert_eq!(file, &path);
            assert_eq!(*offset, HEADER_LEN as u64);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("00000000000000000001.seg"), "{msg}");
    assert!(msg.contains("at byte 32"), "{msg}");
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(msg.contains("repair"), "{msg}");
    assert_eq!(
        file_len(&path) as usize,
        HEADER_LEN + 3 * 8 + 16,
        "nothing was cut"
    );
}

#[tokio::test]
async fn a_bad_frame_padded_with_zeros_but_followed_by_data_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), LogOptions::default());
    append_each(&log, &["a"]).await;
    log.close().await.expect("close");
    let path = seg(dir.path(), 1);
    let bad_at = file_len(&path);
    let mut frame = Vec::new();
    format::encode_frame(&mut frame, &[7u8; 100]);
    append_raw(&path, &frame[..50]);
    append_raw(&path, &[0u8; 512]);
    // A later, valid write: whatever came before it was not a torn tail.
    let mut good = Vec::new();
    format::encode_frame(&mut good, b"later");
    append_raw(&path, &good);
    let err = open_err(dir.path(), LogOptions::default());
    assert!(
        matches!(err, StorageError::Corrupt { offset, .. } if offset == bad_at),
        "{err}"
    );
}

#[tokio::test]
async fn a_torn_looking_end_of_an_earlier_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), small_segments(100));
    let twenty = ["a", "b", "c", "d"].map(|c| c.repeat(20));
    append_each(&log, &twenty.each_ref().map(String::as_str)).await;
    assert_eq!(log.segments().len(), 2, "two 28-byte frames per segment");
    log.close().await.expect("close");
    let first = seg(dir.path(), 1);
    // The last frame of a non-last segment: would be a torn tail if this
    // segment were the last, but it was synced before the next began.
    flip_byte(&first, file_len(&first) - 1);
    let err = open_err(dir.path(), small_segments(100));
    assert!(
        matches!(err, StorageError::Corrupt { ref file, .. } if file == &first),
        "{err}"
    );
}

#[tokio::test]
async fn repair_copies_the_segment_aside_and_keeps_what_precedes_the_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = small_segments(32 + 3 * 10);
    let (log, _) = open(dir.path(), opts.clone());
    // 2-byte records: 10-byte frames, three per segment.
    let items = ["a1", "a2", "a3", "b1", "b2", "b3", "c1", "c2"];
    append_each(&log, &items).await;
    let layout: Vec<(u64, u64)> = log
        .segments()
        .iter()
        .map(|s| (s.first_seq, s.next_seq))
        .collect();
    assert_eq!(layout, [(1, 4), (4, 7), (7, 9)]);
    log.close().await.expect("close");

    let first = seg(dir.path(), 1);
    let original = fs::read(&first).expect("read");
    flip_byte(&first, (HEADER_LEN + 10 + 9) as u64); // payload of a2

    let err = open_err(dir.path(), opts.clone());
    assert!(
        matches!(err, StorageError::Corrupt { offset: 42, .. }),
        "{err}"
    );

    let (log, replayed) = open(
        dir.path(),
        LogOptions {
            repair: true,
            ..opts.clone()
        },
    );
    assert_eq!(payloads(&replayed), ["a1", "b1", "b2", "b3", "c1", "c2"]);
    assert_eq!(seqs(&replayed), [1, 4, 5, 6, 7, 8]);
    let copies = aside_copies(dir.path());
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(
        copies[0]
            .to_string_lossy()
            .contains("00000000000000000001.seg.corrupt-")
    );
    let mut damaged = original.clone();
    damaged[HEADER_LEN + 19] ^= 0x55;
    assert_eq!(
        fs::read(&copies[0]).expect("read copy"),
        damaged,
        "the copy is the file as found"
    );
    assert_eq!(
        file_len(&first),
        (HEADER_LEN + 10) as u64,
        "cut at the damage"
    );
    assert_eq!(log.append(recs(&["c3"])).await.ok(), Some(9));
    log.close().await.expect("close");

    // The gap left by the repair is not mistaken for damage later.
    let (log, replayed) = open(dir.path(), opts);
    assert_eq!(
        payloads(&replayed),
        ["a1", "b1", "b2", "b3", "c1", "c2", "c3"]
    );
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_missing_segment_is_detected_and_repair_accepts_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = three_segments(dir.path()).await;
    fs::remove_file(seg(dir.path(), 4)).expect("remove the middle segment");

    let err = open_err(dir.path(), opts.clone());
    assert!(
        matches!(&err, StorageError::Corrupt { file, .. } if file == &seg(dir.path(), 7)),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("00000000000000000004.seg, is missing"),
        "{err}"
    );

    let (log, replayed) = open(
        dir.path(),
        LogOptions {
            repair: true,
            ..opts.clone()
        },
    );
    assert_eq!(payloads(&replayed), ["a1", "a2", "a3", "c1"]);
    log.close().await.expect("close");
    let (log, replayed) = open(dir.path(), opts);
    assert_eq!(payloads(&replayed), ["a1", "a2", "a3", "c1"]);
    log.close().await.expect("close");
}

#[tokio::test]
async fn damaged_headers_and_leftovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = three_segments(dir.path()).await;
    let leftover = dir.path().join("00000000000000000008.seg.tmp");
    fs::write(&leftover, b"half a header").expect("write");
    flip_byte(&seg(dir.path(), 4), 0);

    let err = open_err(dir.path(), opts.clone());
    assert!(
        matches!(err, StorageError::Corrupt { offset: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("bad magic"), "{err}");
    assert!(
        !leftover.exists(),
        "an unfinished segment creation is removed"
    );

    let (log, replayed) = open(
        dir.path(),
        LogOptions {
            repair: true,
            ..opts.clone()
        },
    );
    assert_eq!(payloads(&replayed), ["a1", "a2", "a3", "c1"]);
    assert!(!seg(dir.path(), 4).exists(), "set aside whole");
    assert_eq!(aside_copies(dir.path()).len(), 1);
    log.close().await.expect("close");

    // A newer format is never repaired away.
    let path = seg(dir.path(), 1);
    let mut bytes = fs::read(&path).expect("read");
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    fs::write(&path, bytes).expect("write");
    let err = open_err(
        dir.path(),
        LogOptions {
            repair: true,
            ..opts
        },
    );
    assert!(
        matches!(err, StorageError::UnsupportedVersion { version: 2, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn segments_roll_and_old_ones_can_be_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = small_segments(256);
    let (log, _) = open(dir.path(), opts.clone());
    let items: Vec<String> = (0..50).map(|i| format!("record number {i:04}")).collect();
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    assert_eq!(append_each(&log, &refs).await, 50);

    let segments = log.segments();
    assert!(segments.len() > 3, "{segments:?}");
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s.bytes, file_len(&seg(dir.path(), s.first_seq)));
        assert!(s.bytes <= 256, "{s:?}");
        assert_eq!(s.active, i == segments.len() - 1);
        if let Some(next) = segments.get(i + 1) {
            assert_eq!(s.next_seq, next.first_seq, "contiguous");
        }
    }
    assert_eq!(segments[0].first_seq, 1);
    assert_eq!(segments.last().map(|s| s.next_seq), Some(51));
    assert_eq!(
        log.total_bytes(),
        segments.iter().map(|s| s.bytes).sum::<u64>()
    );

    // Remove everything before seq 20: whole segments only.
    let cut = 20;
    let removed = log.remove_segments_before(cut).await.expect("remove");
    let left = log.segments();
    assert!(removed.segments > 0);
    assert_eq!(left.len(), segments.len() - removed.segments);
    assert!(
        left[0].first_seq <= cut && cut < left[0].next_seq,
        "{left:?}"
    );
    for gone in &segments[..removed.segments] {
        assert!(!seg(dir.path(), gone.first_seq).exists());
    }
    assert_eq!(
        removed.bytes,
        segments[..removed.segments]
            .iter()
            .map(|s| s.bytes)
            .sum::<u64>()
    );

    // The active segment stays whatever is asked.
    log.remove_segments_before(u64::MAX).await.expect("remove");
    let left = log.segments();
    assert_eq!(left.len(), 1);
    assert!(left[0].active);
    let first_kept = left[0].first_seq;
    log.close().await.expect("close");

    let (log, replayed) = open(dir.path(), opts);
    assert_eq!(replayed.first().map(|r| r.0), Some(first_kept));
    assert_eq!(replayed.last().map(|r| r.0), Some(50));
    assert_eq!(log.append(recs(&["more"])).await.ok(), Some(51));
    log.close().await.expect("close");
}

#[tokio::test]
async fn compaction_rolls_reappends_live_records_and_drops_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), LogOptions::default());
    append_each(&log, &["live-a", "dead-b", "live-c"]).await;

    let cut = log.roll().await.expect("roll");
    assert_eq!(cut, 4);
    assert_eq!(
        log.roll().await.ok(),
        Some(4),
        "an empty active segment is not rolled"
    );
    assert_eq!(log.append(recs(&["live-a", "live-c"])).await.ok(), Some(5));
    let removed = log.remove_segments_before(cut).await.expect("remove");
    assert_eq!(removed.segments, 1);
    assert!(!seg(dir.path(), 1).exists());
    log.close().await.expect("close");

    let (log, replayed) = open(dir.path(), LogOptions::default());
    assert_eq!(payloads(&replayed), ["live-a", "live-c"]);
    assert_eq!(seqs(&replayed), [4, 5]);
    log.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), LogOptions::default());
    // A slow disk: appenders pile up behind each fdatasync.
    log.inner.state.faults.slow_sync_ms.store(20, Relaxed);

    const N: usize = 200;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move {
                let payload = format!("appender {i}");
                let seq = log.append(vec![rec(&payload)]).await;
                (payload, seq)
            })
        })
        .collect();
    let mut confirmed = Vec::new();
    for t in tasks {
        let (payload, seq) = t.await.expect("task");
        confirmed.push((seq.expect("append"), payload));
    }
    let stats = log.stats();
    assert_eq!(stats.records_written, N as u64);
    assert!(
        stats.fsyncs < (N / 10) as u64,
        "{N} appenders took {} fsyncs",
        stats.fsyncs
    );
    assert!(stats.batches <= stats.fsyncs, "{stats:?}");
    assert!(stats.last_fsync >= Duration::from_millis(20), "{stats:?}");
    log.close().await.expect("close");

    let (log, replayed) = open(dir.path(), LogOptions::default());
    assert_eq!(replayed.len(), N);
    for (seq, payload) in confirmed {
        let got = &replayed[(seq - 1) as usize];
        assert_eq!(got.0, seq);
        assert_eq!(
            got.1,
            payload.as_bytes(),
            "record at the seq its append returned"
        );
    }
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), LogOptions::default());
    let err = open_err(dir.path(), LogOptions::default());
    assert!(
        matches!(&err, StorageError::Locked { dir: d, pid: Some(p) } if d == dir.path() && *p == std::process::id()),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.starts_with("another broker"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");

    // A clone closing closes the log for all, and frees the directory.
    log.clone().close().await.expect("close");
    let (log, _) = open(dir.path(), LogOptions::default());
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_failed_write_leaves_nothing_behind_and_the_log_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), LogOptions::default());
    assert_eq!(log.append(recs(&["a"])).await.ok(), Some(1));
    let path = seg(dir.path(), 1);
    let good_len = file_len(&path);

    log.inner.state.faults.fail_writes.store(1, Relaxed);
    let err = log
        .append(recs(&["b", "c"]))
        .await
        .expect_err("the disk is full");
    assert!(
        matches!(err, StorageError::DiskFull { ref path, needed: 18, .. } if path == &seg(dir.path(), 1)),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("disk full"), "{err}");
    assert_eq!(
        file_len(&path),
        good_len,
        "the half-written group is cut off"
    );
    assert_eq!(log.stats().write_errors, 1);

    assert_eq!(
        log.append(recs(&["d"])).await.ok(),
        Some(2),
        "the sequence number was not used up"
    );
    log.close().await.expect("close");
    let (log, replayed) = open(dir.path(), LogOptions::default());
    assert_eq!(payloads(&replayed), ["a", "d"]);
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_failed_fsync_stops_the_log_and_nothing_is_confirmed_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), LogOptions::default());
    assert_eq!(log.append(recs(&["a"])).await.ok(), Some(1));
    log.faults().fail_syncs.store(1, Relaxed);
    let err = log.append(recs(&["b"])).await.expect_err("fsync fails");
    assert!(
        matches!(
            err,
            StorageError::Io {
                op: "fdatasync",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(log.stats().fsync_errors, 1);
    assert!(log.stats().stopped);
    // The next fsync would succeed, and might do so over pages the kernel
    // dropped: the log must not take the chance.
    for attempt in [log.append(recs(&["c"])).await, log.flush().await] {
        let err = attempt.expect_err("stopped");
        assert!(matches!(err, StorageError::Stopped { .. }), "{err:?}");
        assert!(err.to_string().contains("restart the broker"), "{err}");
    }
    assert!(matches!(
        log.roll().await,
        Err(StorageError::Stopped { .. })
    ));
    log.append_nowait(recs(&["d"]))
        .expect("queued, then dropped");
    assert!(log.close().await.is_err(), "closing says it failed too");
    let (log, replayed) = open(dir.path(), LogOptions::default());
    assert_eq!(payloads(&replayed), ["a"], "nothing after the failure");
    assert_eq!(log.append(recs(&["e"])).await.ok(), Some(2));
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_failed_background_fsync_stops_the_log_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = LogOptions {
        fsync: "interval:10ms".parse().expect("policy"),
        ..LogOptions::default()
    };
    let (log, _) = open(dir.path(), opts);
    log.faults().fail_syncs.store(1, Relaxed);
    // Confirmed before the sync, as the interval policy promises.
    assert_eq!(log.append(recs(&["a"])).await.ok(), Some(1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.stats().stopped {
        assert!(
            Instant::now() < deadline,
            "the background sync never failed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = log.append(recs(&["b"])).await.expect_err("stopped");
    assert!(matches!(err, StorageError::Stopped { .. }), "{err:?}");
    let _ = log.close().await;
}

#[tokio::test]
async fn old_segments_go_only_once_what_replaces_them_is_synced() {
    for fsync in ["never", "interval:1h"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = LogOptions {
            fsync: fsync.parse().expect("policy"),
            ..LogOptions::default()
        };
        let (log, _) = open(dir.path(), opts.clone());
        append_each(&log, &["old1", "old2"]).await;
        let cut = log.roll().await.expect("roll");
        // The compacted copy of what is live: written, not yet synced.
        assert_eq!(log.append(recs(&["live"])).await.ok(), Some(3));
        let synced = log.stats().fsyncs;
        log.faults().fail_syncs.store(1, Relaxed);
        let err = log
            .remove_segments_before(cut)
            .await
            .expect_err("the sync fails, so nothing may be deleted");
        assert!(
            matches!(
                err,
                StorageError::Io {
                    op: "fdatasync",
                    ..
                }
            ),
            "{fsync}: {err:?}"
        );
        assert!(seg(dir.path(), 1).exists(), "{fsync}: old segment kept");
        let _ = log.close().await;

        let (log, _) = open(dir.path(), opts.clone());
        let cut = log.roll().await.expect("roll");
        log.append(recs(&["live"])).await.expect("append");
        let before = log.stats().fsyncs;
        let removed = log.remove_segments_before(cut).await.expect("remove");
        assert!(removed.segments >= 1, "{fsync}");
        assert!(
            log.stats().fsyncs > before,
            "{fsync}: synced before deleting (fsyncs {synced} -> {before} -> {})",
            log.stats().fsyncs
        );
        log.close().await.expect("close");
    }
}

#[tokio::test]
async fn appends_keeping_free_space_are_refused_first_and_others_still_fit() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A header and ten 10-byte frames.
    let opts = LogOptions {
        max_bytes: Some((HEADER_LEN + 100) as u64),
        ..LogOptions::default()
    };
    let (log, _) = open(dir.path(), opts);
    // 100 bytes free, less a header kept for a possible roll: 68; each
    // append keeps 40 of it.
    assert!(log.append_keeping(recs(&["a1"]), 40).await.is_ok());
    assert!(log.append_keeping(recs(&["a2"]), 40).await.is_ok());
    let err = log
        .append_keeping(recs(&["a3"]), 40)
        .await
        .expect_err("would leave less than 40 free");
    assert!(
        matches!(err, StorageError::DiskFull { needed: 10, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("so that it can always compact"),
        "{err}"
    );
    // What keeps nothing (an ack, say) still fits in the reserve: the
    // other 80 bytes of the quota.
    append_each(&log, &["b1", "b2", "b3", "b4", "b5", "b6", "b7"]).await;
    assert!(log.append(recs(&["b8"])).await.is_ok());
    assert!(log.append(recs(&["b9"])).await.is_err(), "now really full");
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_slot_keeps_its_place_while_its_records_are_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), LogOptions::default());
    append_each(&log, &["before"]).await;
    let slot = log.reserve().expect("reserve");
    // Appended after the reservation: must come after the slot's records,
    // though they are made later.
    let after = log.append(recs(&["after"]));
    let filler = std::thread::spawn(move || {
        slot.send(recs(&["s1", "s2"])).expect("send");
        slot.send(recs(&["s3"])).expect("send");
        slot
    });
    let slot = filler.join().expect("filler");
    assert_eq!(slot.finish().await.ok(), Some(4));
    assert_eq!(after.await.ok(), Some(5));

    // An abandoned slot fails, and the log goes on.
    let slot = log.reserve().expect("reserve");
    let next = log.append(recs(&["next"]));
    drop(slot);
    assert_eq!(next.await.ok(), Some(6));
    log.close().await.expect("close");
    let (log, replayed) = open(dir.path(), LogOptions::default());
    assert_eq!(
        payloads(&replayed),
        ["before", "s1", "s2", "s3", "after", "next"]
    );
    log.close().await.expect("close");
}

#[tokio::test]
async fn creating_the_data_directory_syncs_its_parent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("a").join("b");
    let (log, _) = open(&nested, LogOptions::default());
    let synced = segment::synced_dirs();
    for d in [
        dir.path().to_path_buf(),
        dir.path().join("a"),
        nested.clone(),
    ] {
        assert!(
            synced.contains(&d),
            "{} not synced: {synced:?}",
            d.display()
        );
    }
    log.close().await.expect("close");
}

#[tokio::test]
async fn the_quota_acts_as_a_full_disk_until_space_is_freed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A header and three 10-byte frames fit.
    let opts = LogOptions {
        max_bytes: Some((HEADER_LEN + 30) as u64),
        ..LogOptions::default()
    };
    let (log, _) = open(dir.path(), opts.clone());
    append_each(&log, &["a1", "a2", "a3"]).await;
    let err = log.append(recs(&["a4"])).await.expect_err("over quota");
    assert!(
        matches!(err, StorageError::DiskFull { needed: 10, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("quota (max_bytes = 62)"), "{err}");

    // The broker frees space: compacts everything away.
    let cut = log.roll().await.expect("roll");
    log.remove_segments_before(cut).await.expect("remove");
    assert_eq!(log.append(recs(&["a4"])).await.ok(), Some(4));
    log.close().await.expect("close");
    let (log, replayed) = open(dir.path(), opts);
    assert_eq!(payloads(&replayed), ["a4"]);
    log.close().await.expect("close");
}

#[tokio::test]
async fn nowait_records_keep_their_place_and_flush_syncs_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), LogOptions::default());
    log.append_nowait(recs(&["a"])).expect("enqueue");
    log.append_nowait(recs(&["b"])).expect("enqueue");
    assert_eq!(log.flush().await.ok(), Some(2));
    assert!(log.stats().fsyncs >= 1);
    let synced = log.stats().fsyncs;
    assert_eq!(log.flush().await.ok(), Some(2));
    assert_eq!(log.stats().fsyncs, synced, "nothing new to sync");
    assert_eq!(log.append(recs(&["c"])).await.ok(), Some(3));
    log.close().await.expect("close");
    let (log, replayed) = open(dir.path(), LogOptions::default());
    assert_eq!(payloads(&replayed), ["a", "b", "c"]);
    log.close().await.expect("close");
}

#[tokio::test]
async fn interval_policy_confirms_first_and_syncs_within_the_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = LogOptions {
        fsync: "interval:50ms".parse().expect("policy"),
        ..LogOptions::default()
    };
    let (log, _) = open(dir.path(), opts);
    // The first write comes right after open, within the interval.
    assert_eq!(log.append(recs(&["a"])).await.ok(), Some(1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.stats().fsyncs == 0 {
        assert!(Instant::now() < deadline, "no background fdatasync");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    log.close().await.expect("close");
}

#[tokio::test]
async fn never_policy_leaves_syncing_to_the_os_until_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = LogOptions {
        fsync: FsyncPolicy::Never,
        ..LogOptions::default()
    };
    let (log, _) = open(dir.path(), opts.clone());
    append_each(&log, &["a", "b"]).await;
    assert_eq!(log.stats().fsyncs, 0);
    log.close().await.expect("close");
    let (log, replayed) = open(dir.path(), opts);
    assert_eq!(payloads(&replayed), ["a", "b"]);
    log.close().await.expect("close");
}

#[tokio::test]
async fn oversized_records_are_refused_up_front() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = LogOptions {
        max_record_bytes: 4,
        ..LogOptions::default()
    };
    let (log, _) = open(dir.path(), opts);
    let err = log
        .append(recs(&["ok", "too long"]))
        .await
        .expect_err("too large");
    assert!(
        matches!(err, StorageError::RecordTooLarge { len: 8, max: 4 }),
        "{err:?}"
    );
    assert!(log.append_nowait(recs(&["too long"])).is_err());
    assert_eq!(log.append(recs(&["ok"])).await.ok(), Some(1));
    log.close().await.expect("close");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Writes `groups` (each an `append` or, if flagged, an `append_nowait`),
/// closes, and returns the records in order.
fn write_groups(dir: &Path, opts: &LogOptions, groups: &[(Vec<Vec<u8>>, bool)]) -> Vec<Vec<u8>> {
    let (log, _) = open(dir, opts.clone());
    let mut all = Vec::new();
    runtime().block_on(async {
        let mut pending = Vec::new();
        for (group, nowait) in groups {
            let records: Vec<Bytes> = group.iter().map(|r| Bytes::copy_from_slice(r)).collect();
            all.extend(group.iter().cloned());
            if *nowait {
                log.append_nowait(records).expect("enqueue");
            } else {
                pending.push(log.append(records));
            }
        }
        for p in pending {
            p.await.expect("append");
        }
        log.close().await.expect("close");
    });
    all
}

fn groups() -> impl Strategy<Value = Vec<(Vec<Vec<u8>>, bool)>> {
    let record = prop::collection::vec(any::<u8>(), 0..200);
    let group = (prop::collection::vec(record, 0..6), any::<bool>());
    prop::collection::vec(group, 0..30)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn whatever_is_written_replays_exactly(groups in groups(), segment_bytes in 64u64..2048) {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = LogOptions { segment_bytes, fsync: FsyncPolicy::Never, ..LogOptions::default() };
        let written = write_groups(dir.path(), &opts, &groups);

        let (log, replayed) = open(dir.path(), opts);
        let got: Vec<Vec<u8>> = replayed.iter().map(|(_, b)| b.to_vec()).collect();
        prop_assert_eq!(got, written.clone());
        prop_assert_eq!(seqs(&replayed), (1..=written.len() as u64).collect::<Vec<_>>());
        let segments = log.segments();
        for pair in segments.windows(2) {
            prop_assert_eq!(pair[0].next_seq, pair[1].first_seq);
        }
        runtime().block_on(log.close()).expect("close");
    }

    #[test]
    fn a_crash_anywhere_in_the_last_segment_leaves_a_prefix(
        groups in groups(),
        cut_permille in 0u64..1000,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = LogOptions { segment_bytes: 512, fsync: FsyncPolicy::Never, ..LogOptions::default() };
        let written = write_groups(dir.path(), &opts, &groups);

        let (log, _) = open(dir.path(), opts.clone());
        let last = log.segments().last().map(|s| s.first_seq).unwrap_or(1);
        runtime().block_on(log.close()).expect("close");
        let path = seg(dir.path(), last);
        let len = file_len(&path);
        let cut = HEADER_LEN as u64 + (len - HEADER_LEN as u64) * cut_permille / 1000;
        OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(cut)).expect("truncate");

        let (log, replayed) = open(dir.path(), opts);
        let got: Vec<Vec<u8>> = replayed.iter().map(|(_, b)| b.to_vec()).collect();
        prop_assert!(got.len() >= (last - 1) as usize, "earlier segments are intact");
        prop_assert!(got.len() <= written.len());
        prop_assert_eq!(&got[..], &written[..got.len()]);
        runtime().block_on(log.close()).expect("close");
    }
}
