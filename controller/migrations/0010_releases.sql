-- Application releases. The archive and the signed manifest are files under the data dir's
-- releases/ folder, named by their SHA-256; a row records what they hold and where they
-- came from.

CREATE TABLE releases (
    id              INTEGER PRIMARY KEY,
    app             TEXT NOT NULL,
    release         BIGINT NOT NULL,         -- per-app number from release_numbers
    version         TEXT NOT NULL,
    archive_sha256  TEXT NOT NULL,           -- 64 lowercase hex: releases/<sha>.tar.gz
    archive_size    BIGINT NOT NULL,
    unpacked_size   BIGINT NOT NULL,
    entries         BIGINT NOT NULL,
    arches          TEXT NOT NULL,           -- JSON array of `uname -m` names; empty: any
    health          TEXT NOT NULL,           -- JSON of the health spec
    hooks           TEXT NOT NULL,           -- JSON array of hook names
    key_id          TEXT NOT NULL,           -- 16 hex: the release key that signed it
    manifest_sha256 TEXT NOT NULL,           -- 64 lowercase hex: releases/<sha>.manifest
    source_kind     TEXT NOT NULL,           -- upload | git
    source_name     TEXT,                    -- upload: the file name the operator gave
    source_url      TEXT,                    -- git: the repository, credentials removed
    source_rev      TEXT,                    -- git: the full commit SHA
    created_at      BIGINT NOT NULL,
    created_by      TEXT NOT NULL,
    UNIQUE (app, release),
    UNIQUE (app, archive_sha256)
);
CREATE INDEX releases_archive ON releases (archive_sha256);

-- The last release number each app was given. Numbers only grow: deleting the newest
-- release does not hand its number out again (a device may have installed it).
CREATE TABLE release_numbers (
    app  TEXT PRIMARY KEY,
    last BIGINT NOT NULL
);
