-- Hub-wide settings the hub generates itself, e.g. the key that signs device tokens when
-- HOMEHUB_SECRET_KEY is not set. Treat this table as secret.
CREATE TABLE hub_settings (
    key             TEXT    NOT NULL PRIMARY KEY,
    value           TEXT    NOT NULL
);

-- Device tokens issued by `homehub token issue` / POST /api/tokens (the tokens themselves
-- are never stored, only their ids). A revoked token is refused at connect.
CREATE TABLE device_tokens (
    -- The token's id (its "jti" claim).
    id              TEXT    NOT NULL PRIMARY KEY,
    -- The device name the token was issued to.
    device          TEXT    NOT NULL,
    issued_at       TEXT    NOT NULL,
    expires_at      TEXT    NOT NULL,
    -- Set when an administrator revoked the token; NULL while valid.
    revoked_at      TEXT
);

CREATE INDEX device_tokens_by_device ON device_tokens (device, issued_at);
