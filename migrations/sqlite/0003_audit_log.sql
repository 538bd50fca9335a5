-- Append-only logs. lock_serial deliberately has no foreign key here: the log must never
-- refuse a write (an access decision is logged even for a lock the hub does not know) and
-- it should outlive a lock that is deleted.

-- Every access:request the hub answered.
CREATE TABLE access_decisions (
    id              INTEGER NOT NULL PRIMARY KEY,
    lock_serial     TEXT    NOT NULL,
    -- Serial of the tag or phone presented to the lock.
    item            TEXT    NOT NULL,
    -- Name of the device that relayed the request.
    device          TEXT    NOT NULL,
    -- 1 granted, 0 refused.
    granted         INTEGER NOT NULL CHECK (granted IN (0, 1)),
    -- Name of the paired item when granted, NULL when refused.
    user_name       TEXT,
    decided_at      TEXT    NOT NULL
);

CREATE INDEX access_decisions_by_lock_time ON access_decisions (lock_serial, decided_at);

-- Firmware "event" messages, verbatim.
CREATE TABLE lock_events (
    id              INTEGER NOT NULL PRIMARY KEY,
    lock_serial     TEXT    NOT NULL,
    -- Name of the device that relayed the event.
    from_device     TEXT    NOT NULL,
    -- The event payload as JSON text.
    message         TEXT    NOT NULL CHECK (json_valid(message)),
    received_at     TEXT    NOT NULL
);

CREATE INDEX lock_events_by_lock_time ON lock_events (lock_serial, received_at);
