-- The latest signed CRL, kept in the database beside the revoked certificates it lists, so
-- that a process with no data dir (`pifleet-controller broker-sync`, beside an external
-- broker on another host) can install it. One row (id 1); a CRL with a lower number never
-- replaces a higher one (`Store::store_crl`).
CREATE TABLE published_crl (
    id           BIGINT PRIMARY KEY CHECK (id = 1),
    number       BIGINT NOT NULL,
    pem          TEXT NOT NULL,
    published_at BIGINT NOT NULL
);
