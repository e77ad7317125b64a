-- Sign-in guesses are recorded before they are checked, so the lockout is exact under
-- concurrency; MFA step tokens work once.

-- An attempt still being checked is a row of auth_failures too: `attempt` holds its random
-- id until the guess is known to be wrong (then NULL, like every row before this migration).
-- A right guess deletes its row.
ALTER TABLE auth_failures ADD COLUMN attempt TEXT;

-- One row per user name with recent attempts. Every reservation writes its name's row first,
-- so reservations for one name take turns also where transactions overlap (PostgreSQL).
CREATE TABLE auth_attempt_names (
    name TEXT PRIMARY KEY,
    at   BIGINT NOT NULL
);

-- MFA step tokens (their JWT `jti`) that completed a sign-in, kept until they expire.
CREATE TABLE mfa_tokens_used (
    jti        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
