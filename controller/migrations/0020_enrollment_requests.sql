-- Devices enrolled by a token with `require_approval` wait as an enrollment request until an
-- admin accepts or rejects it. A request is found again by the key the device made (SHA-256
-- of its public key), so a device that asks again gets the same answer; the id it will get is
-- held for it meanwhile.
ALTER TABLE enrollment_tokens ADD COLUMN require_approval INTEGER NOT NULL DEFAULT 0;

CREATE TABLE enrollment_requests (
    id              TEXT PRIMARY KEY,
    token_id        TEXT NOT NULL REFERENCES enrollment_tokens (id),
    device_id       TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    source          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    last_seen_at    BIGINT NOT NULL,
    status          TEXT NOT NULL,   -- pending | accepted | rejected
    decided_by      TEXT,
    decided_at      BIGINT
);
CREATE UNIQUE INDEX enrollment_requests_key ON enrollment_requests (token_id, key_fingerprint);
CREATE INDEX enrollment_requests_device ON enrollment_requests (device_id);
CREATE INDEX enrollment_requests_status ON enrollment_requests (status, created_at);
