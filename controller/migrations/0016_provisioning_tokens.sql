-- Provisioning tokens: an enrollment token that enrolls up to `max_uses` devices (NULL: a
-- single-use token, spent through `used_at` as before). `uses` counts enrollments so far.
ALTER TABLE enrollment_tokens ADD COLUMN max_uses BIGINT;
ALTER TABLE enrollment_tokens ADD COLUMN uses BIGINT NOT NULL DEFAULT 0;
-- The token that enrolled each device (devices enrolled before this column: NULL).
ALTER TABLE devices ADD COLUMN enrolled_by TEXT;
