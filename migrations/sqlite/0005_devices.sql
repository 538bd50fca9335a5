-- Devices that registered on the relay (the Phoenix "relay" topic or the raw /relay
-- WebSocket), one row per relay name (lower-case), kept after they leave so administrators
-- can see who was there and when.
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
    packets_sent      INTEGER NOT NULL DEFAULT 0,
    packets_received  INTEGER NOT NULL DEFAULT 0
);

-- Relay devices for people reading the database:
--   sqlite3 homehub.db 'SELECT * FROM device_overview;'
-- Whether a device is connected right now is known only to the running hub
-- (`homehub devices`); last_seen_at is its latest registration or departure.
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
