-- What the agents' service watchdog reported about their allowlisted units: crash loops,
-- flapping, systemd giving up (start-limit-hit), the watchdog's own starts, a spent daily
-- budget of starts, recoveries. Bounded per device: ingest keeps the newest 200 and nothing
-- older than 30 days (see store/unit_events.rs).
CREATE TABLE unit_events (
    id        INTEGER PRIMARY KEY,          -- insertion order
    device_id TEXT NOT NULL REFERENCES devices (id),
    unit      TEXT NOT NULL,
    kind      TEXT NOT NULL,                -- crash_loop | flapping | gave_up | starting | budget_spent | recovered
    detail    TEXT NOT NULL,                -- e.g. "3 restarts within the watch window"
    at        BIGINT NOT NULL               -- when the controller stored it, Unix ms
);

CREATE INDEX unit_events_device ON unit_events (device_id, id);
