//! Telling the other controllers sharing a PostgreSQL database that something they keep in
//! memory changed (LISTEN/NOTIFY). On SQLite there is one controller and nothing to tell.
//!
//! What is kept in memory and announced: the security settings (which roles must use
//! two-factor sign-in), and the record of the fleet's key files (a rotation on one
//! controller: the others check their files at once instead of at their next key reload).
//! Revocations need no announcement: every controller reads the revoked certificates from
//! the database every `pki.crl_check_s`.

use sqlx::postgres::PgListener;

use super::db::Db;
use super::{Store, StoreError};

/// The channel changes are announced on.
const CHANNEL: &str = "pifleet_changes";

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `mfa_required_roles` (and any setting read at start).
    Settings,
    /// The key files every controller must hold (`rotation::keyset`).
    Keys,
    /// The connection was lost and is being made again: announcements may have been missed,
    /// so everything announced should be read again.
    Missed,
}

/// The announcements of the other controllers (and this one's own).
#[derive(Debug)]
pub struct Changes(PgListener);

impl Changes {
    /// The next change; waits. Reconnects by itself after a lost connection, answering
    /// [`Change::Missed`] then.
    pub async fn next(&mut self) -> Result<Change, StoreError> {
        Ok(match self.0.try_recv().await? {
            Some(n) if n.payload() == "Keys" => Change::Keys,
            // What older controllers announce: settings, with any payload.
            Some(_) => Change::Settings,
            None => Change::Missed,
        })
    }
}

/// Work one controller does for all that share a PostgreSQL database.
#[derive(Debug, Clone, Copy)]
pub enum Job {
    /// Telemetry retention and partitions: skipped by the others while one does it.
    Retention,
    /// A pass of the rollout runner: the others wait, then decide on what it left, so two
    /// controllers never decide the same rollout at once.
    Rollouts,
}

impl Job {
    fn key(self) -> i64 {
        match self {
            Job::Retention => super::dialect::postgres::lock::RETENTION,
            Job::Rollouts => super::dialect::postgres::lock::ROLLOUTS,
        }
    }
}

/// Held while a [`Job`] runs; dropping it lets another controller take the job.
#[derive(Debug)]
pub struct JobLock(#[allow(dead_code)] Option<sqlx::Transaction<'static, sqlx::Postgres>>);

impl Store {
    /// Takes `job` unless another controller sharing the database is doing it (then
    /// `None`). Always taken on SQLite.
    pub async fn try_job(&self, job: Job) -> Result<Option<JobLock>, StoreError> {
        let Db::Postgres { pool } = &self.db else {
            return Ok(Some(JobLock(None)));
        };
        // A transaction-scoped lock: it goes with the transaction, also when this
        // controller dies mid-job.
        let mut tx = pool.begin().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(job.key())
            .fetch_one(&mut *tx)
            .await?;
        Ok(got.then_some(JobLock(Some(tx))))
    }

    /// Takes `job`, waiting while another controller sharing the database does it. At once
    /// on SQLite.
    pub async fn job(&self, job: Job) -> Result<JobLock, StoreError> {
        let Db::Postgres { pool } = &self.db else {
            return Ok(JobLock(None));
        };
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(job.key())
            .execute(&mut *tx)
            .await?;
        Ok(JobLock(Some(tx)))
    }

    /// Announces `change` to every controller listening (PostgreSQL; nothing on SQLite).
    pub(crate) async fn announce(&self, change: Change) -> Result<(), StoreError> {
        if let Db::Postgres { pool } = &self.db {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(format!("{change:?}"))
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Starts listening to announcements; `None` on SQLite, where there are none.
    pub async fn changes(&self) -> Result<Option<Changes>, StoreError> {
        let Db::Postgres { pool } = &self.db else {
            return Ok(None);
        };
        let mut l = PgListener::connect_with(pool).await?;
        l.listen(CHANNEL).await?;
        Ok(Some(Changes(l)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::model::role::Role;
    use crate::store::testkit::store;

    /// A settings change made through one handle is announced to a listener on another
    /// (PostgreSQL); SQLite has no listeners.
    #[tokio::test]
    async fn a_settings_change_reaches_the_listeners() {
        let (_d, s) = store().await;
        let Some(mut changes) = s.changes().await.unwrap() else {
            assert_eq!(s.backend(), crate::store::Backend::Sqlite);
            return;
        };
        s.set_mfa_required_roles(&[Role::Admin]).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .expect("no announcement within 5 s")
            .unwrap();
        assert_eq!(got, super::Change::Settings);
    }

    /// A job is one controller's at a time (PostgreSQL), and free again once dropped.
    #[tokio::test]
    async fn a_job_is_taken_once() {
        let (_d, s) = store().await;
        let first = s.try_job(super::Job::Retention).await.unwrap();
        assert!(first.is_some());
        let second = s.try_job(super::Job::Retention).await.unwrap();
        assert_eq!(
            second.is_some(),
            s.backend() == crate::store::Backend::Sqlite,
            "a second taker on PostgreSQL must be refused"
        );
        drop((first, second));
        assert!(s.try_job(super::Job::Retention).await.unwrap().is_some());
    }

    /// A waited-for job is one controller's at a time: the second taker waits until the
    /// first lets go (PostgreSQL).
    #[tokio::test]
    async fn a_waited_job_waits_for_the_holder() {
        let (_d, s) = store().await;
        let first = s.job(super::Job::Rollouts).await.unwrap();
        let waiting =
            tokio::time::timeout(Duration::from_millis(500), s.job(super::Job::Rollouts)).await;
        if s.backend() == crate::store::Backend::Sqlite {
            assert!(waiting.is_ok());
            return;
        }
        assert!(waiting.is_err(), "taken twice at once");
        let s2 = s.clone();
        let second = tokio::spawn(async move { s2.job(super::Job::Rollouts).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!second.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second taker never got it")
            .unwrap()
            .unwrap();
    }
}
