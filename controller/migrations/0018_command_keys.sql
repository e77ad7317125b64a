-- The command key history. Every key the controller has signed commands with; each after
-- the first carries the previous key's signature of it, so a device that pins an old key
-- follows the chain to the newest (a TrustCommandKeys announcement). During a rotation's
-- overlap the previous keys still sign commands for the devices that have not confirmed
-- the new one.
CREATE TABLE command_keys (
    key_id        TEXT PRIMARY KEY,        -- 16 hex: the key's id
    public_key    BLOB NOT NULL,           -- 32 bytes, Ed25519
    signed_by     TEXT,                    -- the previous key's id; NULL for the first
    signature     BLOB,                    -- the previous key's signature of this key
    created_at    BIGINT NOT NULL,
    retire_at     BIGINT,                  -- once superseded: when it stops signing
    announce_from BIGINT NOT NULL          -- confirmations older than this do not count
);

-- Which command keys each device trusts: confirmed announcements, and the key handed out
-- at enrollment.
CREATE TABLE command_key_acks (
    device_id  TEXT NOT NULL REFERENCES devices (id),
    key_id     TEXT NOT NULL,
    command_id TEXT,                       -- the announcement; NULL for enrollment
    acked_at   BIGINT NOT NULL,
    PRIMARY KEY (device_id, key_id)
);
