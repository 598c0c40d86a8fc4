//! The spool directory on disk: durable writes (temporary file, fsync, rename, fsync of
//! the directory, as Postfix and Maildir do), entry locks, scans, and the moves between
//! `queue/`, `dead/` and `corrupt/`. Blocking file I/O: async callers run these in
//! `spawn_blocking`. Every operation keeps the invariant the format rests on: an entry
//! exists exactly when its `.json` is in `queue/` (or `dead/`) beside its `.eml`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::entry::{valid_id, Entry, EntryError};

/// Temporary files and half-moved leftovers older than this belong to a process that
/// died: cleaned away (an intake or a CLI write finishes in far less).
const STALE_AFTER: Duration = Duration::from_secs(60);

/// The spool's directories.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub root: PathBuf,
    pub tmp: PathBuf,
    pub queue: PathBuf,
    pub dead: PathBuf,
    pub corrupt: PathBuf,
}

/// Which of the two kept places an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Queue,
    Dead,
}

impl Dirs {
    pub fn new(root: &Path) -> Dirs {
        Dirs {
            root: root.to_path_buf(),
            tmp: root.join("tmp"),
            queue: root.join("queue"),
            dead: root.join("dead"),
            corrupt: root.join("corrupt"),
        }
    }

    /// Creates the directories (0700: messages are private).
    pub fn create(&self) -> io::Result<()> {
        for dir in [
            &self.root,
            &self.tmp,
            &self.queue,
            &self.dead,
            &self.corrupt,
        ] {
            create_private_dir(dir)?;
        }
        Ok(())
    }

    pub fn place(&self, place: Place) -> &Path {
        match place {
            Place::Queue => &self.queue,
            Place::Dead => &self.dead,
        }
    }

    pub fn eml(&self, place: Place, id: &str) -> PathBuf {
        self.place(place).join(format!("{id}.eml"))
    }

    pub fn json(&self, place: Place, id: &str) -> PathBuf {
        self.place(place).join(format!("{id}.json"))
    }

    /// A new temporary file in `tmp/` (0600, created fresh).
    pub fn tmp_file(&self, name: &str) -> io::Result<(PathBuf, File)> {
        let path = self.tmp.join(name);
        let file = private_file(&path)?;
        Ok((path, file))
    }

    /// Makes a received message an entry: the `.eml` already written to `tmp_eml`, the
    /// state beside it. Returns only when both are durable in `queue/`; on error nothing
    /// of it is left behind.
    pub fn commit_new(&self, tmp_eml: &Path, eml: File, entry: &Entry) -> io::Result<()> {
        let result = (|| {
            eml.sync_all()?;
            drop(eml);
            let tmp_json = self.tmp.join(format!("{}.json", entry.id));
            write_synced(&tmp_json, &entry.to_json())?;
            fs::rename(tmp_eml, self.eml(Place::Queue, &entry.id))?;
            // The commit point: the entry exists from this rename on.
            fs::rename(&tmp_json, self.json(Place::Queue, &entry.id))?;
            sync_dir(&self.queue)
        })();
        if result.is_err() {
            let _ = fs::remove_file(tmp_eml);
            let _ = fs::remove_file(self.tmp.join(format!("{}.json", entry.id)));
            let _ = fs::remove_file(self.json(Place::Queue, &entry.id));
            let _ = fs::remove_file(self.eml(Place::Queue, &entry.id));
        }
        result
    }

    /// Replaces an entry's state durably (the `.eml` is never rewritten).
    pub fn write_state(&self, place: Place, entry: &Entry) -> io::Result<()> {
        let tmp = self.tmp.join(format!(
            "{}.json.{}.{}",
            entry.id,
            std::process::id(),
            super::entry::new_id()
        ));
        let result = write_synced(&tmp, &entry.to_json())
            .and_then(|()| fs::rename(&tmp, self.json(place, &entry.id)))
            .and_then(|()| sync_dir(self.place(place)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Removes a delivered entry: the `.json` first (the entry is gone from then on; one
    /// directory fsync makes that durable), then the `.eml`.
    pub fn remove(&self, place: Place, id: &str) -> io::Result<()> {
        fs::remove_file(self.json(place, id))?;
        let _ = fs::remove_file(self.eml(place, id));
        sync_dir(self.place(place))
    }

    /// Moves an entry between `queue/` and `dead/`, writing `entry` as its state. The
    /// `.eml` moves first; [`Dirs::repair`] finishes a move a crash interrupted.
    pub fn move_entry(&self, from: Place, to: Place, entry: &Entry) -> io::Result<()> {
        self.write_state(from, entry)?;
        fs::rename(self.eml(from, &entry.id), self.eml(to, &entry.id))?;
        fs::rename(self.json(from, &entry.id), self.json(to, &entry.id))?;
        sync_dir(self.place(to))?;
        sync_dir(self.place(from))
    }

    /// Sets an unreadable entry aside in `corrupt/` (both files, whatever exists).
    pub fn set_aside(&self, place: Place, id: &str) -> io::Result<()> {
        for path in [self.json(place, id), self.eml(place, id)] {
            if let Some(name) = path.file_name() {
                match fs::rename(&path, self.corrupt.join(name)) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(err),
                }
            }
        }
        sync_dir(&self.corrupt)?;
        sync_dir(self.place(place))
    }

    /// Reads an entry's state.
    pub fn read(&self, place: Place, id: &str) -> Result<Entry, ReadError> {
        let bytes = fs::read(self.json(place, id)).map_err(ReadError::Io)?;
        Entry::parse(&bytes, id).map_err(ReadError::Corrupt)
    }

    /// The ids with a `.json` in `place`, oldest first (ids sort by arrival).
    pub fn ids(&self, place: Place) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for dirent in fs::read_dir(self.place(place))? {
            let name = dirent?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".json") {
                if valid_id(id) {
                    ids.push(id.to_string());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Finishes or undoes what a crash interrupted; run before each scan. Returns the ids
    /// set aside as corrupt (a `.json` whose `.eml` is nowhere).
    pub fn repair(&self) -> io::Result<Vec<String>> {
        let mut set_aside = Vec::new();
        // Temporary files of dead processes: nothing acknowledged was ever only there.
        for dirent in fs::read_dir(&self.tmp)? {
            let dirent = dirent?;
            if is_stale(&dirent.path()) {
                let _ = fs::remove_file(dirent.path());
            }
        }
        for id in self.ids(Place::Queue)? {
            if self.eml(Place::Queue, &id).exists() {
                continue;
            }
            if self.eml(Place::Dead, &id).exists() {
                // A move to dead/ cut between its two renames.
                fs::rename(self.json(Place::Queue, &id), self.json(Place::Dead, &id))?;
                sync_dir(&self.dead)?;
            } else if is_stale(&self.json(Place::Queue, &id)) {
                self.set_aside(Place::Queue, &id)?;
                set_aside.push(id);
            }
        }
        for dirent in fs::read_dir(&self.queue)? {
            let path = dirent?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".eml"))
            else {
                continue;
            };
            if self.json(Place::Queue, id).exists() || !is_stale(&path) {
                continue;
            }
            if self.json(Place::Dead, id).exists() {
                // A requeue cut between its two renames: finish it.
                fs::rename(self.json(Place::Dead, id), self.json(Place::Queue, id))?;
            } else {
                // An intake cut before its commit (never acknowledged), or a removal cut
                // after its commit.
                fs::remove_file(&path)?;
            }
            sync_dir(&self.queue)?;
        }
        Ok(set_aside)
    }

    /// Bytes held by kept entries (queue and dead letters), for `max_bytes`.
    pub fn bytes_used(&self) -> io::Result<u64> {
        let mut total = 0;
        for dir in [&self.queue, &self.dead, &self.tmp] {
            for dirent in fs::read_dir(dir)? {
                if let Ok(metadata) = dirent?.metadata() {
                    total += metadata.len();
                }
            }
        }
        Ok(total)
    }

    /// Takes the entry's lock (on its `.eml`, whose inode never changes while it exists),
    /// without waiting: None while another holder (the worker delivering it, a CLI
    /// command) has it. Held until the returned file is dropped.
    pub fn try_lock(&self, place: Place, id: &str) -> io::Result<Option<File>> {
        let file = File::open(self.eml(place, id))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(err)) => Err(err),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Corrupt(EntryError),
}

fn is_stale(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|age| age > STALE_AFTER)
}

fn private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = private_file(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes the renames and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::spool::entry::{new_id, Entry, RcptState, Recipient, FORMAT_VERSION};

    fn entry(id: &str) -> Entry {
        Entry {
            version: FORMAT_VERSION,
            id: id.to_string(),
            asset: "a".into(),
            user: "u".into(),
            client: "127.0.0.1".into(),
            sender: "s@example.com".into(),
            recipients: vec![Recipient {
                address: "r@example.net".into(),
                state: RcptState::Pending,
                reply: None,
            }],
            arrived_ms: 0,
            size: 3,
            message_id: None,
            eight_bit: false,
            smtputf8: false,
            attempts: 0,
            next_try_ms: 0,
            last_error: None,
            waiting_for_credentials: false,
            sending: false,
            dead_reason: None,
        }
    }

    fn commit(dirs: &Dirs, id: &str) {
        let (path, mut file) = dirs.tmp_file(&format!("{id}.eml")).unwrap();
        file.write_all(b"abc").unwrap();
        dirs.commit_new(&path, file, &entry(id)).unwrap();
    }

    #[test]
    fn commit_move_lock_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(&dir.path().join("spool"));
        dirs.create().unwrap();
        let id = new_id();
        commit(&dirs, &id);
        assert_eq!(dirs.ids(Place::Queue).unwrap(), vec![id.clone()]);
        assert_eq!(fs::read_dir(&dirs.tmp).unwrap().count(), 0);
        assert_eq!(dirs.read(Place::Queue, &id).unwrap().id, id);
        let lock = dirs.try_lock(Place::Queue, &id).unwrap();
        assert!(lock.is_some());
        assert!(dirs.try_lock(Place::Queue, &id).unwrap().is_none());
        drop(lock);
        dirs.move_entry(Place::Queue, Place::Dead, &entry(&id))
            .unwrap();
        assert!(dirs.ids(Place::Queue).unwrap().is_empty());
        assert_eq!(dirs.ids(Place::Dead).unwrap(), vec![id.clone()]);
        dirs.remove(Place::Dead, &id).unwrap();
        assert!(dirs.ids(Place::Dead).unwrap().is_empty());
        assert_eq!(dirs.bytes_used().unwrap(), 0);
    }

    #[test]
    fn repair_finishes_an_interrupted_move_to_dead() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(dir.path());
        dirs.create().unwrap();
        let id = new_id();
        commit(&dirs, &id);
        fs::rename(dirs.eml(Place::Queue, &id), dirs.eml(Place::Dead, &id)).unwrap();
        assert!(dirs.repair().unwrap().is_empty());
        assert_eq!(dirs.ids(Place::Dead).unwrap(), vec![id]);
    }
}
