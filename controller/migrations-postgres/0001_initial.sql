-- pifleet schema for PostgreSQL: the shape SQLite has after controller/migrations/0001..0020,
-- in one migration (PostgreSQL had no deployments before it). The SQLite files explain what
-- each table and column is for; comments here say only where PostgreSQL differs.
--
-- The same Rust row types decode from both backends, hence:
-- - every integer is BIGINT (sqlx decodes i64 only from INT8); SQLite's rowid aliases
--   (`INTEGER PRIMARY KEY`) are identity columns that still accept an explicit id (a copy from
--   SQLite keeps its ids; it must then move the sequence past them with setval);
-- - the 0/1 flags the code reads as `bool` are BOOLEAN: devices.online, devices.needs_review,
--   users.must_change_password, enrollment_tokens.require_approval, rollouts.revert_on_abort,
--   rollout_devices.revertible;
-- - JSON stays TEXT (the code binds and reads serde_json strings), BLOB is BYTEA, REAL is
--   DOUBLE PRECISION (SQLite's REAL is 8 bytes).
-- The SQLite schema uses no COLLATE NOCASE, WITHOUT ROWID or STRICT, so nothing stands in
-- for them.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE enrollment_tokens (
    id               TEXT PRIMARY KEY,
    secret_hash      TEXT NOT NULL UNIQUE,
    name             TEXT,
    labels           TEXT NOT NULL DEFAULT '{}',
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    used_at          BIGINT,
    used_by          TEXT,
    revoked_at       BIGINT,
    max_uses         BIGINT,
    uses             BIGINT NOT NULL DEFAULT 0,
    require_approval BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE devices (
    id                  TEXT PRIMARY KEY,
    labels              TEXT NOT NULL DEFAULT '{}',
    enrolled_at         BIGINT NOT NULL,
    revoked_at          BIGINT,
    first_seen          BIGINT,
    last_seen           BIGINT,
    online              BOOLEAN NOT NULL DEFAULT FALSE,
    agent_version       TEXT,
    hostname            TEXT,
    os                  TEXT,
    kernel              TEXT,
    arch                TEXT,
    model               TEXT,
    uptime_s            BIGINT,
    hello_at            BIGINT,
    last_seq            BIGINT,
    spool_dropped_total BIGINT NOT NULL DEFAULT 0,
    capabilities        TEXT,
    capabilities_at     BIGINT,
    services            TEXT,
    services_at         BIGINT,
    apps                TEXT,
    apps_at             BIGINT,
    enrolled_by         TEXT,
    needs_review        BOOLEAN NOT NULL DEFAULT FALSE,
    review_reason       TEXT
);

CREATE TABLE certificates (
    serial         TEXT PRIMARY KEY,
    device_id      TEXT NOT NULL REFERENCES devices (id),
    issued_at      BIGINT NOT NULL,
    not_after      BIGINT NOT NULL,
    revoked_at     BIGINT,
    public_key_alg TEXT,
    public_key     BYTEA
);
CREATE INDEX certificates_device ON certificates (device_id);

-- Partitioned by day of `ts` (the device's clock, Unix ms) so retention drops whole days
-- instead of deleting rows; see pifleet_telemetry_prepare and pifleet_telemetry_drop_before.
--
-- A unique key on a partitioned table must contain the partition key, so SQLite's primary key
-- (device_id, seq) becomes (device_id, seq, ts). Ingest stays idempotent: a re-sent sample is
-- the same sample from the agent's spool, with the same ts, so it hits this key and is
-- skipped (`ON CONFLICT DO NOTHING`; a conflict target must name all three columns here). Only
-- a different sample reusing a (device, seq) under another ts would be stored twice, which
-- the agent never sends.
CREATE TABLE telemetry (
    device_id     TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    ts            BIGINT NOT NULL,
    received_at   BIGINT NOT NULL,
    cpu_pct       DOUBLE PRECISION NOT NULL,
    load1         DOUBLE PRECISION NOT NULL,
    load5         DOUBLE PRECISION NOT NULL,
    load15        DOUBLE PRECISION NOT NULL,
    mem_total     BIGINT NOT NULL,
    mem_used      BIGINT NOT NULL,
    swap_total    BIGINT NOT NULL,
    swap_used     BIGINT NOT NULL,
    temp_c        DOUBLE PRECISION,
    throttled     BIGINT,
    uptime_s      BIGINT NOT NULL,
    spool_dropped BIGINT NOT NULL,
    spool_backlog BIGINT NOT NULL,
    disks         TEXT NOT NULL,
    nets          TEXT NOT NULL,
    disk_used     BIGINT,
    disk_total    BIGINT,
    net_rx        BIGINT,
    net_tx        BIGINT,
    PRIMARY KEY (device_id, seq, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX telemetry_received ON telemetry (received_at);
CREATE INDEX telemetry_device_ts ON telemetry (device_id, ts);
-- Samples whose day has no partition (a clock far off, or a controller that has not prepared
-- the day yet) land here rather than fail the batch they came in.
CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;

CREATE TABLE commands (
    rowid             BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id                TEXT PRIMARY KEY,
    device_id         TEXT NOT NULL REFERENCES devices (id),
    action            TEXT NOT NULL,
    action_kind       TEXT NOT NULL,
    status            TEXT NOT NULL,
    reason            TEXT,
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    answer_timeout_ms BIGINT NOT NULL,
    issued_at         BIGINT,
    sent_at           BIGINT,
    resent_at         BIGINT,
    accepted_at       BIGINT,
    started_at        BIGINT,
    finished_at       BIGINT,
    exit_code         BIGINT,
    duration_ms       BIGINT,
    stdout            BYTEA,
    stdout_len        BIGINT,
    stdout_sha256     TEXT,
    stderr            BYTEA,
    stderr_len        BIGINT,
    stderr_sha256     TEXT,
    receipt           BYTEA,
    receipt_signature BYTEA
);
CREATE INDEX commands_status ON commands (status, expires_at);
CREATE INDEX commands_device ON commands (device_id, created_at);
CREATE INDEX commands_created ON commands (created_at, id);

CREATE TABLE audit_log (
    seq       BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    source    TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);

CREATE TABLE users (
    id                   BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    role                 TEXT NOT NULL,
    password_hash        TEXT NOT NULL,
    must_change_password BOOLEAN NOT NULL DEFAULT FALSE,
    created_at           BIGINT NOT NULL,
    password_changed_at  BIGINT NOT NULL,
    disabled_at          BIGINT,
    mfa_secret           BYTEA,
    mfa_enabled_at       BIGINT,
    mfa_pending_secret   BYTEA,
    mfa_last_step        BIGINT
);

CREATE TABLE recovery_codes (
    user_id   BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at   BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    user_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    revoke_reason TEXT,
    ip            TEXT NOT NULL,
    user_agent    TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE refresh_tokens (
    hash       TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at  BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE auth_failures (
    name    TEXT NOT NULL,
    at      BIGINT NOT NULL,
    attempt TEXT
);
CREATE INDEX auth_failures_name ON auth_failures (name, at);

CREATE TABLE auth_attempt_names (
    name TEXT PRIMARY KEY,
    at   BIGINT NOT NULL
);

CREATE TABLE mfa_tokens_used (
    jti        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

CREATE TABLE releases (
    id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    app             TEXT NOT NULL,
    release         BIGINT NOT NULL,
    version         TEXT NOT NULL,
    archive_sha256  TEXT NOT NULL,
    archive_size    BIGINT NOT NULL,
    unpacked_size   BIGINT NOT NULL,
    entries         BIGINT NOT NULL,
    arches          TEXT NOT NULL,
    health          TEXT NOT NULL,
    hooks           TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    source_kind     TEXT NOT NULL,
    source_name     TEXT,
    source_url      TEXT,
    source_rev      TEXT,
    created_at      BIGINT NOT NULL,
    created_by      TEXT NOT NULL,
    UNIQUE (app, release),
    UNIQUE (app, archive_sha256)
);
CREATE INDEX releases_archive ON releases (archive_sha256);
CREATE INDEX releases_manifest ON releases (manifest_sha256);

CREATE TABLE release_numbers (
    app  TEXT PRIMARY KEY,
    last BIGINT NOT NULL
);

CREATE TABLE approvals (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    request      TEXT NOT NULL,
    summary      TEXT NOT NULL,
    device_count BIGINT NOT NULL,
    requested_by TEXT NOT NULL,
    requester_id BIGINT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    status       TEXT NOT NULL,
    decided_by   TEXT,
    decided_at   BIGINT,
    targets      TEXT,
    outcome      TEXT
);
CREATE INDEX approvals_status ON approvals (status, created_at);

-- `rowid` (here and in `commands` and `rollout_events`): SQLite's implicit row id, which the
-- code reads (a token's numeric identity, the order of events written in the same ms).
CREATE TABLE api_tokens (
    rowid        BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL UNIQUE,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT
);

CREATE TABLE release_key_acks (
    device_id  TEXT NOT NULL REFERENCES devices (id),
    key_id     TEXT NOT NULL,
    command_id TEXT NOT NULL,
    acked_at   BIGINT NOT NULL,
    PRIMARY KEY (device_id, key_id)
);

CREATE TABLE rollouts (
    id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    release_id      BIGINT NOT NULL,
    app             TEXT NOT NULL,
    release         BIGINT NOT NULL,
    selector        TEXT NOT NULL,
    settings        TEXT NOT NULL,
    status          TEXT NOT NULL,
    batch           BIGINT NOT NULL,
    pause_cause     TEXT,
    waiver_batch    BIGINT,
    waiver_failures BIGINT,
    waiver_results  BIGINT,
    revert_on_abort BOOLEAN NOT NULL DEFAULT FALSE,
    version         BIGINT NOT NULL DEFAULT 0,
    reason          TEXT,
    approval_id     TEXT,
    next_check_at   BIGINT,
    created_by      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX rollouts_status ON rollouts (status);
CREATE INDEX rollouts_release ON rollouts (release_id);

CREATE TABLE rollout_devices (
    rollout_id       BIGINT NOT NULL REFERENCES rollouts (id),
    device_id        TEXT NOT NULL REFERENCES devices (id),
    position         BIGINT NOT NULL,
    batch            BIGINT NOT NULL,
    state            TEXT NOT NULL,
    queued_at        BIGINT,
    started_at       BIGINT,
    finished_at      BIGINT,
    revertible       BOOLEAN NOT NULL,
    previous_release BIGINT,
    command_id       TEXT,
    phase            TEXT,
    bytes            BIGINT,
    total            BIGINT,
    reason           TEXT,
    journal          TEXT,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_command ON rollout_devices (command_id);
CREATE INDEX rollout_devices_device ON rollout_devices (device_id);

CREATE TABLE rollout_events (
    rowid      BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    rollout_id BIGINT NOT NULL REFERENCES rollouts (id),
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    text       TEXT NOT NULL
);
CREATE INDEX rollout_events_rollout ON rollout_events (rollout_id, at);

CREATE TABLE unit_events (
    id        BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices (id),
    unit      TEXT NOT NULL,
    kind      TEXT NOT NULL,
    detail    TEXT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE INDEX unit_events_device ON unit_events (device_id, id);

CREATE TABLE command_keys (
    key_id        TEXT PRIMARY KEY,
    public_key    BYTEA NOT NULL,
    signed_by     TEXT,
    signature     BYTEA,
    created_at    BIGINT NOT NULL,
    retire_at     BIGINT,
    announce_from BIGINT NOT NULL
);

CREATE TABLE command_key_acks (
    device_id  TEXT NOT NULL REFERENCES devices (id),
    key_id     TEXT NOT NULL,
    command_id TEXT,
    acked_at   BIGINT NOT NULL,
    PRIMARY KEY (device_id, key_id)
);

CREATE TABLE enrollment_requests (
    id              TEXT PRIMARY KEY,
    token_id        TEXT NOT NULL REFERENCES enrollment_tokens (id),
    device_id       TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    source          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    last_seen_at    BIGINT NOT NULL,
    status          TEXT NOT NULL,
    decided_by      TEXT,
    decided_at      BIGINT
);
CREATE UNIQUE INDEX enrollment_requests_key ON enrollment_requests (token_id, key_fingerprint);
CREATE INDEX enrollment_requests_device ON enrollment_requests (device_id);
CREATE INDEX enrollment_requests_status ON enrollment_requests (status, created_at);

-- Daily telemetry partitions. PL/pgSQL because partition DDL needs names and bounds computed
-- at run time; both functions take the same transaction-scoped advisory lock, so replicas
-- calling them at once take turns and the loser finds the work done.

-- Creates the missing daily partitions telemetry_pYYYYMMDD (UTC days, bounds in ms) from the
-- day before now_ms through days_ahead days after it. Rows already in telemetry_default for a
-- day being created are moved into the new partition: PostgreSQL refuses to add a partition
-- while the default one holds rows of its range, so the day is built as a plain table, filled
-- from the default partition and attached, all in the caller's transaction.
CREATE FUNCTION pifleet_telemetry_prepare(now_ms BIGINT, days_ahead INT) RETURNS INT
LANGUAGE plpgsql AS $$
DECLARE
    day_ms  CONSTANT BIGINT := 86400000;
    today   BIGINT := (now_ms / day_ms) * day_ms;
    lo      BIGINT;
    hi      BIGINT;
    part    TEXT;
    created INT := 0;
    locked  BOOLEAN := FALSE;
BEGIN
    IF days_ahead < 0 THEN
        RAISE EXCEPTION 'days_ahead must not be negative (got %)', days_ahead;
    END IF;
    -- Integer division truncates toward zero; days before 1970 need the floor.
    IF now_ms < 0 AND now_ms % day_ms <> 0 THEN
        today := today - day_ms;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('pifleet_telemetry_partitions'));
    FOR i IN -1 .. days_ahead LOOP
        lo := today + i * day_ms;
        hi := lo + day_ms;
        part := 'telemetry_p' || to_char(to_timestamp(lo / 1000) AT TIME ZONE 'UTC', 'YYYYMMDD');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        IF NOT locked THEN
            -- Holds off ingest until commit, so no sample lands in the default partition
            -- between the check below and the DDL; the parent first, in the order inserts
            -- take their locks, so the two cannot deadlock.
            LOCK TABLE telemetry IN SHARE ROW EXCLUSIVE MODE;
            locked := TRUE;
        END IF;
        IF EXISTS (SELECT 1 FROM telemetry_default WHERE ts >= lo AND ts < hi) THEN
            EXECUTE format('CREATE TABLE %I (LIKE telemetry INCLUDING DEFAULTS)', part);
            EXECUTE format(
                'WITH moved AS (DELETE FROM telemetry_default WHERE ts >= $1 AND ts < $2 '
                'RETURNING *) INSERT INTO %I SELECT * FROM moved', part)
                USING lo, hi;
            EXECUTE format('ALTER TABLE telemetry ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                part, lo, hi);
        ELSE
            EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF telemetry '
                'FOR VALUES FROM (%s) TO (%s)', part, lo, hi);
        END IF;
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

-- Drops the daily partitions whose whole range lies before cutoff_ms and deletes the default
-- partition's rows received before it, returning how many rows went. The default partition
-- goes by received_at (the controller's clock), as SQLite's retention does, because its rows
-- are there for a device clock that is off: by ts, a clock in 1970 would lose its samples at
-- once and one in 2100 would keep them forever.
CREATE FUNCTION pifleet_telemetry_drop_before(cutoff_ms BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    p       RECORD;
    upper   BIGINT;
    n       BIGINT;
    removed BIGINT := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pifleet_telemetry_partitions'));
    -- The counts must be the rows dropped: no sample may arrive between count and drop.
    LOCK TABLE telemetry IN SHARE ROW EXCLUSIVE MODE;
    FOR p IN
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'telemetry'::regclass
        ORDER BY c.relname
    LOOP
        CONTINUE WHEN p.bound = 'DEFAULT';
        upper := (regexp_match(p.bound, 'TO \(''?(-?[0-9]+)''?\)'))[1]::BIGINT;
        CONTINUE WHEN upper IS NULL OR upper > cutoff_ms;
        EXECUTE format('SELECT count(*) FROM %I', p.relname) INTO n;
        EXECUTE format('DROP TABLE %I', p.relname);
        removed := removed + n;
    END LOOP;
    DELETE FROM telemetry_default WHERE received_at < cutoff_ms;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN removed + n;
END
$$;
