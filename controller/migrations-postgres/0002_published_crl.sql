-- The latest signed CRL (SQLite's 0021_published_crl.sql says what for), same shape.
CREATE TABLE published_crl (
    id           BIGINT PRIMARY KEY CHECK (id = 1),
    number       BIGINT NOT NULL,
    pem          TEXT NOT NULL,
    published_at BIGINT NOT NULL
);
