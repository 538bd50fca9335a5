-- Hub-wide settings (the device-token signing key) and issued device tokens (never the
-- tokens themselves). The same tables as migrations/sqlite/0007.
CREATE TABLE hub_settings (
    key             TEXT    NOT NULL PRIMARY KEY,
    value           TEXT    NOT NULL
);

CREATE TABLE device_tokens (
    id              TEXT    NOT NULL PRIMARY KEY,
    device          TEXT    NOT NULL,
    issued_at       TEXT    NOT NULL,
    expires_at      TEXT    NOT NULL,
    revoked_at      TEXT
);

CREATE INDEX device_tokens_by_device ON device_tokens (device, issued_at);
