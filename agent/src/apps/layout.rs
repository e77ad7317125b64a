//! An app's directory on the device:
//!
//! ```text
//! <dir>/releases/<release>-<digest8>/    one unpacked release each (Manifest::dir_name)
//! <dir>/releases/.staging-<…>/           a release being unpacked (removed on failure)
//! <dir>/shared/                          kept across releases (data, sockets, config)
//! <dir>/current -> releases/<…>          the live release: a relative symbolic link
//! <dir>/downloads/<release>-<digest8>.tar.gz  an archive being downloaded (resumable)
//! ```
//!
//! The switch makes `current.new -> releases/<dir>` and renames it over `current`, then
//! fsyncs the directory: `current` is always either the old or the new link, never missing
//! or half-written. The newest [`KEEP`] releases stay, so a rollback needs no download.

use std::fs::{self, DirBuilder, File};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Releases kept after a commit (besides the one switched from, which always stays).
pub const KEEP: usize = 3;
const RELEASES: &str = "releases";
const SHARED: &str = "shared";
const DOWNLOADS: &str = "downloads";
const CURRENT: &str = "current";
const CURRENT_NEW: &str = "current.new";
const STAGING_PREFIX: &str = ".staging-";

/// What went wrong with the app directory.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} exists and is not a symbolic link; move it away")]
    CurrentNotALink(PathBuf),
    #[error("{path} points at {target:?}, not at a release in releases/; fix it by hand")]
    UnexpectedCurrent { path: PathBuf, target: PathBuf },
    #[error(
        "{dir}: {free} bytes free, the release needs {need} (archive, unpacked files and the reserve)"
    )]
    NoSpace { dir: PathBuf, need: u64, free: u64 },
    #[error("release {0} is not in releases/")]
    MissingRelease(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The release number of a release directory name (`<release>-<8 hex>`), if it is one.
pub fn release_of(name: &str) -> Option<u64> {
    let (n, digest) = name.split_once('-')?;
    let hex = digest.len() == 8
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let digits = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    if hex && digits { n.parse().ok() } else { None }
}

/// Paths and operations of one app directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn releases(&self) -> PathBuf {
        self.root.join(RELEASES)
    }

    /// `releases/<dir>`.
    pub fn release(&self, dir: &str) -> PathBuf {
        self.releases().join(dir)
    }

    /// Where `dir` is unpacked before it is renamed into place.
    pub fn staging(&self, dir: &str) -> PathBuf {
        self.releases().join(format!("{STAGING_PREFIX}{dir}"))
    }

    pub fn shared(&self) -> PathBuf {
        self.root.join(SHARED)
    }

    pub fn current_link(&self) -> PathBuf {
        self.root.join(CURRENT)
    }

    /// Where the archive of release `dir` is downloaded to, and kept while the download is
    /// incomplete so that a later attempt resumes it.
    pub fn download(&self, dir: &str) -> PathBuf {
        self.root.join(DOWNLOADS).join(format!("{dir}.tar.gz"))
    }

    /// Creates `downloads/` (and the app directory) if missing.
    pub fn ensure_downloads(&self) -> Result<PathBuf, LayoutError> {
        let dir = self.root.join(DOWNLOADS);
        create_dirs(&dir)?;
        Ok(dir)
    }

    /// Creates the app directory, `releases/` and `shared/` if missing. New directories get
    /// mode 0755 whatever the agent's umask, so the app's user can reach its release;
    /// `shared/` is handed to `owner` (uid, gid) when it is created, so the app can write it.
    pub fn ensure(&self, owner: Option<(u32, u32)>) -> Result<(), LayoutError> {
        create_dirs(&self.releases())?;
        let shared = self.shared();
        if create_dirs(&shared)?
            && let Some((uid, gid)) = owner
        {
            use nix::unistd::{Gid, Uid, chown};
            chown(&shared, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| io(&shared)(e.into()))?;
        }
        Ok(())
    }

    /// The release directory `current` points at; `None` when there is no `current`.
    pub fn current(&self) -> Result<Option<String>, LayoutError> {
        let link = self.current_link();
        let target = match fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                return Err(LayoutError::CurrentNotALink(link));
            }
            Err(e) => return Err(io(&link)(e)),
        };
        let name = target
            .strip_prefix(RELEASES)
            .ok()
            .and_then(|rest| rest.to_str())
            .filter(|n| release_of(n).is_some());
        match name {
            Some(n) => Ok(Some(n.to_owned())),
            None => Err(LayoutError::UnexpectedCurrent { path: link, target }),
        }
    }

    pub fn has_release(&self, dir: &str) -> bool {
        fs::symlink_metadata(self.release(dir)).is_ok_and(|m| m.is_dir())
    }

    /// Points `current` at `releases/<dir>` in one rename, then makes it durable.
    pub fn switch(&self, dir: &str) -> Result<(), LayoutError> {
        if !self.has_release(dir) {
            return Err(LayoutError::MissingRelease(dir.to_owned()));
        }
        let tmp = self.root.join(CURRENT_NEW);
        remove_file(&tmp)?;
        std::os::unix::fs::symlink(Path::new(RELEASES).join(dir), &tmp).map_err(io(&tmp))?;
        let link = self.current_link();
        if let Err(e) = fs::rename(&tmp, &link) {
            let _ = fs::remove_file(&tmp);
            return Err(match fs::symlink_metadata(&link) {
                Ok(m) if !m.file_type().is_symlink() => LayoutError::CurrentNotALink(link),
                _ => io(&link)(e),
            });
        }
        sync_dir(&self.root).map_err(io(&self.root))
    }

    /// Removes `current` (a first install that failed leaves no live release), durably.
    pub fn clear_current(&self) -> Result<(), LayoutError> {
        if self.current()?.is_some() {
            remove_file(&self.current_link())?;
            sync_dir(&self.root).map_err(io(&self.root))?;
        }
        Ok(())
    }

    /// Removes `releases/<dir>` if it is there.
    pub fn remove_release(&self, dir: &str) -> Result<(), LayoutError> {
        let path = self.release(dir);
        remove_tree(&path).map_err(io(&path))?;
        sync_dir(&self.releases()).map_err(io(&self.releases()))
    }

    /// Removes what an interrupted apply may leave: staging directories and `current.new`.
    /// Returns the staging directories removed.
    pub fn clean_leftovers(&self) -> Result<Vec<String>, LayoutError> {
        remove_file(&self.root.join(CURRENT_NEW))?;
        let mut removed = Vec::new();
        for name in self.list_releases_dir()? {
            if name.starts_with(STAGING_PREFIX) {
                let path = self.releases().join(&name);
                remove_tree(&path).map_err(io(&path))?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Keeps the `keep` newest releases and every one in `protect`; removes the others.
    /// Returns the releases removed.
    pub fn prune(&self, keep: usize, protect: &[&str]) -> Result<Vec<String>, LayoutError> {
        let mut releases = numbered(self.list_releases_dir()?);
        releases.sort_unstable_by(|a, b| b.cmp(a));
        let mut removed = Vec::new();
        for (_, name) in releases.into_iter().skip(keep) {
            if !protect.contains(&name.as_str()) {
                self.remove_release(&name)?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// The releases in `releases/` (number and directory name), in no order; none when the
    /// directory cannot be read.
    pub fn kept(&self) -> Vec<(u64, String)> {
        numbered(self.list_releases_dir().unwrap_or_default())
    }

    /// Fails unless the app's file system has `need` bytes available to the agent.
    pub fn check_space(&self, need: u64) -> Result<(), LayoutError> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(|e| io(&self.root)(e.into()))?;
        // Both are `unsigned long`-sized aliases: 32 bits on 32-bit Pis, 64 elsewhere.
        let free = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
        if free < need {
            return Err(LayoutError::NoSpace {
                dir: self.root.clone(),
                need,
                free,
            });
        }
        Ok(())
    }

    fn list_releases_dir(&self) -> Result<Vec<String>, LayoutError> {
        let dir = self.releases();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
}

/// The release directories among `names`, with their numbers.
fn numbered(names: Vec<String>) -> Vec<(u64, String)> {
    names
        .into_iter()
        .filter_map(|n| release_of(&n).map(|r| (r, n)))
        .collect()
}

/// Creates `dir` and its missing parents with mode 0755; returns whether `dir` was created.
fn create_dirs(dir: &Path) -> Result<bool, LayoutError> {
    if dir.is_dir() {
        return Ok(false);
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    match DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => return Ok(false),
        Err(e) => return Err(io(dir)(e)),
    }
    // The umask may have taken bits away.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io(dir))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent).map_err(io(parent))?;
    }
    Ok(true)
}

fn remove_file(path: &Path) -> Result<(), LayoutError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

/// Makes a directory's entries durable (its new, renamed and removed names).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes `path` and everything below it without following links. Directories are made
/// writable first: a release may hold read-only directories the agent could not empty.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    if meta.permissions().mode() & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    }
    for entry in fs::read_dir(path)? {
        remove_tree(&entry?.path())?;
    }
    fs::remove_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> (tempfile::TempDir, Layout) {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(&tmp.path().join("apps/web"));
        l.ensure(None).unwrap();
        (tmp, l)
    }

    #[test]
    fn release_names() {
        assert_eq!(release_of("12-0a1b2c3d"), Some(12));
        for bad in [
            "12-0A1B2C3D",
            "12-0a1b2c3",
            "-0a1b2c3d",
            "x-0a1b2c3d",
            ".staging-1-0a1b2c3d",
        ] {
            assert_eq!(release_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn ensure_makes_reachable_directories() {
        let (_tmp, l) = layout();
        for d in [l.root().to_owned(), l.releases(), l.shared()] {
            let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o755, "{}", d.display());
        }
        l.ensure(None).unwrap();
    }

    #[test]
    fn switch_replaces_the_link_and_current_reads_it() {
        let (_tmp, l) = layout();
        assert_eq!(l.current().unwrap(), None);
        assert!(matches!(
            l.switch("1-aaaaaaaa"),
            Err(LayoutError::MissingRelease(_))
        ));
        for d in ["1-aaaaaaaa", "2-bbbbbbbb"] {
            fs::create_dir(l.release(d)).unwrap();
            fs::write(l.release(d).join("v"), d).unwrap();
        }
        l.switch("1-aaaaaaaa").unwrap();
        assert_eq!(l.current().unwrap().as_deref(), Some("1-aaaaaaaa"));
        // A stale current.new from a crash is replaced.
        std::os::unix::fs::symlink("elsewhere", l.root().join(CURRENT_NEW)).unwrap();
        l.switch("2-bbbbbbbb").unwrap();
        assert_eq!(
            fs::read_link(l.current_link()).unwrap(),
            Path::new("releases/2-bbbbbbbb")
        );
        assert_eq!(
            fs::read_to_string(l.current_link().join("v")).unwrap(),
            "2-bbbbbbbb"
        );
        assert!(!l.root().join(CURRENT_NEW).exists());
        l.clear_current().unwrap();
        assert_eq!(l.current().unwrap(), None);
    }

    #[test]
    fn odd_current_is_an_error() {
        let (_tmp, l) = layout();
        std::os::unix::fs::symlink("/etc", l.current_link()).unwrap();
        assert!(matches!(
            l.current(),
            Err(LayoutError::UnexpectedCurrent { .. })
        ));
        fs::remove_file(l.current_link()).unwrap();
        fs::create_dir(l.current_link()).unwrap();
        assert!(matches!(l.current(), Err(LayoutError::CurrentNotALink(_))));
        fs::create_dir(l.release("1-aaaaaaaa")).unwrap();
        assert!(matches!(
            l.switch("1-aaaaaaaa"),
            Err(LayoutError::CurrentNotALink(_))
        ));
    }

    #[test]
    fn prune_keeps_the_newest_and_the_protected() {
        let (_tmp, l) = layout();
        for r in 1..=6 {
            fs::create_dir(l.release(&format!("{r}-0000000{r}"))).unwrap();
        }
        fs::create_dir(l.staging("7-00000007")).unwrap();
        let removed = l.prune(3, &["1-00000001"]).unwrap();
        assert_eq!(removed, ["3-00000003", "2-00000002"]);
        let mut left: Vec<String> = l.list_releases_dir().unwrap();
        left.sort();
        assert_eq!(
            left,
            [
                ".staging-7-00000007",
                "1-00000001",
                "4-00000004",
                "5-00000005",
                "6-00000006"
            ]
        );
        assert_eq!(l.clean_leftovers().unwrap(), [".staging-7-00000007"]);
    }

    #[test]
    fn remove_tree_copes_with_read_only_directories_and_links() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"keep").unwrap();
        let root = tmp.path().join("r");
        fs::create_dir_all(root.join("ro/inner")).unwrap();
        fs::write(root.join("ro/inner/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("ro/link")).unwrap();
        fs::set_permissions(root.join("ro/inner"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert_eq!(fs::read(&outside).unwrap(), b"keep");
        remove_tree(&root).unwrap();
    }

    #[test]
    fn space_check_reports_what_is_missing() {
        let (_tmp, l) = layout();
        l.check_space(1).unwrap();
        let e = l.check_space(u64::MAX).unwrap_err();
        assert!(
            matches!(e, LayoutError::NoSpace { need: u64::MAX, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("needs"), "{e}");
    }
}
