-- pifleet schema v1. Times are Unix milliseconds (INTEGER) so the SQL stays portable to
-- PostgreSQL (BIGINT). JSON documents are stored as TEXT.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE enrollment_tokens (
    id          TEXT PRIMARY KEY,          -- short public id (first 12 hex of the secret hash)
    secret_hash TEXT NOT NULL UNIQUE,      -- SHA-256 of the secret, hex
    name        TEXT,                      -- device id to assign, if fixed
    labels      TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    used_by     TEXT,
    revoked_at  INTEGER
);

CREATE TABLE devices (
    id            TEXT PRIMARY KEY,
    labels        TEXT NOT NULL DEFAULT '{}',
    enrolled_at   INTEGER NOT NULL,
    revoked_at    INTEGER,
    first_seen    INTEGER,
    last_seen     INTEGER,
    online        INTEGER NOT NULL DEFAULT 0,
    agent_version TEXT,
    hostname      TEXT,
    os            TEXT,
    kernel        TEXT,
    arch          TEXT,
    model         TEXT,
    uptime_s      BIGINT,
    hello_at      INTEGER,
    last_seq      BIGINT
);

CREATE TABLE certificates (
    serial     TEXT PRIMARY KEY,              -- lowercase hex
    device_id  TEXT NOT NULL REFERENCES devices (id),
    issued_at  INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX certificates_device ON certificates (device_id);

CREATE TABLE telemetry (
    device_id       TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    ts              INTEGER NOT NULL,          -- device clock
    received_at     INTEGER NOT NULL,          -- controller clock at commit
    cpu_pct         REAL NOT NULL,
    load1           REAL NOT NULL,
    load5           REAL NOT NULL,
    load15          REAL NOT NULL,
    mem_total       BIGINT NOT NULL,
    mem_used        BIGINT NOT NULL,
    swap_total      BIGINT NOT NULL,
    swap_used       BIGINT NOT NULL,
    temp_c          REAL,
    throttled       BIGINT,
    uptime_s        BIGINT NOT NULL,
    spool_dropped   BIGINT NOT NULL,
    spool_backlog   BIGINT NOT NULL,
    disks           TEXT NOT NULL,             -- JSON array
    nets            TEXT NOT NULL,             -- JSON array
    PRIMARY KEY (device_id, seq)
);
-- Time-first index for retention and fleet-wide time ranges; per-device history by time.
CREATE INDEX telemetry_received ON telemetry (received_at);
CREATE INDEX telemetry_device_ts ON telemetry (device_id, ts);
