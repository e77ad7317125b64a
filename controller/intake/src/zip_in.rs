//! Reading a zip upload through its central directory. What an entry is comes from the unix
//! mode in its external attributes when a Unix tool made it (file, folder, symbolic link;
//! anything else is refused, and so are setuid, setgid and sticky bits), otherwise from a
//! trailing `/` in its name (folders 0755, files 0644). Decompressed bytes are counted as
//! they are read, never taken from the sizes the archive declares.

use std::fs::File;
use std::io::{BufReader, Read};

use pifleet_shared::release::MAX_PATH_BYTES;
use zip::result::ZipError;

use super::IntakeError;
use super::collect::Collector;

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// What one zip entry is, from its attributes and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

/// Reads every entry of a zip archive into `c`.
pub(super) fn read(file: File, c: &mut Collector<'_>) -> Result<(), IntakeError> {
    let max_entries = c.limits().max_entries;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(zip_error)?;
    if zip.len() > max_entries {
        return Err(IntakeError::TooManyEntries { max: max_entries });
    }
    if zip.has_duplicate_names() {
        return Err(IntakeError::DuplicateZipName);
    }
    for i in 0..zip.len() {
        let (name, kind, mode) = {
            let meta = zip.by_index_data(i).map_err(zip_error)?;
            let name = match std::str::from_utf8(meta.name_raw()) {
                // Names without the UTF-8 flag may be CP437; the crate decodes them.
                Ok(n) => n.to_owned(),
                Err(_) => meta.name().map_err(zip_error)?.into_owned(),
            };
            if meta.encrypted() {
                return Err(IntakeError::Encrypted(name));
            }
            let (kind, mode) = classify(&name, meta.system(), meta.external_attributes())?;
            (name, kind, mode)
        };
        let mut entry = zip
            .by_index(i)
            .map_err(|e| IntakeError::Corrupt(format!("{name:?}: {e}")))?;
        match kind {
            Kind::Dir => c.dir(&name, mode)?,
            Kind::File => c.file(&name, mode, &mut entry)?,
            Kind::Symlink => {
                let mut target = Vec::new();
                (&mut entry)
                    .take(MAX_PATH_BYTES as u64 + 1)
                    .read_to_end(&mut target)
                    .map_err(|e| IntakeError::Corrupt(format!("{name:?}: {e}")))?;
                let target = String::from_utf8(target)
                    .map_err(|_| IntakeError::NotUtf8(format!("link target of {name}")))?;
                c.symlink(&name, mode, &target)?;
            }
        }
    }
    Ok(())
}

/// The entry's kind and mode bits (permissions and any special bits, for the collector to
/// refuse).
fn classify(name: &str, system: zip::System, attributes: u32) -> Result<(Kind, u32), IntakeError> {
    let unix = attributes >> 16;
    let slash = name.ends_with('/');
    if system != zip::System::Unix || unix == 0 {
        return Ok(if slash {
            (Kind::Dir, 0o755)
        } else {
            (Kind::File, 0o644)
        });
    }
    let mode = unix & 0o7777;
    let kind = match unix & S_IFMT {
        S_IFDIR => Kind::Dir,
        S_IFLNK => Kind::Symlink,
        S_IFREG | 0 if slash => Kind::Dir,
        S_IFREG | 0 => Kind::File,
        other => {
            return Err(IntakeError::UnsupportedType {
                path: name.to_owned(),
                kind: match other {
                    0o020_000 => "character device",
                    0o060_000 => "block device",
                    0o010_000 => "FIFO (named pipe)",
                    0o140_000 => "socket",
                    _ => "zip entry of an unsupported type",
                },
            });
        }
    };
    Ok((kind, mode))
}

fn zip_error(e: ZipError) -> IntakeError {
    IntakeError::Corrupt(e.to_string())
}
