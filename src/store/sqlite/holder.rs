//! Who holds a SQLite database's write lock, for the log line that tells an administrator
//! which process is keeping the locks waiting (an interactive `sqlite3` with a `BEGIN` left
//! open, a long `UPDATE`).
//!
//! In WAL mode a writer holds a POSIX record lock on byte 120 of the `-shm` file
//! (`WALINDEX_LOCK_OFFSET`, the `WAL_WRITE_LOCK` slot, sqlite3's os_unix.c); `fcntl(F_GETLK)`
//! on that byte names the process holding it. Its command line comes from `/proc` (Linux);
//! elsewhere only the pid is known.

use std::path::Path;

use nix::fcntl::{FcntlArg, fcntl};

/// Byte of the `-shm` file locked by the WAL writer.
const WAL_WRITE_LOCK_BYTE: libc::off_t = 120;

/// The process holding the write lock of the database at `db`: its pid and command line,
/// or `None` if no other process holds it (or it cannot be told).
pub fn write_lock_holder(db: &Path) -> Option<(u32, String)> {
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&shm)
        .ok()?;
    let mut lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: WAL_WRITE_LOCK_BYTE,
        l_len: 1,
        l_pid: 0,
    };
    // F_GETLK asks whether that lock could be taken; if not, `lock` names who holds it.
    fcntl(&file, FcntlArg::F_GETLK(&mut lock)).ok()?;
    if lock.l_type == libc::F_UNLCK as libc::c_short {
        return None;
    }
    let pid = u32::try_from(lock.l_pid).ok().filter(|p| *p != 0)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Some((pid, cmdline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_no_one_when_the_database_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("free.db");
        let store = crate::store::Store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        assert_eq!(write_lock_holder(&path), None);
        store.close().await;
    }
}
