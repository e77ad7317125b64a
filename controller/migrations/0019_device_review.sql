-- Devices an admin should look at: a device re-registered from its certificate after a
-- restore (enrolled after the backup, so not in the database), or presenting a
-- certificate the database does not know. `review_reason` says why; both are cleared by
-- `device review` / `POST /api/v1/devices/{id}/review`.
ALTER TABLE devices ADD COLUMN needs_review INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN review_reason TEXT;
