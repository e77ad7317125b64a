-- Two-person approval: a fleet-wide action waits here until a second admin approves it.
-- `request` is the exact request (JSON); `targets` the device set bound at approval time.
CREATE TABLE approvals (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    request       TEXT NOT NULL,
    summary       TEXT NOT NULL,
    device_count  BIGINT NOT NULL,
    requested_by  TEXT NOT NULL,
    requester_id  BIGINT,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    status        TEXT NOT NULL,
    decided_by    TEXT,
    decided_at    BIGINT,
    targets       TEXT,
    outcome       TEXT
);
CREATE INDEX approvals_status ON approvals (status, created_at);
