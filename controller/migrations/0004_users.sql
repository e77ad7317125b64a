-- Admin users, sessions (refresh-token families), login failures and MFA recovery codes.

CREATE TABLE users (
    id                   INTEGER PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    role                 TEXT NOT NULL,            -- viewer | operator | admin
    password_hash        TEXT NOT NULL,            -- argon2id PHC string (parameters included)
    must_change_password INTEGER NOT NULL DEFAULT 0,
    created_at           INTEGER NOT NULL,
    password_changed_at  INTEGER NOT NULL,
    disabled_at          INTEGER,
    mfa_secret           BLOB,                     -- active TOTP secret
    mfa_enabled_at       INTEGER,
    mfa_pending_secret   BLOB,                     -- enrolment started, not yet confirmed
    mfa_last_step        BIGINT                    -- last TOTP step used (no replay)
);

CREATE TABLE recovery_codes (
    user_id   INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,                       -- SHA-256 hex of the normalised code
    used_at   INTEGER,
    PRIMARY KEY (user_id, code_hash)
);

-- A session is one login; its refresh tokens form a family. Reuse of a rotated token
-- revokes the whole session.
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,                -- 32 hex, carried in access tokens (sid)
    user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    revoke_reason TEXT,
    ip            TEXT NOT NULL,
    user_agent    TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE refresh_tokens (
    hash       TEXT PRIMARY KEY,                   -- SHA-256 hex of the token
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at  INTEGER NOT NULL,
    used_at    INTEGER                             -- set when rotated
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Failed sign-ins by (lower-cased) user name, whether or not the user exists, so lockout
-- behaves the same for unknown names.
CREATE TABLE auth_failures (
    name TEXT NOT NULL,
    at   INTEGER NOT NULL
);
CREATE INDEX auth_failures_name ON auth_failures (name, at);
