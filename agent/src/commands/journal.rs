//! The persistent journal of accepted commands and the trusted time floor.
//!
//! One append-only text file, `<state_dir>/journal`, one record per line, each ending with the
//! CRC-32 of the record so a torn or damaged line is recognised and skipped:
//!
//! ```text
//! T <floor_ms> <crc>                         trusted time floor (written by compaction)
//! A <id> <issued_at_ms> <expires_at_ms> <crc> command accepted (before it runs)
//! F <id> <crc>                               its final receipt was handed to MQTT
//! B <id> <crc>                               it is a reboot that is being carried out
//! ```
//!
//! Every record is appended and `fdatasync`ed before the agent acts on it (commands are rare,
//! so the cost is one sync per command). The floor is the newest verified `issued_at_ms`; the
//! agent's notion of "now" is `max(local clock, floor)`, so a Pi without a real-time clock that
//! boots in 1970 still refuses expired commands.
//!
//! An id stays in the journal until its command has expired *by the floor*: the local clock
//! may be wrong (forward or back), but the floor only rises and "now" is never below it, so a
//! dropped id can never be replayed as unexpired. Compaction happens on open.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use pifleet_io::{FileError, create_private_dir, write_private};
use pifleet_shared::command::{CommandId, Envelope};

const FILE_NAME: &str = "journal";

/// Journal errors, with the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Files(#[from] FileError),
}

/// What the journal knows about one accepted command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    /// Its final receipt was handed to the MQTT client.
    pub finished: bool,
    /// It is a reboot the agent went on to carry out.
    pub reboot: bool,
}

/// The open journal. Every method that writes syncs before it returns.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    entries: HashMap<CommandId, Entry>,
    floor_ms: i64,
}

/// A record, as it appears on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Floor(i64),
    Accepted {
        id: CommandId,
        issued_at_ms: i64,
        expires_at_ms: i64,
    },
    Finished(CommandId),
    Reboot(CommandId),
}

impl Record {
    fn body(&self) -> String {
        match self {
            Self::Floor(t) => format!("T {t}"),
            Self::Accepted {
                id,
                issued_at_ms,
                expires_at_ms,
            } => format!("A {id} {issued_at_ms} {expires_at_ms}"),
            Self::Finished(id) => format!("F {id}"),
            Self::Reboot(id) => format!("B {id}"),
        }
    }

    fn line(&self) -> String {
        let body = self.body();
        format!("{body} {:08x}\n", crc32fast::hash(body.as_bytes()))
    }

    /// Parses one complete line (without its newline); `None` if damaged.
    fn parse(line: &str) -> Option<Self> {
        let (body, crc) = line.rsplit_once(' ')?;
        if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) {
            return None;
        }
        let mut f = body.split(' ');
        let rec = match (f.next()?, f.next()?) {
            ("T", t) => Self::Floor(t.parse().ok()?),
            ("A", id) => Self::Accepted {
                id: CommandId::parse(id)?,
                issued_at_ms: f.next()?.parse().ok()?,
                expires_at_ms: f.next()?.parse().ok()?,
            },
            ("F", id) => Self::Finished(CommandId::parse(id)?),
            ("B", id) => Self::Reboot(CommandId::parse(id)?),
            _ => return None,
        };
        f.next().is_none().then_some(rec)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir` (made 0700), dropping entries expired by the
    /// floor and any torn or damaged line.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        create_private_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let mut text = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut text).map_err(io_err(&path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        let mut entries = HashMap::new();
        let mut floor_ms = 0i64;
        let mut damaged = 0usize;
        let mut records = 0usize;
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let torn = complete < text.len();
        for line in text[..complete].split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let Some(rec) = std::str::from_utf8(line).ok().and_then(Record::parse) else {
                damaged += 1;
                continue;
            };
            records += 1;
            apply(&mut entries, &mut floor_ms, rec);
        }
        if damaged > 0 || torn {
            tracing::warn!(path = %path.display(), damaged, torn, "command journal: damaged lines skipped");
        }
        let before = entries.len();
        entries.retain(|_, e: &mut Entry| e.expires_at_ms > floor_ms);
        let live_records = 1 + entries
            .values()
            .map(|e| 1 + usize::from(e.finished) + usize::from(e.reboot))
            .sum::<usize>();
        let file = if damaged > 0 || torn || entries.len() != before || records != live_records {
            rewrite(&path, &entries, floor_ms)?
        } else {
            open_append(&path)?
        };
        Ok(Self {
            path,
            file,
            entries,
            floor_ms,
        })
    }

    /// Was this id accepted before (and not yet expired by the floor)?
    pub fn contains(&self, id: &CommandId) -> bool {
        self.entries.contains_key(id)
    }

    /// The newest verified controller time, Unix ms (0 before the first command).
    pub fn floor_ms(&self) -> i64 {
        self.floor_ms
    }

    /// The time commands are checked against: `max(clock, floor)`.
    pub fn now_ms(&self, clock_ms: i64) -> i64 {
        clock_ms.max(self.floor_ms)
    }

    pub fn get(&self, id: &CommandId) -> Option<Entry> {
        self.entries.get(id).copied()
    }

    /// Records a verified command as accepted (synced) and raises the floor to its issue time.
    /// Only after this returns may the command run.
    pub fn accept(&mut self, env: &Envelope) -> Result<(), JournalError> {
        self.append(&Record::Accepted {
            id: env.id,
            issued_at_ms: env.issued_at_ms,
            expires_at_ms: env.expires_at_ms,
        })?;
        apply(
            &mut self.entries,
            &mut self.floor_ms,
            Record::Accepted {
                id: env.id,
                issued_at_ms: env.issued_at_ms,
                expires_at_ms: env.expires_at_ms,
            },
        );
        Ok(())
    }

    /// Records that the final receipt of `id` was handed to the MQTT client.
    pub fn mark_finished(&mut self, id: CommandId) -> Result<(), JournalError> {
        match self.entries.get(&id) {
            Some(e) if !e.finished => {}
            _ => return Ok(()),
        }
        self.append(&Record::Finished(id))?;
        apply(&mut self.entries, &mut self.floor_ms, Record::Finished(id));
        Ok(())
    }

    /// Records that the reboot `id` is about to be carried out.
    pub fn mark_reboot(&mut self, id: CommandId) -> Result<(), JournalError> {
        match self.entries.get(&id) {
            Some(e) if !e.reboot => {}
            _ => return Ok(()),
        }
        self.append(&Record::Reboot(id))?;
        apply(&mut self.entries, &mut self.floor_ms, Record::Reboot(id));
        Ok(())
    }

    /// Accepted commands with no final receipt sent that have not expired at `now_ms`,
    /// oldest first: after a restart they are reported once and never run again.
    pub fn unfinished(&self, now_ms: i64) -> Vec<(CommandId, Entry)> {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.finished && e.expires_at_ms > now_ms)
            .map(|(id, e)| (*id, *e))
            .collect();
        v.sort_by_key(|(id, e)| (e.issued_at_ms, *id));
        v
    }

    fn append(&mut self, rec: &Record) -> Result<(), JournalError> {
        self.file
            .write_all(rec.line().as_bytes())
            .map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))
    }
}

fn apply(entries: &mut HashMap<CommandId, Entry>, floor_ms: &mut i64, rec: Record) {
    match rec {
        Record::Floor(t) => *floor_ms = (*floor_ms).max(t),
        Record::Accepted {
            id,
            issued_at_ms,
            expires_at_ms,
        } => {
            *floor_ms = (*floor_ms).max(issued_at_ms);
            entries.entry(id).or_insert(Entry {
                issued_at_ms,
                expires_at_ms,
                finished: false,
                reboot: false,
            });
        }
        Record::Finished(id) => {
            if let Some(e) = entries.get_mut(&id) {
                e.finished = true;
            }
        }
        Record::Reboot(id) => {
            if let Some(e) = entries.get_mut(&id) {
                e.reboot = true;
            }
        }
    }
}

fn open_append(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))
}

/// Writes the live state to a new file (temp, sync, rename, sync the folder) and opens it.
fn rewrite(
    path: &Path,
    entries: &HashMap<CommandId, Entry>,
    floor_ms: i64,
) -> Result<File, JournalError> {
    let mut ids: Vec<_> = entries.iter().collect();
    ids.sort_by_key(|(id, e)| (e.issued_at_ms, **id));
    let mut out = Record::Floor(floor_ms).line();
    for (id, e) in ids {
        out.push_str(
            &Record::Accepted {
                id: *id,
                issued_at_ms: e.issued_at_ms,
                expires_at_ms: e.expires_at_ms,
            }
            .line(),
        );
        if e.finished {
            out.push_str(&Record::Finished(*id).line());
        }
        if e.reboot {
            out.push_str(&Record::Reboot(*id).line());
        }
    }
    write_private(path, out.as_bytes())?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    open_append(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pifleet_shared::command::{Action, KeyId};

    fn env(n: u8, issued: i64, expires: i64) -> Envelope {
        Envelope {
            id: CommandId([n; 16]),
            device: "pi-01".into(),
            issued_at_ms: issued,
            expires_at_ms: expires,
            key_id: KeyId([0; 8]),
            action: Action::Ping,
        }
    }

    fn text(dir: &Path) -> String {
        std::fs::read_to_string(dir.join(FILE_NAME)).unwrap()
    }

    #[test]
    fn accepted_ids_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        assert!(!j.contains(&CommandId([1; 16])));
        j.accept(&env(1, 1_000, 60_000)).unwrap();
        assert!(j.contains(&CommandId([1; 16])));
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert!(j.contains(&CommandId([1; 16])));
        assert!(!j.contains(&CommandId([2; 16])));
        assert_eq!(j.floor_ms(), 1_000);
    }

    #[test]
    fn entries_expired_by_the_floor_are_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.accept(&env(1, 1_000, 5_000)).unwrap();
        j.mark_finished(CommandId([1; 16])).unwrap();
        j.accept(&env(2, 2_000, 50_000)).unwrap();
        // Issued after command 1 expired: the floor passes its expiry.
        j.accept(&env(3, 6_000, 60_000)).unwrap();
        assert!(j.contains(&CommandId([1; 16])), "dropped only on open");
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert!(!j.contains(&CommandId([1; 16])));
        assert!(j.contains(&CommandId([2; 16])) && j.contains(&CommandId([3; 16])));
        assert_eq!(j.floor_ms(), 6_000);
        let t = text(dir.path());
        assert!(!t.contains(&CommandId([1; 16]).to_string()), "{t}");
        assert!(t.starts_with("T 6000 "), "{t}");
        // A clean journal is not rewritten again.
        drop(j);
        let _ = Journal::open(dir.path()).unwrap();
        assert_eq!(text(dir.path()), t);
    }

    #[test]
    fn the_local_clock_never_expires_entries() {
        // A clock far ahead must not drop ids: on the next boot it may be back in 1970.
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.accept(&env(1, 1_000, 5_000)).unwrap();
        assert_eq!(j.now_ms(i64::MAX / 2), i64::MAX / 2);
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert!(j.contains(&CommandId([1; 16])));
        assert_eq!(j.now_ms(0), 1_000);
    }

    #[test]
    fn floor_persists_and_only_increases() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.floor_ms(), 0);
        j.accept(&env(1, 9_000, 90_000)).unwrap();
        j.accept(&env(2, 4_000, 90_000)).unwrap();
        assert_eq!(j.floor_ms(), 9_000);
        assert_eq!(j.now_ms(100), 9_000);
        assert_eq!(j.now_ms(20_000), 20_000);
        drop(j);
        let mut j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.floor_ms(), 9_000);
        // Survives compaction even when every entry is gone.
        j.accept(&env(3, 100_000, 100_001)).unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.floor_ms(), 100_000);
        assert!(!j.contains(&CommandId([1; 16])));
        drop(j);
        assert_eq!(Journal::open(dir.path()).unwrap().floor_ms(), 100_000);
    }

    #[test]
    fn unfinished_commands_are_listed_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.accept(&env(1, 1_000, 60_000)).unwrap();
        j.accept(&env(2, 2_000, 60_000)).unwrap();
        j.accept(&env(3, 3_000, 60_000)).unwrap();
        j.accept(&env(4, 4_000, 10_000)).unwrap();
        j.mark_finished(CommandId([2; 16])).unwrap();
        j.mark_reboot(CommandId([3; 16])).unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        let ids: Vec<_> = j
            .unfinished(5_000)
            .into_iter()
            .map(|(id, e)| (id.0[0], e.reboot))
            .collect();
        assert_eq!(ids, vec![(1, false), (3, true), (4, false)]);
        // Expired ones are not reported.
        let ids: Vec<_> = j
            .unfinished(20_000)
            .into_iter()
            .map(|(id, _)| id.0[0])
            .collect();
        assert_eq!(ids, vec![1, 3]);
        assert!(j.get(&CommandId([2; 16])).unwrap().finished);
    }

    #[test]
    fn torn_and_damaged_lines_are_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.accept(&env(1, 1_000, 60_000)).unwrap();
        drop(j);
        let path = dir.path().join(FILE_NAME);
        let good = text(dir.path());
        // A torn append (power loss mid-write), then a line with a bad checksum.
        let torn = Record::Accepted {
            id: CommandId([2; 16]),
            issued_at_ms: 2_000,
            expires_at_ms: 70_000,
        }
        .line();
        let bad = format!("{good}F {} 00000000\n{}", CommandId([1; 16]), &torn[..20]);
        std::fs::write(&path, bad).unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        assert!(j.contains(&CommandId([1; 16])));
        assert!(!j.contains(&CommandId([2; 16])));
        assert!(!j.get(&CommandId([1; 16])).unwrap().finished);
        // The next append starts on a fresh line, not glued to the torn one.
        j.accept(&env(5, 3_000, 60_000)).unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert!(j.contains(&CommandId([5; 16])) && j.contains(&CommandId([1; 16])));
        assert_eq!(j.floor_ms(), 3_000);
    }

    #[test]
    fn record_lines_roundtrip_and_reject_damage() {
        let recs = [
            Record::Floor(-5),
            Record::Accepted {
                id: CommandId([0xab; 16]),
                issued_at_ms: 1,
                expires_at_ms: 2,
            },
            Record::Finished(CommandId([1; 16])),
            Record::Reboot(CommandId([2; 16])),
        ];
        for r in recs {
            let line = r.line();
            assert_eq!(Record::parse(line.trim_end_matches('\n')), Some(r.clone()));
            let flipped = line.replacen('1', "2", 1);
            if flipped != line {
                assert_eq!(
                    Record::parse(flipped.trim_end_matches('\n')),
                    None,
                    "{flipped}"
                );
            }
        }
        assert_eq!(Record::parse(""), None);
        assert_eq!(Record::parse("X 1 2"), None);
    }
}
