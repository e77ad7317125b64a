//! Entries as they come out of an archive, in whatever order: each path normalised and
//! checked at once, file contents spooled to one anonymous temp file (gone even after a
//! crash) while hashed and counted against the unpacked limit; then the whole set is
//! checked (duplicates, nothing below a link, no file used as a folder), completed with
//! the folders the archive only implies, sorted, and written out canonically.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use pifleet_shared::release::{
    Entry, EntryKind, MAX_MANIFEST_BYTES, MODE_MASK, check_entry_path, check_link_target,
};
use sha2::{Digest as _, Sha256};

use super::{IntakeError, Limits, Packed, canonical};

/// Mode of a folder the archive implies but does not list.
pub(super) const IMPLICIT_DIR_MODE: u32 = 0o755;
/// Per-entry share of the manifest besides its path and target (mode, kind, size, digest,
/// postcard framing), for bounding the manifest while entries arrive.
const ENTRY_OVERHEAD: usize = 64;

/// One accepted entry and, for a file, where its bytes are in the spool.
#[derive(Debug)]
pub(super) struct Item {
    pub entry: Entry,
    pub data: Option<(u64, u64)>,
}

/// Collects the entries of one archive.
#[derive(Debug)]
pub(super) struct Collector<'a> {
    limits: &'a Limits,
    spool: BufWriter<File>,
    spooled: u64,
    items: Vec<Item>,
    unpacked: u64,
    manifest_bytes: usize,
    out_dir: &'a Path,
    buf: Vec<u8>,
}

impl<'a> Collector<'a> {
    pub fn new(limits: &'a Limits, out_dir: &'a Path) -> Result<Self, IntakeError> {
        let spool = tempfile::tempfile_in(out_dir).map_err(IntakeError::io(out_dir))?;
        Ok(Self {
            limits,
            spool: BufWriter::with_capacity(256 * 1024, spool),
            spooled: 0,
            items: Vec::new(),
            unpacked: 0,
            manifest_bytes: 0,
            out_dir,
            buf: vec![0u8; 64 * 1024],
        })
    }

    pub fn limits(&self) -> &'a Limits {
        self.limits
    }

    /// A regular file: its bytes are read from `data` (to its end), counted and hashed.
    pub fn file(
        &mut self,
        raw_path: &str,
        mode: u32,
        data: &mut dyn Read,
    ) -> Result<(), IntakeError> {
        let path = self.admit(raw_path, mode, false, 0)?;
        let start = self.spooled;
        let mut hasher = Sha256::new();
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(IntakeError::Corrupt(format!("{path:?}: {e}"))),
            };
            self.unpacked += n as u64;
            if self.unpacked > self.limits.max_unpacked_bytes {
                return Err(IntakeError::UnpackedTooLarge {
                    max: self.limits.max_unpacked_bytes,
                });
            }
            hasher.update(&self.buf[..n]);
            self.spool
                .write_all(&self.buf[..n])
                .map_err(IntakeError::io(self.out_dir))?;
            self.spooled += n as u64;
        }
        let size = self.spooled - start;
        self.items.push(Item {
            entry: Entry {
                path,
                mode: mode & MODE_MASK,
                kind: EntryKind::File {
                    size,
                    sha256: hasher.finalize().into(),
                },
            },
            data: Some((start, size)),
        });
        Ok(())
    }

    /// A folder. The release's root itself (`.`, `./`) is skipped: it always exists.
    pub fn dir(&mut self, raw_path: &str, mode: u32) -> Result<(), IntakeError> {
        if normalise(raw_path, true).is_empty() {
            return Ok(());
        }
        let path = self.admit(raw_path, mode, true, 0)?;
        self.items.push(Item {
            entry: Entry {
                path,
                mode: mode & MODE_MASK,
                kind: EntryKind::Dir,
            },
            data: None,
        });
        Ok(())
    }

    /// A symbolic link, whose target must stay inside the release. The target is kept with
    /// empty and `.` components dropped, as the archive writer would store it.
    pub fn symlink(&mut self, raw_path: &str, mode: u32, target: &str) -> Result<(), IntakeError> {
        let path = self.admit(raw_path, mode, false, target.len())?;
        check_link_target(&path, target).map_err(|error| IntakeError::LinkEscapes {
            path: path.clone(),
            target: target.to_owned(),
            error,
        })?;
        let parts: Vec<&str> = target
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        let target = if parts.is_empty() {
            ".".to_owned()
        } else {
            parts.join("/")
        };
        self.items.push(Item {
            entry: Entry {
                path,
                mode: mode & MODE_MASK,
                kind: EntryKind::Symlink { target },
            },
            data: None,
        });
        Ok(())
    }

    /// The checks every entry passes before its data is read: count, path, mode bits and
    /// the manifest's size. Returns the normalised path.
    fn admit(
        &mut self,
        raw_path: &str,
        mode: u32,
        is_dir: bool,
        extra: usize,
    ) -> Result<String, IntakeError> {
        if self.items.len() >= self.limits.max_entries {
            return Err(IntakeError::TooManyEntries {
                max: self.limits.max_entries,
            });
        }
        let path = normalise(raw_path, is_dir);
        check_entry_path(path).map_err(|error| IntakeError::UnsafePath {
            path: raw_path.to_owned(),
            error,
        })?;
        if mode & 0o7000 != 0 {
            return Err(IntakeError::SpecialBits {
                path: raw_path.to_owned(),
                mode: mode & 0o7777,
            });
        }
        self.manifest_bytes += path.len() + extra + ENTRY_OVERHEAD;
        if self.manifest_bytes > MAX_MANIFEST_BYTES - 64 * 1024 {
            return Err(IntakeError::ManifestTooLarge);
        }
        Ok(path.to_owned())
    }

    /// Checks the entries as a whole, adds implicit folders, sorts, and writes the
    /// canonical archive to a temp file in `out_dir`.
    pub fn finish(mut self) -> Result<Packed, IntakeError> {
        let out_dir = self.out_dir;
        if self.items.is_empty() {
            return Err(IntakeError::Empty);
        }
        self.items.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
        if let Some(w) = self
            .items
            .windows(2)
            .find(|w| w[0].entry.path == w[1].entry.path)
        {
            return Err(IntakeError::Duplicate(w[0].entry.path.clone()));
        }
        let implied = self.check_ancestors()?;
        if !implied.is_empty() {
            if self.items.len() + implied.len() > self.limits.max_entries {
                return Err(IntakeError::TooManyEntries {
                    max: self.limits.max_entries,
                });
            }
            self.items.extend(implied.into_iter().map(|path| Item {
                entry: Entry {
                    path,
                    mode: IMPLICIT_DIR_MODE,
                    kind: EntryKind::Dir,
                },
                data: None,
            }));
            self.items.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
        }
        let mut spool = self
            .spool
            .into_inner()
            .map_err(|e| IntakeError::io(out_dir)(e.into_error()))?;
        spool
            .seek(SeekFrom::Start(0))
            .map_err(IntakeError::io(out_dir))?;
        let (archive, archive_sha256, archive_size) =
            canonical::write(&self.items, &mut spool, out_dir)?;
        Ok(Packed {
            archive,
            archive_sha256,
            archive_size,
            unpacked_size: self.unpacked,
            entries: self.items.into_iter().map(|i| i.entry).collect(),
        })
    }

    /// Every entry's folders must be folders: not links (nothing is unpacked through a
    /// link) and not files. Returns the folders no entry lists, sorted.
    fn check_ancestors(&self) -> Result<Vec<String>, IntakeError> {
        let find = |p: &str| {
            self.items
                .binary_search_by(|i| i.entry.path.as_str().cmp(p))
                .ok()
                .map(|i| &self.items[i].entry.kind)
        };
        let mut implied = std::collections::BTreeSet::new();
        for item in &self.items {
            let path = &item.entry.path;
            for (i, _) in path.match_indices('/') {
                let parent = &path[..i];
                match find(parent) {
                    Some(EntryKind::Dir) => {}
                    Some(EntryKind::Symlink { .. }) => {
                        return Err(IntakeError::BelowSymlink {
                            path: path.clone(),
                            link: parent.to_owned(),
                        });
                    }
                    Some(EntryKind::File { .. }) => {
                        return Err(IntakeError::NotADirectory {
                            path: path.clone(),
                            parent: parent.to_owned(),
                        });
                    }
                    None => {
                        implied.insert(parent.to_owned());
                    }
                }
            }
        }
        Ok(implied.into_iter().collect())
    }
}

/// Drops the leading `./` archives often carry and, for a folder, its trailing `/`.
pub(super) fn normalise(raw: &str, is_dir: bool) -> &str {
    let mut p = raw;
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    if is_dir {
        p = p.strip_suffix('/').unwrap_or(p);
        if p == "." {
            p = "";
        }
    }
    p
}
