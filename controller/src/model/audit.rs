//! How the audit log is filtered and paged.

/// Which audit entries to list (newest first), as the store takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Entries at or after this time (Unix ms).
    pub since: Option<i64>,
    /// Entries at or before this time (Unix ms).
    pub until: Option<i64>,
    /// Entries with a smaller sequence number.
    pub before: Option<i64>,
    pub limit: i64,
}
