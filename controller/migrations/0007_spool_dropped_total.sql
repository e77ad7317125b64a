-- Samples each device's spool has dropped, ever (a Prometheus counter per device). Kept
-- up to date at ingest from newly stored samples only, so re-sent samples do not count twice.
ALTER TABLE devices ADD COLUMN spool_dropped_total BIGINT NOT NULL DEFAULT 0;

UPDATE devices SET spool_dropped_total =
    COALESCE((SELECT SUM(t.spool_dropped) FROM telemetry t WHERE t.device_id = devices.id), 0);
