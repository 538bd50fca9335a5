-- Devices that registered on the relay (Phoenix `relay` topic or raw /relay). The same
-- table and view as migrations/sqlite/0005.
CREATE TABLE devices (
    -- The relay name (case-insensitive, stored lower-case).
    name              TEXT    NOT NULL PRIMARY KEY,
    -- The door of the last registration: 'phoenix' or 'relay'.
    door              TEXT    NOT NULL,
    -- What the device said about itself when it last registered.
    description       TEXT,
    version           TEXT,
    interface         TEXT,
    -- First and latest registration.
    first_seen_at     TEXT    NOT NULL,
    registered_at     TEXT    NOT NULL,
    -- Latest registration or departure.
    last_seen_at      TEXT    NOT NULL,
    -- Relay packets sent and received, added up when each session of the device ends.
    packets_sent      BIGINT  NOT NULL DEFAULT 0,
    packets_received  BIGINT  NOT NULL DEFAULT 0
);

CREATE VIEW device_overview AS
SELECT
    name,
    door,
    description,
    version,
    interface,
    first_seen_at,
    last_seen_at,
    packets_sent,
    packets_received
FROM devices
ORDER BY name;
