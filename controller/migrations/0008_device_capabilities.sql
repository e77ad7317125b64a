-- What each device's allowlist lets commands do, and the state of its allowlisted units, as
-- last reported by the agent (JSON; NULL until the first report).
ALTER TABLE devices ADD COLUMN capabilities TEXT;
ALTER TABLE devices ADD COLUMN capabilities_at BIGINT;
ALTER TABLE devices ADD COLUMN services TEXT;
ALTER TABLE devices ADD COLUMN services_at BIGINT;
