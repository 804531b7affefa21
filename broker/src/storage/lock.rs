//! The exclusive lock on a data directory: two brokers appending to one
//! log would interleave frames and destroy it.
//!
//! `flock(2)` on `<dir>/LOCK`, taken without blocking. The kernel drops it
//! when the process dies, so a crashed broker never leaves a stale lock.
//! The lock belongs to the open file, so a second open in the same process
//! is refused too. (nix's `Flock` rather than `File::try_lock`, which is
//! newer than the workspace's `rust-version`.) The holder's pid is written
//! into the file only to make the refusal message useful.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::error::{Result, StorageError};

pub const LOCK_FILE: &str = "LOCK";

/// Held for as long as the log is open; unlocks on drop.
#[derive(Debug)]
pub struct DirLock {
    _lock: Flock<File>,
}

pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StorageError::io("open", &path, e))?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, errno)) if errno == Errno::EWOULDBLOCK => {
            return Err(StorageError::Locked {
                dir: dir.to_path_buf(),
                pid: read_pid(&mut file),
            });
        }
        Err((_, errno)) => return Err(StorageError::io("lock", &path, errno.into())),
    };
    write_pid(&lock, &path)?;
    Ok(DirLock { _lock: lock })
}

fn write_pid(mut file: &File, path: &Path) -> Result<()> {
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(|e| StorageError::io("write", path, e))
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}
