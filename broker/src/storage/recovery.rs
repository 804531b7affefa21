//! Opening a log: check every segment, cut a torn tail, refuse (or, with
//! `repair`, set aside) any other damage, then replay.
//!
//! Every segment is read once here, before the log is handed out, because
//! the promise is that a damaged log does not open at all: a broker must
//! not replay half its history and then find the rest unreadable. The
//! replay reads the segments a second time (usually from the page cache)
//! so that the whole log never has to sit in memory.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracing::{debug, warn};

use super::error::{Result, StorageError};
use super::format::{FrameError, HEADER_LEN, HeaderError, SegmentHeader, VERSION};
use super::options::LogOptions;
use super::segment::{self, FrameReader, ReadError, SegmentMeta, TMP_SUFFIX};

const READ_BUF: usize = 1 << 20;

/// What recovery leaves for the writer.
#[derive(Debug)]
pub struct Recovered {
    /// The segments kept, in order; each valid through `len`.
    pub segments: Vec<SegmentMeta>,
    /// Where a new first segment starts when none was kept: past every
    /// sequence number a segment file on disk ever claimed.
    pub fresh_first_seq: u64,
}

pub fn recover(dir: &Path, opts: &LogOptions) -> Result<Recovered> {
    let listing = list_segments(dir)?;
    let mut kept: Vec<SegmentMeta> = Vec::with_capacity(listing.len());
    let mut fresh_first_seq = 1;
    let count = listing.len();
    for (i, (name_seq, path)) in listing.into_iter().enumerate() {
        fresh_first_seq = fresh_first_seq.max(name_seq);
        let Some((meta, header)) = scan_segment(dir, &path, name_seq, i + 1 == count, opts)? else {
            continue;
        };
        if let Some(prev) = kept.last() {
            check_link(prev, &meta, header, opts)?;
        }
        kept.push(meta);
    }
    if let Some(last) = kept.last() {
        fresh_first_seq = fresh_first_seq.max(last.next_seq);
    }
    Ok(Recovered {
        segments: kept,
        fresh_first_seq,
    })
}

/// The segment files in `dir`, sorted by first sequence number. Removes
/// leftovers of a segment creation a crash interrupted; ignores anything
/// else (the LOCK, copies set aside by repair).
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = fs::read_dir(dir).map_err(|e| StorageError::io("read directory", dir, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("read directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = segment::parse_file_name(name) {
            found.push((seq, entry.path()));
        } else if name
            .strip_suffix(TMP_SUFFIX)
            .and_then(segment::parse_file_name)
            .is_some()
        {
            debug!(file = %entry.path().display(), "removing an unfinished segment creation");
            fs::remove_file(entry.path())
                .map_err(|e| StorageError::io("remove", &entry.path(), e))?;
        }
    }
    found.sort();
    Ok(found)
}

/// Segments must follow each other: no overlap, and each must name the
/// kept segment before it as its predecessor, or one went missing.
fn check_link(
    prev: &SegmentMeta,
    meta: &SegmentMeta,
    header: SegmentHeader,
    opts: &LogOptions,
) -> Result<()> {
    if meta.first_seq < prev.next_seq {
        return Err(StorageError::corrupt(
            &meta.path,
            0,
            format!(
                "it starts at sequence number {} but {} holds records up to {}",
                meta.first_seq,
                prev.path.display(),
                prev.next_seq - 1
            ),
        ));
    }
    if header.prev_first_seq == prev.first_seq {
        // A gap between the two (first_seq > prev.next_seq) is what an
        // earlier repair of `prev` leaves; nothing is missing since then.
        return Ok(());
    }
    let reason = format!(
        "the segment before it, {}, is missing (found {} instead); its records are lost",
        segment::file_name(header.prev_first_seq),
        segment::file_name(prev.first_seq),
    );
    if !opts.repair {
        return Err(StorageError::corrupt(&meta.path, 0, reason));
    }
    warn!(file = %meta.path.display(), %reason, "repair: accepting a missing segment");
    // Record the new predecessor so the next open does not complain again.
    let header = SegmentHeader {
        prev_first_seq: prev.first_seq,
        ..header
    };
    let file = OpenOptions::new()
        .write(true)
        .open(&meta.path)
        .map_err(|e| StorageError::io("open", &meta.path, e))?;
    file.write_all_at(&header.encode(), 0)
        .and_then(|()| file.sync_data())
        .map_err(|e| StorageError::io("rewrite header", &meta.path, e))
}

/// Reads and checks one segment, cutting or setting aside what is damaged.
/// `None` when the whole file was dropped.
fn scan_segment(
    dir: &Path,
    path: &Path,
    name_seq: u64,
    is_last: bool,
    opts: &LogOptions,
) -> Result<Option<(SegmentMeta, SegmentHeader)>> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io("open", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| StorageError::io("stat", path, e))?
        .len();

    if file_len < HEADER_LEN as u64 {
        // Segments are created under a temporary name, so this is not a
        // crash of ours; still harmless to drop when nothing follows it.
        if is_last {
            warn!(file = %path.display(), len = file_len, "removing a last segment too short to hold a header");
            fs::remove_file(path).map_err(|e| StorageError::io("remove", path, e))?;
            segment::sync_dir(dir)?;
            return Ok(None);
        }
        return drop_damaged_file(dir, path, opts, "file is shorter than a segment header");
    }
    let mut raw = [0u8; HEADER_LEN];
    file.read_exact(&mut raw)
        .map_err(|e| StorageError::io("read", path, e))?;
    let header = match SegmentHeader::decode(&raw) {
        Ok(h) if h.first_seq == name_seq => h,
        Ok(h) => {
            let reason = format!(
                "its header says it starts at sequence number {} but its name says {name_seq}",
                h.first_seq
            );
            return drop_damaged_file(dir, path, opts, reason);
        }
        Err(HeaderError::UnsupportedVersion(version)) => {
            return Err(StorageError::UnsupportedVersion {
                file: path.to_path_buf(),
                version,
                supported: VERSION,
            });
        }
        Err(e) => return drop_damaged_file(dir, path, opts, e),
    };

    let mut reader = FrameReader::new(
        BufReader::with_capacity(READ_BUF, &file),
        HEADER_LEN as u64,
        file_len,
    );
    let mut records = 0u64;
    let damage = loop {
        match reader.next_frame() {
            Ok(Some(_)) => records += 1,
            Ok(None) => break None,
            Err(ReadError::Io(e)) => return Err(StorageError::io("read", path, e)),
            Err(ReadError::Damage {
                offset,
                frame_end,
                error,
            }) => break Some((offset, frame_end, error)),
        }
    };
    drop(reader);

    let len = match damage {
        None => file_len,
        Some((offset, frame_end, error)) => {
            let torn = is_last && is_torn(&file, path, offset, frame_end, error, file_len)?;
            cut_damage(dir, &file, path, offset, error, file_len, torn, opts)?;
            offset
        }
    };
    let meta = SegmentMeta {
        first_seq: header.first_seq,
        next_seq: header.first_seq + records,
        len,
        path: path.to_path_buf(),
    };
    Ok(Some((meta, header)))
}

/// Whether damage in the last segment is what a crash during a write
/// leaves: the damage reaches the end of the file, either as a frame cut
/// short, as a last frame whose checksum fails (possibly followed by
/// zeros: a power loss can persist the file's new size before its data,
/// so a record cut short is padded with zeros to the end), or as zeros
/// the filesystem put where data never arrived. Anything followed by
/// other data is not a torn write, because a write that was confirmed
/// came after it.
fn is_torn(
    file: &File,
    path: &Path,
    offset: u64,
    frame_end: u64,
    error: FrameError,
    file_len: u64,
) -> Result<bool> {
    Ok(match error {
        FrameError::Truncated { .. } => true,
        FrameError::BadChecksum { .. } if frame_end == file_len => true,
        FrameError::BadChecksum { .. }
            if frame_end < file_len
                && zeros_to_end(file, frame_end, file_len)
                    .map_err(|e| StorageError::io("read", path, e))? =>
        {
            true
        }
        _ => zeros_to_end(file, offset, file_len).map_err(|e| StorageError::io("read", path, e))?,
    })
}

fn zeros_to_end(file: &File, mut offset: u64, end: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 64 << 10];
    while offset < end {
        let want = buf.len().min((end - offset) as usize);
        let n = file.read_at(&mut buf[..want], offset)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        offset += n as u64;
    }
    Ok(true)
}

/// Truncates a segment at `offset`: quietly for a torn tail, after copying
/// the file aside under `repair`, and not at all otherwise (an error).
///
/// Repair truncates rather than resynchronising on a later frame: sequence
/// numbers are implicit, so records after a hole could not be numbered,
/// and replaying commands after a lost one would build a state that never
/// existed anyway.
#[allow(clippy::too_many_arguments)]
fn cut_damage(
    dir: &Path,
    file: &File,
    path: &Path,
    offset: u64,
    error: FrameError,
    file_len: u64,
    torn: bool,
    opts: &LogOptions,
) -> Result<()> {
    if torn {
        warn!(
            file = %path.display(), offset, dropped_bytes = file_len - offset, reason = %error,
            "truncating a torn write at the tail of the log"
        );
    } else if opts.repair {
        let aside = copy_aside(dir, path)?;
        warn!(
            file = %path.display(), offset, dropped_bytes = file_len - offset, reason = %error,
            copy = %aside.display(), "repair: dropping the damaged end of a segment"
        );
    } else {
        return Err(StorageError::corrupt(path, offset, error));
    }
    file.set_len(offset)
        .and_then(|()| file.sync_all())
        .map_err(|e| StorageError::io("truncate", path, e))
}

/// A segment whose header is unusable: refused, or under `repair` renamed
/// aside whole (its records cannot be trusted without a header).
fn drop_damaged_file(
    dir: &Path,
    path: &Path,
    opts: &LogOptions,
    reason: impl ToString,
) -> Result<Option<(SegmentMeta, SegmentHeader)>> {
    let reason = reason.to_string();
    if !opts.repair {
        return Err(StorageError::corrupt(path, 0, reason));
    }
    let aside = aside_path(path);
    fs::rename(path, &aside).map_err(|e| StorageError::io("rename", path, e))?;
    segment::sync_dir(dir)?;
    warn!(file = %path.display(), %reason, moved_to = %aside.display(), "repair: setting aside a segment with a damaged header");
    Ok(None)
}

fn copy_aside(dir: &Path, path: &Path) -> Result<PathBuf> {
    let aside = aside_path(path);
    fs::copy(path, &aside).map_err(|e| StorageError::io("copy", path, e))?;
    File::open(&aside)
        .and_then(|f| f.sync_all())
        .map_err(|e| StorageError::io("fsync", &aside, e))?;
    segment::sync_dir(dir)?;
    Ok(aside)
}

/// `<name>.corrupt-<unix seconds>`, with `-N` added if that exists.
fn aside_path(path: &Path) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{}.corrupt-{secs}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while fs::symlink_metadata(&candidate).is_ok() {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

/// Every record recovered when the log was opened, in order, as
/// `(sequence number, payload)`.
///
/// Reads one segment at a time; each payload is copied into its own
/// `Bytes`, so keeping a record does not keep its segment in memory.
/// Records appended after `open` are not included. The segments it has
/// yet to read must stay on disk: finish or drop the replay before
/// removing segments.
#[derive(Debug)]
pub struct Replay {
    pending: VecDeque<SegmentMeta>,
    current: Option<(FrameReader<BufReader<File>>, PathBuf, u64)>,
    records: u64,
    done: bool,
}

impl Replay {
    pub(crate) fn new(segments: &[SegmentMeta]) -> Self {
        Replay {
            records: segments.iter().map(|s| s.next_seq - s.first_seq).sum(),
            pending: segments.iter().cloned().collect(),
            current: None,
            done: false,
        }
    }

    /// Records left to yield.
    pub fn remaining(&self) -> u64 {
        self.records
    }

    fn open(seg: &SegmentMeta) -> Result<(FrameReader<BufReader<File>>, PathBuf, u64)> {
        let mut file = File::open(&seg.path).map_err(|e| StorageError::io("open", &seg.path, e))?;
        file.seek(SeekFrom::Start(HEADER_LEN as u64))
            .map_err(|e| StorageError::io("seek", &seg.path, e))?;
        let reader = FrameReader::new(
            BufReader::with_capacity(READ_BUF, file),
            HEADER_LEN as u64,
            seg.len,
        );
        Ok((reader, seg.path.clone(), seg.first_seq))
    }

    fn step(&mut self) -> Option<Result<(u64, Bytes)>> {
        loop {
            let (reader, path, next_seq) = match &mut self.current {
                Some(current) => current,
                None => {
                    let seg = self.pending.pop_front()?;
                    match Self::open(&seg) {
                        Ok(c) => self.current.insert(c),
                        Err(e) => return Some(Err(e)),
                    }
                }
            };
            match reader.next_frame() {
                Ok(Some(payload)) => {
                    let seq = *next_seq;
                    *next_seq += 1;
                    self.records = self.records.saturating_sub(1);
                    return Some(Ok((seq, Bytes::copy_from_slice(payload))));
                }
                Ok(None) => self.current = None,
                Err(ReadError::Io(e)) => return Some(Err(StorageError::io("read", path, e))),
                Err(ReadError::Damage { offset, error, .. }) => {
                    let reason = format!("{error} (the file changed after the log was opened)");
                    return Some(Err(StorageError::corrupt(path, offset, reason)));
                }
            }
        }
    }
}

impl Iterator for Replay {
    type Item = Result<(u64, Bytes)>;

    /// After an error, yields nothing more.
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}
