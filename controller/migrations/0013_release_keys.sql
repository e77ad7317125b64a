-- Which release keys each device confirmed it trusts. The controller announces its release
-- keys (a signed TrustReleaseKeys command) to every device that has not confirmed them, so
-- devices enrolled before releases existed learn them without enrolling again.
CREATE TABLE release_key_acks (
    device_id  TEXT NOT NULL REFERENCES devices (id),
    key_id     TEXT NOT NULL,              -- 16 hex: the release key's id
    command_id TEXT NOT NULL,              -- the announcement the device confirmed
    acked_at   BIGINT NOT NULL,
    PRIMARY KEY (device_id, key_id)
);

-- Devices name a release by its signed manifest's SHA-256 when they download it.
CREATE INDEX releases_manifest ON releases (manifest_sha256);
