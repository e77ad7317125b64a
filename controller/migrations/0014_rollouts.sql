-- The apps each device allowlists and the release each runs, as last reported (JSON).
ALTER TABLE devices ADD COLUMN apps TEXT;
ALTER TABLE devices ADD COLUMN apps_at BIGINT;

-- Rollouts: a release taken to a set of devices in batches. `settings` is the validated
-- spec (JSON); the changing fields are columns so the runner updates them in place.
CREATE TABLE rollouts (
    id               INTEGER PRIMARY KEY,
    -- No foreign key: a finished rollout outlives its release (the app and number stay).
    release_id       INTEGER NOT NULL,
    app              TEXT NOT NULL,
    release          BIGINT NOT NULL,
    selector         TEXT NOT NULL,         -- JSON: the targets as asked
    settings         TEXT NOT NULL,         -- JSON of the rollout's settings
    status           TEXT NOT NULL,         -- draft | awaiting_approval | running | paused | completed | aborted
    batch            BIGINT NOT NULL,       -- index of the current batch (0 = canary)
    pause_cause      TEXT,
    waiver_batch     BIGINT,
    waiver_failures  BIGINT,
    waiver_results   BIGINT,
    revert_on_abort  BIGINT NOT NULL DEFAULT 0,
    version          BIGINT NOT NULL DEFAULT 0, -- bumped by every change (optimistic locking)
    reason           TEXT,                  -- the latest change, in words
    approval_id      TEXT,                  -- the approval request, when one was needed
    next_check_at    BIGINT,                -- when the runner looks again without a report
    created_by       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX rollouts_status ON rollouts (status);
CREATE INDEX rollouts_release ON rollouts (release_id);

-- Each device of a rollout and where it is.
CREATE TABLE rollout_devices (
    rollout_id       INTEGER NOT NULL REFERENCES rollouts (id),
    device_id        TEXT NOT NULL REFERENCES devices (id),
    position         BIGINT NOT NULL,       -- order within the rollout (the canary first)
    batch            BIGINT NOT NULL,
    state            TEXT NOT NULL,
    queued_at        BIGINT,
    started_at       BIGINT,
    finished_at      BIGINT,
    revertible       BIGINT NOT NULL,       -- 1: an earlier release to go back to
    previous_release BIGINT,                -- the release it ran before, if known
    command_id       TEXT,                  -- the latest deploy or revert command
    phase            TEXT,                  -- latest progress: downloading | installing
    bytes            BIGINT,
    total            BIGINT,
    reason           TEXT,                  -- why it ended as it did
    journal          TEXT,                  -- the unit's last journal lines, on a failure
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_command ON rollout_devices (command_id);
CREATE INDEX rollout_devices_device ON rollout_devices (device_id);

-- What happened to a rollout, in order: operator actions and the runner's decisions.
CREATE TABLE rollout_events (
    rollout_id INTEGER NOT NULL REFERENCES rollouts (id),
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    text       TEXT NOT NULL
);
CREATE INDEX rollout_events_rollout ON rollout_events (rollout_id, at);
