//! Entry paths and link targets: what may stand in a release archive. A path is relative,
//! made of normal components only, and a link's target, resolved from the link's folder,
//! stays inside the release; so unpacking can never write or point outside its directory.

use super::MAX_PATH_BYTES;

/// Why an entry path or link target is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("absolute path")]
    Absolute,
    #[error("path contains '..'")]
    Parent,
    #[error("path has an empty or '.' component")]
    EmptyComponent,
    #[error("path contains a NUL, a control character or a backslash")]
    Character,
    #[error("a path component is longer than 255 bytes")]
    ComponentTooLong,
    #[error("link target leaves the release")]
    Escapes,
}

/// Checks an entry path: relative, `/`-separated, no empty, `.` or `..` component, no
/// control characters or backslashes, at most [`MAX_PATH_BYTES`].
pub fn check_entry_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err(PathError::Character);
    }
    for part in path.split('/') {
        match part {
            ".." => return Err(PathError::Parent),
            "" | "." => return Err(PathError::EmptyComponent),
            p if p.len() > 255 => return Err(PathError::ComponentTooLong),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a symbolic link's target: relative, `..` only as a leading run, and resolved
/// from the folder of the link at `link_path` it never climbs above the release's root
/// (`lib/current -> ../lib-1.2` is fine, `a -> ../../etc` and `a -> b/../..` are not).
///
/// `..` only before any name keeps the lexical and the real resolution the same: a `..`
/// after a name that is itself a link would climb from the link's target, not from the
/// folder the name is in. With no entry below a link ([`super::Manifest::validate`]) the
/// link's folder is a real folder, so its leading `..`s climb real folders, and every name
/// after them is a real entry or a link that stays inside in turn.
pub fn check_link_target(link_path: &str, target: &str) -> Result<(), PathError> {
    if target.is_empty() {
        return Err(PathError::Empty);
    }
    if target.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if target.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if target.chars().any(|c| c.is_control() || c == '\\') {
        return Err(PathError::Character);
    }
    // Depth of the link's folder below the root.
    let mut depth = link_path.split('/').count().saturating_sub(1);
    let mut named = false;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." if named => return Err(PathError::Parent),
            ".." => depth = depth.checked_sub(1).ok_or(PathError::Escapes)?,
            p if p.len() > 255 => return Err(PathError::ComponentTooLong),
            _ => named = true,
        }
    }
    Ok(())
}
