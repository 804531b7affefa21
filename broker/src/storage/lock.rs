//! The exclusive lock on a data directory: two brokers appending to one
//! log would interleave frames and destroy it.
//!
//! `File::try_lock` on `<dir>/LOCK` (`flock(2)` on Linux), taken without
//! blocking. The kernel drops it when the process dies, so a crashed
//! broker never leaves a stale lock behind. The lock belongs to the open
//! file, so a second open in the same process is refused too. The
//! holder's pid is written into the file only to make the refusal message
//! useful.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use super::error::{Result, StorageError};

pub const LOCK_FILE: &str = "LOCK";

/// Held for as long as the log is open; the lock goes with the file when
/// this is dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StorageError::io("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(StorageError::Locked {
                dir: dir.to_path_buf(),
                pid: read_pid(&mut file),
            });
        }
        Err(TryLockError::Error(e)) => return Err(StorageError::io("lock", &path, e)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(|e| StorageError::io("write", &path, e))?;
    Ok(DirLock { _file: file })
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}
