-- Locks the hub has seen. One row per lock serial, created on the lock's first channel
-- join and never deleted by the hub. The same table as migrations/sqlite/0001_locks.sql.
--
-- Timestamps are RFC 3339 UTC text with milliseconds ("2025-01-31T12:00:00.000Z"), as on
-- SQLite, so they sort correctly as text and an administrator's query gives the same
-- answer on both stores (cast with `::timestamptz` for date arithmetic). JSON columns are
-- jsonb; the CHECK constraints keep hand edits from storing something the hub cannot read.
CREATE TABLE locks (
    -- The lock's own serial number (as sent in the "lock:<serial>" topic).
    serial          TEXT    NOT NULL PRIMARY KEY,
    -- Random v4 UUID the hub gives the lock on first sight; never changes afterwards.
    uuid            TEXT    NOT NULL UNIQUE,
    -- Human-readable name; defaults to the serial, administrators may rename.
    name            TEXT    NOT NULL,
    -- Firmware mode: 1 internal, 2 external, 3 pairing.
    mode            BIGINT  NOT NULL DEFAULT 1,
    -- JSON array of feature flag names, e.g. ["nfc", "ble"].
    feature_flags   JSONB   NOT NULL DEFAULT '[]'
                    CHECK (jsonb_typeof(feature_flags) = 'array'),
    -- JSON object of lock configuration sent in the join reply.
    config          JSONB   NOT NULL DEFAULT '{}'
                    CHECK (jsonb_typeof(config) = 'object'),
    -- JSON: the state the hub wants the lock in (set by administrators).
    intended_state  JSONB   NOT NULL DEFAULT '{"locked": true}',
    -- JSON: what the lock last reported it is; NULL until its first report.
    reported_state  JSONB,
    -- When reported_state was last written.
    reported_at     TEXT,
    -- Name of the device that last joined this lock's channel.
    holder_device   TEXT,
    -- First channel join.
    first_seen_at   TEXT    NOT NULL,
    -- Most recent channel join.
    last_seen_at    TEXT
)
-- Every join rewrites holder_device and last_seen_at (neither is indexed): room left in
-- each page lets PostgreSQL update the row in place (a HOT update, no index entry).
WITH (fillfactor = 70);
