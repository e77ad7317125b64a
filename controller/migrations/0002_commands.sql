-- Signed commands and their lifecycle; device public keys for verifying receipts.

ALTER TABLE certificates ADD COLUMN public_key_alg TEXT;
ALTER TABLE certificates ADD COLUMN public_key BLOB;

CREATE TABLE commands (
    id             TEXT PRIMARY KEY,        -- 32 lowercase hex (random 128-bit)
    device_id      TEXT NOT NULL REFERENCES devices (id),
    action         TEXT NOT NULL,           -- JSON of the action
    action_kind    TEXT NOT NULL,
    -- queued | sent | accepted | running | succeeded | failed | rejected | expired | cancelled
    status         TEXT NOT NULL,
    reason         TEXT,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    answer_timeout_ms INTEGER NOT NULL,
    issued_at      INTEGER,
    sent_at        INTEGER,                 -- first delivery
    resent_at      INTEGER,                 -- latest re-delivery (not yet accepted)
    accepted_at    INTEGER,
    started_at     INTEGER,
    finished_at    INTEGER,
    exit_code      INTEGER,
    duration_ms    BIGINT,
    stdout         BLOB,
    stdout_len     BIGINT,
    stdout_sha256  TEXT,
    stderr         BLOB,
    stderr_len     BIGINT,
    stderr_sha256  TEXT,
    receipt        BLOB,                    -- the last signed receipt body, as received
    receipt_signature BLOB
);
CREATE INDEX commands_status ON commands (status, expires_at);
CREATE INDEX commands_device ON commands (device_id, created_at);
