-- Indexes for the admin API's listings. The command list is newest first across all
-- devices; without this it sorts the whole table for every page.
CREATE INDEX commands_created ON commands (created_at, id);
