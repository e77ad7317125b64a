//! SQL for the sign-in lockout and the MFA step's acceptance.
//!
//! Every guess (a password, a TOTP or recovery code, a current password on a password change)
//! is recorded as a failure *before* it is checked: [`Store::reserve_attempt`] counts the
//! name's failures in the window, in-flight attempts included, and either refuses (locked)
//! or inserts the attempt, in one write transaction. So at most `limit` guesses are checked
//! per window however many requests arrive at once, from however many controller processes
//! share the database. A right guess deletes its row afterwards; a wrong one stays.

use rand::RngCore;

use super::{Store, StoreError, now_ms};

/// The lockout rule: `limit` failures within `window_ms` lock a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    pub limit: u32,
    pub window_ms: i64,
}

/// A reserved attempt: counted as a failure of `name` until it is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub name: String,
    id: String,
}

/// The outcome of [`Store::reserve_attempt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The guess may be checked.
    Reserved(Attempt),
    /// The name has `limit` failures (or attempts in flight) in the window until `until_ms`.
    Locked { until_ms: i64 },
}

/// A second-step code, as the MFA step accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MfaCode {
    /// A valid TOTP code of this 30-second step.
    Totp(i64),
    /// The SHA-256 of a recovery code.
    Recovery(String),
}

/// The outcome of [`Store::accept_mfa`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MfaAcceptance {
    /// Code used, step token used, attempt and earlier failures cleared.
    Accepted,
    /// The step token was already used: nothing changed.
    TokenUsed,
    /// The TOTP step (or a later one) was already used, or the recovery code is unknown or
    /// used: nothing changed; the code counts as wrong.
    CodeRefused,
}

fn attempt_id() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Store {
    /// Reserves an attempt for `name` (lower-cased by the caller) before its guess is
    /// checked, or reports the lock. The counting and the insert are one write transaction
    /// that first takes the name's row in `auth_attempt_names`: SQLite's `BEGIN IMMEDIATE`
    /// already serialises writers, and on a database whose transactions overlap (PostgreSQL)
    /// that row lock still makes two reservations for one name take turns.
    pub async fn reserve_attempt(
        &self,
        name: &str,
        rule: Lockout,
    ) -> Result<Reservation, StoreError> {
        let now = now_ms();
        let since = now - rule.window_ms;
        let mut tx = self.write_tx().await?;
        in_tx!(tx, |ex| sqlx::query(
            "INSERT INTO auth_attempt_names (name, at) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET at = excluded.at",
        )
        .bind(name)
        .bind(now)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        in_tx!(tx, |ex| sqlx::query(
            "DELETE FROM auth_attempt_names WHERE at < $1"
        )
        .bind(since)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        in_tx!(tx, |ex| sqlx::query(
            "DELETE FROM auth_failures WHERE at < $1"
        )
        .bind(since)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        let (n, oldest): (i64, Option<i64>) = in_tx!(tx, |ex| {
            sqlx::query_as(
            "SELECT COUNT(*) AS n, MIN(at) AS oldest FROM auth_failures WHERE name = $1 AND at >= $2",
        )
        .bind(name)
        .bind(since)
        .fetch_one(ex)
        .await
        })?;
        if n >= i64::from(rule.limit) {
            tx.commit().await?;
            return Ok(Reservation::Locked {
                until_ms: oldest.unwrap_or(now) + rule.window_ms,
            });
        }
        let id = attempt_id();
        in_tx!(tx, |ex| sqlx::query(
            "INSERT INTO auth_failures (name, at, attempt) VALUES ($1, $2, $3)"
        )
        .bind(name)
        .bind(now)
        .bind(&id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
        Ok(Reservation::Reserved(Attempt {
            name: name.to_owned(),
            id,
        }))
    }

    /// Settles an attempt whose guess was wrong: it stays a failure. True when this failure
    /// completes the lock (the name now has `limit` settled failures in the window), so that
    /// exactly one of many concurrent failures reports the lockout.
    pub async fn attempt_failed(&self, a: &Attempt, rule: Lockout) -> Result<bool, StoreError> {
        let since = now_ms() - rule.window_ms;
        let mut tx = self.write_tx().await?;
        let settled = in_tx!(tx, |ex| sqlx::query(
            "UPDATE auth_failures SET attempt = NULL WHERE name = $1 AND attempt = $2"
        )
        .bind(&a.name)
        .bind(&a.id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        if settled == 0 {
            // Gone: an admin reset the name's failures, or it left the window meanwhile.
            return Ok(false);
        }
        let n: i64 = in_tx!(tx, |ex| {
            sqlx::query_scalar(
            "SELECT COUNT(*) FROM auth_failures WHERE name = $1 AND at >= $2 AND attempt IS NULL",
        )
        .bind(&a.name)
        .bind(since)
        .fetch_one(ex)
        .await
        })?;
        tx.commit().await?;
        Ok(n == i64::from(rule.limit))
    }

    /// A right guess that completes a sign-in: deletes the attempt and the name's earlier
    /// failures. Other attempts still in flight stay counted until they settle.
    pub async fn attempt_succeeded(&self, a: &Attempt) -> Result<(), StoreError> {
        writing!(self, |ex| sqlx::query(
            "DELETE FROM auth_failures WHERE name = $1 AND (attempt = $2 OR attempt IS NULL)",
        )
        .bind(&a.name)
        .bind(&a.id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// A right guess that does not complete a sign-in (the password step of an MFA user, a
    /// password change), or a request that ended before its guess was judged: deletes only
    /// the attempt.
    pub async fn release_attempt(&self, a: &Attempt) -> Result<(), StoreError> {
        writing!(self, |ex| sqlx::query(
            "DELETE FROM auth_failures WHERE name = $1 AND attempt = $2"
        )
        .bind(&a.name)
        .bind(&a.id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Deletes every failure and attempt of `name` (an admin's password reset).
    pub async fn clear_failures(&self, name: &str) -> Result<(), StoreError> {
        writing!(self, |ex| sqlx::query(
            "DELETE FROM auth_failures WHERE name = $1"
        )
        .bind(name)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Whether the MFA step token `jti` was already used.
    pub async fn mfa_token_used(&self, jti: &str) -> Result<bool, StoreError> {
        let used: Option<String> = reading!(self, |ex| sqlx::query_scalar(
            "SELECT jti FROM mfa_tokens_used WHERE jti = $1"
        )
        .bind(jti)
        .fetch_optional(ex)
        .await)?;
        Ok(used.is_some())
    }

    /// Accepts the second step in one write transaction: records the step token `jti` as
    /// used (kept until `token_expires_ms`), spends the code (a TOTP step only moves forward;
    /// a recovery code works once), and clears the attempt and the name's failures. Nothing
    /// changes unless all of it succeeds, so neither a token nor a code works twice, even for
    /// concurrent requests or other processes.
    pub async fn accept_mfa(
        &self,
        user_id: i64,
        jti: &str,
        token_expires_ms: i64,
        code: &MfaCode,
        attempt: &Attempt,
    ) -> Result<MfaAcceptance, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        in_tx!(tx, |ex| sqlx::query(
            "DELETE FROM mfa_tokens_used WHERE expires_at < $1"
        )
        .bind(now)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        let token = in_tx!(tx, |ex| sqlx::query(
            "INSERT INTO mfa_tokens_used (jti, expires_at) VALUES ($1, $2) \
             ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(token_expires_ms)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        if token != 1 {
            return Ok(MfaAcceptance::TokenUsed);
        }
        let spent = match code {
            MfaCode::Totp(step) => in_tx!(tx, |ex| sqlx::query(
                "UPDATE users SET mfa_last_step = $1 \
                     WHERE id = $2 AND (mfa_last_step IS NULL OR mfa_last_step < $3)",
            )
            .bind(step)
            .bind(user_id)
            .bind(step)
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?,
            MfaCode::Recovery(hash) => in_tx!(tx, |ex| sqlx::query(
                "UPDATE recovery_codes SET used_at = $1 \
                     WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
            )
            .bind(now)
            .bind(user_id)
            .bind(hash)
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?,
        };
        if spent != 1 {
            return Ok(MfaAcceptance::CodeRefused);
        }
        in_tx!(tx, |ex| sqlx::query(
            "DELETE FROM auth_failures WHERE name = $1 AND (attempt = $2 OR attempt IS NULL)",
        )
        .bind(&attempt.name)
        .bind(&attempt.id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
        Ok(MfaAcceptance::Accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Lockout = Lockout {
        limit: 3,
        window_ms: 60_000,
    };

    async fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), true).await.unwrap();
        (dir, store)
    }

    fn reserved(r: Reservation) -> Attempt {
        match r {
            Reservation::Reserved(a) => a,
            Reservation::Locked { .. } => panic!("locked"),
        }
    }

    #[tokio::test]
    async fn attempts_count_from_their_reservation() {
        let (_dir, store) = open().await;
        let a = reserved(store.reserve_attempt("olga", RULE).await.unwrap());
        let b = reserved(store.reserve_attempt("olga", RULE).await.unwrap());
        let c = reserved(store.reserve_attempt("olga", RULE).await.unwrap());
        // Three in flight: the fourth is refused before any of them is judged.
        let Reservation::Locked { until_ms } = store.reserve_attempt("olga", RULE).await.unwrap()
        else {
            panic!("not locked");
        };
        assert!(until_ms > now_ms() + RULE.window_ms - 5_000);
        // Another name is not affected.
        reserved(store.reserve_attempt("petra", RULE).await.unwrap());
        // A right password releases its place; the others stay.
        store.release_attempt(&a).await.unwrap();
        let d = reserved(store.reserve_attempt("olga", RULE).await.unwrap());
        // Only the failure that completes the lock reports it.
        assert!(!store.attempt_failed(&b, RULE).await.unwrap());
        assert!(!store.attempt_failed(&c, RULE).await.unwrap());
        assert!(store.attempt_failed(&d, RULE).await.unwrap());
        assert!(
            !store.attempt_failed(&d, RULE).await.unwrap(),
            "settled once"
        );
        assert!(matches!(
            store.reserve_attempt("olga", RULE).await.unwrap(),
            Reservation::Locked { .. }
        ));
        store.clear_failures("olga").await.unwrap();
        reserved(store.reserve_attempt("olga", RULE).await.unwrap());
    }

    #[tokio::test]
    async fn a_success_keeps_other_attempts_in_flight() {
        let (_dir, store) = open().await;
        let a = reserved(store.reserve_attempt("olga", RULE).await.unwrap());
        store.attempt_failed(&a, RULE).await.unwrap();
        let b = reserved(store.reserve_attempt("olga", RULE).await.unwrap());
        let ok = reserved(store.reserve_attempt("olga", RULE).await.unwrap());
        store.attempt_succeeded(&ok).await.unwrap();
        // `a` (settled) is gone, `b` (in flight) still counts: two more places.
        reserved(store.reserve_attempt("olga", RULE).await.unwrap());
        reserved(store.reserve_attempt("olga", RULE).await.unwrap());
        assert!(matches!(
            store.reserve_attempt("olga", RULE).await.unwrap(),
            Reservation::Locked { .. }
        ));
        assert!(!store.attempt_failed(&b, RULE).await.unwrap());
    }

    /// Two handles on one database file stand for two controller processes: together they
    /// reserve exactly `limit` attempts however the reservations interleave.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_limit_holds_across_processes() {
        let (dir, one) = open().await;
        let two = Store::open(&dir.path().join("db"), false).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = if i % 2 == 0 { one.clone() } else { two.clone() };
            tasks.push(tokio::spawn(async move {
                store.reserve_attempt("olga", RULE).await.unwrap()
            }));
        }
        let mut reserved = 0;
        for t in tasks {
            if let Reservation::Reserved(_) = t.await.unwrap() {
                reserved += 1;
            }
        }
        assert_eq!(reserved, RULE.limit);
    }

    #[tokio::test]
    async fn an_mfa_token_and_a_code_work_once() {
        let (_dir, store) = open().await;
        let id = store
            .create_user("olga", crate::model::role::Role::Viewer, "x", false)
            .await
            .unwrap()
            .unwrap();
        store.set_mfa_pending(id, b"secret").await.unwrap();
        assert!(
            store
                .confirm_mfa(id, 100, &["r1".to_owned()])
                .await
                .unwrap()
        );
        let exp = now_ms() + 300_000;
        let attempt = || async { reserved(store.reserve_attempt("olga", RULE).await.unwrap()) };
        let a = attempt().await;
        assert!(!store.mfa_token_used("t1").await.unwrap());
        assert_eq!(
            store
                .accept_mfa(id, "t1", exp, &MfaCode::Totp(101), &a)
                .await
                .unwrap(),
            MfaAcceptance::Accepted
        );
        assert!(store.mfa_token_used("t1").await.unwrap());
        let b = attempt().await;
        assert_eq!(
            store
                .accept_mfa(id, "t1", exp, &MfaCode::Totp(102), &b)
                .await
                .unwrap(),
            MfaAcceptance::TokenUsed
        );
        // A refused code leaves the token unused.
        assert_eq!(
            store
                .accept_mfa(id, "t2", exp, &MfaCode::Totp(101), &b)
                .await
                .unwrap(),
            MfaAcceptance::CodeRefused
        );
        assert!(!store.mfa_token_used("t2").await.unwrap());
        assert_eq!(
            store
                .accept_mfa(id, "t2", exp, &MfaCode::Recovery("nope".into()), &b)
                .await
                .unwrap(),
            MfaAcceptance::CodeRefused
        );
        assert_eq!(
            store
                .accept_mfa(id, "t2", exp, &MfaCode::Recovery("r1".into()), &b)
                .await
                .unwrap(),
            MfaAcceptance::Accepted
        );
        let b = attempt().await;
        assert_eq!(
            store
                .accept_mfa(id, "t5", exp, &MfaCode::Recovery("r1".into()), &b)
                .await
                .unwrap(),
            MfaAcceptance::CodeRefused,
            "a recovery code works once"
        );
        // Expired tokens are forgotten at the next acceptance.
        let c = attempt().await;
        assert_eq!(
            store
                .accept_mfa(id, "t3", now_ms() - 1, &MfaCode::Totp(102), &c)
                .await
                .unwrap(),
            MfaAcceptance::Accepted
        );
        let d = attempt().await;
        store
            .accept_mfa(id, "t4", exp, &MfaCode::Totp(103), &d)
            .await
            .unwrap();
        assert!(!store.mfa_token_used("t3").await.unwrap());
    }
}
