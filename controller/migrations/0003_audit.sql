-- Append-only, hash-chained audit log. Each row's hash covers its fields and the previous
-- row's hash, so an edited, inserted or deleted row breaks the chain at that point.
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,   -- 1, 2, 3, … without gaps
    at         INTEGER NOT NULL,      -- Unix ms
    actor      TEXT NOT NULL,
    source     TEXT NOT NULL,         -- client IP, or "local" for the CLI
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
