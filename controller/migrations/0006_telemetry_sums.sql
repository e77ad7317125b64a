-- Per-sample totals over disks and network interfaces, computed at ingest, so history
-- queries over long ranges aggregate plain columns instead of parsing JSON per row.
ALTER TABLE telemetry ADD COLUMN disk_used BIGINT;
ALTER TABLE telemetry ADD COLUMN disk_total BIGINT;
ALTER TABLE telemetry ADD COLUMN net_rx BIGINT;
ALTER TABLE telemetry ADD COLUMN net_tx BIGINT;

UPDATE telemetry SET
    disk_used  = (SELECT CAST(TOTAL(j.value ->> 'used_bytes') AS INTEGER) FROM json_each(disks) j),
    disk_total = (SELECT CAST(TOTAL(j.value ->> 'total_bytes') AS INTEGER) FROM json_each(disks) j),
    net_rx     = (SELECT CAST(TOTAL(j.value ->> 'rx_bytes') AS INTEGER) FROM json_each(nets) j),
    net_tx     = (SELECT CAST(TOTAL(j.value ->> 'tx_bytes') AS INTEGER) FROM json_each(nets) j);
