//! Segment files: their names, their creation, and reading their frames in
//! order.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::error::{Result, StorageError};
use super::format::{self, FRAME_HEADER_LEN, FrameError, HEADER_LEN, SegmentHeader};

pub const SEGMENT_EXT: &str = ".seg";
/// Suffix of a segment being created; renamed to its final name only once
/// its header is durable, so every `.seg` file has a whole header.
pub const TMP_SUFFIX: &str = ".tmp";

/// A segment as the writer and recovery see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    pub first_seq: u64,
    /// One past the sequence number of the last record.
    pub next_seq: u64,
    /// Bytes of valid data: header plus whole frames.
    pub len: u64,
    pub path: PathBuf,
}

impl SegmentMeta {
    pub fn is_empty(&self) -> bool {
        self.next_seq == self.first_seq
    }
}

/// `00000000000000000001.seg`: twenty digits, so names sort as numbers.
pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_EXT}")
}

/// The first sequence number a segment file name carries, if the name is
/// one of ours.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXT)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Creates a segment durably: header written and synced under a temporary
/// name, renamed into place, directory synced. Returns it open for
/// writing.
pub fn create(dir: &Path, header: SegmentHeader) -> Result<(File, PathBuf)> {
    let path = dir.join(file_name(header.first_seq));
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", file_name(header.first_seq)));
    // rename() would silently replace it; a name clash is a bug, not data
    // to throw away.
    if fs::symlink_metadata(&path).is_ok() {
        let e = io::Error::new(io::ErrorKind::AlreadyExists, "segment file already exists");
        return Err(StorageError::io("create", &path, e));
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| StorageError::io("create", &tmp, e))?;
    file.write_all(&header.encode())
        .map_err(|e| StorageError::io_needing("write", &tmp, e, HEADER_LEN as u64))?;
    file.sync_data()
        .map_err(|e| StorageError::io("fdatasync", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| StorageError::io("rename", &tmp, e))?;
    sync_dir(dir)?;
    Ok((file, path))
}

/// Makes creations, renames and unlinks in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(test)]
    SYNCED_DIRS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(dir.to_path_buf());
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

/// Creates `dir` and any missing parents, syncing the parent of each one
/// it creates: a directory entry is only durable once its parent is.
pub fn create_dir_synced(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d);
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            // Another process made it meanwhile: fine, it exists.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StorageError::io("create directory", d, e)),
        }
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => sync_dir(p)?,
            _ => sync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

#[cfg(test)]
static SYNCED_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Every directory synced so far by this test process.
#[cfg(test)]
pub fn synced_dirs() -> Vec<PathBuf> {
    SYNCED_DIRS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Why reading a frame stopped.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// The bytes at `offset` are not a valid frame; the frame they
    /// describe would end at `frame_end` (or past the data).
    Damage {
        offset: u64,
        frame_end: u64,
        error: FrameError,
    },
}

/// Reads the frames of one segment between two offsets, checking each.
/// Knowing where the data ends lets it tell a frame cut short from a read
/// error without reading past the end.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    offset: u64,
    end: u64,
    payload: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// `inner` must be positioned at `start`.
    pub fn new(inner: R, start: u64, end: u64) -> Self {
        FrameReader {
            inner,
            offset: start,
            end,
            payload: Vec::new(),
        }
    }

    /// The next record's payload, or `None` at a clean end.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, ReadError> {
        let available = self.end.saturating_sub(self.offset);
        if available == 0 {
            return Ok(None);
        }
        let damage = |error: FrameError, frame_end: u64| ReadError::Damage {
            offset: self.offset,
            frame_end,
            error,
        };
        if available < FRAME_HEADER_LEN as u64 {
            let e = FrameError::Truncated {
                needed: FRAME_HEADER_LEN as u64,
                available,
            };
            return Err(damage(e, self.offset + FRAME_HEADER_LEN as u64));
        }
        let mut header = [0u8; FRAME_HEADER_LEN];
        self.inner.read_exact(&mut header).map_err(ReadError::Io)?;
        let (len, stored) = format::decode_frame_header(&header);
        let frame_end = self.offset + FRAME_HEADER_LEN as u64 + u64::from(len);
        let total = format::check_frame_len(len, available).map_err(|e| damage(e, frame_end))?;
        self.payload.resize(len as usize, 0);
        self.inner
            .read_exact(&mut self.payload)
            .map_err(ReadError::Io)?;
        format::verify_frame(len, &self.payload, stored).map_err(|e| damage(e, frame_end))?;
        self.offset += total;
        Ok(Some(&self.payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_zero_padded_and_parse_back() {
        assert_eq!(file_name(1), "00000000000000000001.seg");
        assert_eq!(parse_file_name("00000000000000000001.seg"), Some(1));
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        for other in [
            "LOCK",
            "1.seg",
            "00000000000000000001.seg.tmp",
            "00000000000000000001.seg.corrupt-1700000000",
            "0000000000000000000x.seg",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn reader_stops_cleanly_and_reports_damage_with_offsets() {
        let mut buf = Vec::new();
        format::encode_frame(&mut buf, b"first");
        let second_at = buf.len() as u64;
        format::encode_frame(&mut buf, b"second");
        let end = buf.len() as u64;

        let mut r = FrameReader::new(&buf[..], 0, end);
        assert_eq!(r.next_frame().ok().flatten(), Some(&b"first"[..]));
        assert_eq!(r.next_frame().ok().flatten(), Some(&b"second"[..]));
        assert!(matches!(r.next_frame(), Ok(None)));

        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        let mut r = FrameReader::new(&bad[..], 0, end);
        assert!(r.next_frame().is_ok());
        match r.next_frame() {
            Err(ReadError::Damage {
                offset,
                frame_end,
                error: FrameError::BadChecksum { .. },
            }) => {
                assert_eq!(offset, second_at);
                assert_eq!(frame_end, end);
            }
            other => panic!("expected a checksum error, got {other:?}"),
        }

        let mut r = FrameReader::new(&buf[..], 0, end - 1);
        assert!(r.next_frame().is_ok());
        assert!(matches!(
            r.next_frame(),
            Err(ReadError::Damage { offset, error: FrameError::Truncated { .. }, .. }) if offset == second_at
        ));
    }
}
