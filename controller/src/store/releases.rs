//! SQL for releases: numbering, insertion, listing, lookup and deletion. Creating or
//! deleting a release happens inside one write transaction ([`ReleaseTx`]) that the caller
//! keeps open while it writes or removes the release's files, so the number, the row and
//! the files change together, across processes too.

use std::collections::HashSet;

use pifleet_shared::release::HealthSpec;
use serde::Serialize;
use sqlx::Row;
use sqlx::{ColumnIndex, Decode, Type};

use super::db::Tx;
use super::{Store, StoreError, sql_int};

/// Where a release's content came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReleaseSource {
    /// An uploaded archive, with the file name the operator gave, if any.
    Upload { file_name: Option<String> },
    /// A git commit (the URL without credentials, the full SHA).
    Git { url: String, rev: String },
}

/// A release to record; its number comes from [`ReleaseTx::take_number`].
#[derive(Debug, Clone)]
pub struct NewReleaseRow {
    pub app: String,
    pub release: u64,
    pub version: String,
    pub archive_sha256: String,
    pub archive_size: u64,
    pub unpacked_size: u64,
    pub entries: u64,
    pub arches: Vec<String>,
    pub health: HealthSpec,
    pub hooks: Vec<String>,
    pub key_id: String,
    pub manifest_sha256: String,
    pub source: ReleaseSource,
    pub created_at: i64,
    pub created_by: String,
}

impl NewReleaseRow {
    /// The row as stored under `id`.
    pub fn into_row(self, id: i64) -> ReleaseRow {
        ReleaseRow {
            id,
            app: self.app,
            release: self.release,
            version: self.version,
            archive_sha256: self.archive_sha256,
            archive_size: self.archive_size,
            unpacked_size: self.unpacked_size,
            entries: self.entries,
            arches: self.arches,
            health: self.health,
            hooks: self.hooks,
            key_id: self.key_id,
            manifest_sha256: self.manifest_sha256,
            source: self.source,
            created_at: self.created_at,
            created_by: self.created_by,
        }
    }
}

/// A stored release.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseRow {
    pub id: i64,
    pub app: String,
    pub release: u64,
    pub version: String,
    pub archive_sha256: String,
    pub archive_size: u64,
    pub unpacked_size: u64,
    pub entries: u64,
    pub arches: Vec<String>,
    pub health: HealthSpec,
    pub hooks: Vec<String>,
    pub key_id: String,
    pub manifest_sha256: String,
    pub source: ReleaseSource,
    pub created_at: i64,
    pub created_by: String,
}

/// `SELECT <release columns> FROM releases <tail>`: one column list for every query.
macro_rules! release_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, app, release, version, archive_sha256, archive_size, unpacked_size, ",
            "entries, arches, health, hooks, key_id, manifest_sha256, source_kind, source_name, ",
            "source_url, source_rev, created_at, created_by FROM releases ",
            $tail
        )
    };
}

/// What decoding a release row needs of a database's rows.
trait ReleaseRowSource: Row
where
    for<'a> &'a str: ColumnIndex<Self>,
    for<'a> i64: Decode<'a, Self::Database> + Type<Self::Database>,
    for<'a> String: Decode<'a, Self::Database> + Type<Self::Database>,
{
}

impl ReleaseRowSource for sqlx::sqlite::SqliteRow {}
impl ReleaseRowSource for sqlx::postgres::PgRow {}

fn unsigned<R: ReleaseRowSource>(r: &R, col: &str) -> Result<u64, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
{
    Ok(u64::try_from(r.try_get::<i64, _>(col)?).unwrap_or(0))
}

fn row<R: ReleaseRowSource>(r: &R) -> Result<ReleaseRow, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
{
    let kind: String = r.try_get("source_kind")?;
    let source = if kind == "git" {
        ReleaseSource::Git {
            url: r
                .try_get::<Option<String>, _>("source_url")?
                .unwrap_or_default(),
            rev: r
                .try_get::<Option<String>, _>("source_rev")?
                .unwrap_or_default(),
        }
    } else {
        ReleaseSource::Upload {
            file_name: r.try_get("source_name")?,
        }
    };
    Ok(ReleaseRow {
        id: r.try_get("id")?,
        app: r.try_get("app")?,
        release: unsigned(r, "release")?,
        version: r.try_get("version")?,
        archive_sha256: r.try_get("archive_sha256")?,
        archive_size: unsigned(r, "archive_size")?,
        unpacked_size: unsigned(r, "unpacked_size")?,
        entries: unsigned(r, "entries")?,
        arches: serde_json::from_str(&r.try_get::<String, _>("arches")?)?,
        health: serde_json::from_str(&r.try_get::<String, _>("health")?)?,
        hooks: serde_json::from_str(&r.try_get::<String, _>("hooks")?)?,
        key_id: r.try_get("key_id")?,
        manifest_sha256: r.try_get("manifest_sha256")?,
        source,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
    })
}

/// A write transaction about releases; dropped without [`ReleaseTx::commit`], it rolls
/// back. It holds the database's write lock: keep what happens inside it short.
#[derive(Debug)]
pub struct ReleaseTx {
    tx: Tx,
}

impl ReleaseTx {
    /// Hands out the app's next release number (the first is 1). Numbers of deleted
    /// releases are not reused; a rolled-back transaction gives its number back.
    pub async fn take_number(&mut self, app: &str) -> Result<u64, StoreError> {
        let last: i64 = in_tx!(self.tx, |ex| sqlx::query_scalar(
            "INSERT INTO release_numbers (app, last) VALUES ($1, 1) \
             ON CONFLICT (app) DO UPDATE SET last = release_numbers.last + 1 \
             RETURNING last",
        )
        .bind(app)
        .fetch_one(ex)
        .await)?;
        Ok(u64::try_from(last).unwrap_or(0))
    }

    /// The app's release with this archive digest, if there is one.
    pub async fn by_digest(
        &mut self,
        app: &str,
        archive_sha256: &str,
    ) -> Result<Option<ReleaseRow>, StoreError> {
        in_tx!(self.tx, |ex| sqlx::query(release_select!(
            "WHERE app = $1 AND archive_sha256 = $2"
        ))
        .bind(app)
        .bind(archive_sha256)
        .fetch_optional(ex)
        .await?
        .as_ref()
        .map(row)
        .transpose())
    }

    /// Records a release; returns its id.
    pub async fn insert(&mut self, n: &NewReleaseRow) -> Result<i64, StoreError> {
        let (kind, name, url, rev) = match &n.source {
            ReleaseSource::Upload { file_name } => ("upload", file_name.as_deref(), None, None),
            ReleaseSource::Git { url, rev } => {
                ("git", None, Some(url.as_str()), Some(rev.as_str()))
            }
        };
        let id: i64 = in_tx!(self.tx, |ex| {
            sqlx::query_scalar(
            "INSERT INTO releases (app, release, version, archive_sha256, archive_size, \
             unpacked_size, entries, arches, health, hooks, key_id, manifest_sha256, \
             source_kind, source_name, source_url, source_rev, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) RETURNING id",
        )
        .bind(&n.app)
        .bind(sql_int(n.release))
        .bind(&n.version)
        .bind(&n.archive_sha256)
        .bind(sql_int(n.archive_size))
        .bind(sql_int(n.unpacked_size))
        .bind(sql_int(n.entries))
        .bind(serde_json::to_string(&n.arches)?)
        .bind(serde_json::to_string(&n.health)?)
        .bind(serde_json::to_string(&n.hooks)?)
        .bind(&n.key_id)
        .bind(&n.manifest_sha256)
        .bind(kind)
        .bind(name)
        .bind(url)
        .bind(rev)
        .bind(n.created_at)
        .bind(&n.created_by)
        .fetch_one(ex)
        .await
        })?;
        Ok(id)
    }

    /// One release, read inside the transaction.
    pub async fn get(&mut self, id: i64) -> Result<Option<ReleaseRow>, StoreError> {
        in_tx!(self.tx, |ex| sqlx::query(release_select!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(ex)
            .await?
            .as_ref()
            .map(row)
            .transpose())
    }

    /// Whether a rollout that is not finished uses the release, which must then stay: one
    /// that is not completed or aborted, or still has a device in flight. Read inside this
    /// write transaction, so a rollout cannot start on a release being deleted.
    pub async fn rollout_uses(&mut self, release_id: i64) -> Result<bool, StoreError> {
        let used: Option<i64> = in_tx!(self.tx, |ex| {
            sqlx::query_scalar(concat!(
            "SELECT CAST(1 AS BIGINT) FROM rollouts r WHERE r.release_id = $1 AND (r.status NOT IN ",
            "('completed', 'aborted') OR EXISTS (SELECT 1 FROM rollout_devices d ",
            "WHERE d.rollout_id = r.id AND d.state IN ",
            "('queued', 'downloading', 'installing', 'reverting'))) LIMIT 1"
        ))
        .bind(release_id)
        .fetch_optional(ex)
        .await
        })?;
        Ok(used.is_some())
    }

    /// How many releases (of any app) share this archive.
    pub async fn archive_users(&mut self, archive_sha256: &str) -> Result<u64, StoreError> {
        let n: i64 = in_tx!(self.tx, |ex| sqlx::query_scalar(
            "SELECT COUNT(*) FROM releases WHERE archive_sha256 = $1"
        )
        .bind(archive_sha256)
        .fetch_one(ex)
        .await)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The archive and manifest digests every release refers to.
    pub async fn digests(&mut self) -> Result<(HashSet<String>, HashSet<String>), StoreError> {
        let rows: Vec<(String, String)> = in_tx!(self.tx, |ex| sqlx::query_as(
            "SELECT archive_sha256, manifest_sha256 FROM releases"
        )
        .fetch_all(ex)
        .await)?;
        let mut archives = HashSet::with_capacity(rows.len());
        let mut manifests = HashSet::with_capacity(rows.len());
        for (archive, manifest) in rows {
            archives.insert(archive);
            manifests.insert(manifest);
        }
        Ok((archives, manifests))
    }

    /// Deletes a release row; false if there was none.
    pub async fn delete(&mut self, id: i64) -> Result<bool, StoreError> {
        let r = in_tx!(self.tx, |ex| sqlx::query(
            "DELETE FROM releases WHERE id = $1"
        )
        .bind(id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(r == 1)
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Starts a write transaction about releases.
    pub async fn release_tx(&self) -> Result<ReleaseTx, StoreError> {
        Ok(ReleaseTx {
            tx: self.write_tx().await?,
        })
    }

    /// Releases, newest first; only one app's when `app` is given.
    pub async fn list_releases(&self, app: Option<&str>) -> Result<Vec<ReleaseRow>, StoreError> {
        reading!(self, |ex| {
            let rows = match app {
                Some(app) => {
                    sqlx::query(release_select!("WHERE app = $1 ORDER BY id DESC"))
                        .bind(app)
                        .fetch_all(ex)
                        .await?
                }
                None => {
                    sqlx::query(release_select!("ORDER BY id DESC"))
                        .fetch_all(ex)
                        .await?
                }
            };
            rows.iter().map(row).collect()
        })
    }

    /// One release by id.
    pub async fn release(&self, id: i64) -> Result<Option<ReleaseRow>, StoreError> {
        reading!(self, |ex| sqlx::query(release_select!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(ex)
            .await?
            .as_ref()
            .map(row)
            .transpose())
    }

    /// One release by app and number.
    pub async fn release_by_number(
        &self,
        app: &str,
        release: u64,
    ) -> Result<Option<ReleaseRow>, StoreError> {
        reading!(self, |ex| sqlx::query(release_select!(
            "WHERE app = $1 AND release = $2"
        ))
        .bind(app)
        .bind(sql_int(release))
        .fetch_optional(ex)
        .await?
        .as_ref()
        .map(row)
        .transpose())
    }

    /// The release whose signed manifest has this SHA-256 (64 lowercase hex), as devices
    /// name it when they download.
    pub async fn release_by_manifest(
        &self,
        manifest_sha256: &str,
    ) -> Result<Option<ReleaseRow>, StoreError> {
        reading!(self, |ex| sqlx::query(release_select!(
            "WHERE manifest_sha256 = $1 ORDER BY id LIMIT 1"
        ))
        .bind(manifest_sha256)
        .fetch_optional(ex)
        .await?
        .as_ref()
        .map(row)
        .transpose())
    }
}
