-- Append-only logs: every access decision and every lock event. The same tables as
-- migrations/sqlite/0003.
CREATE TABLE access_decisions (
    id              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lock_serial     TEXT    NOT NULL,
    -- Serial of the tag or phone presented to the lock.
    item            TEXT    NOT NULL,
    -- Name of the device that relayed the request.
    device          TEXT    NOT NULL,
    -- 1 granted, 0 refused (an integer, as on SQLite, so queries read the same).
    granted         SMALLINT NOT NULL CHECK (granted IN (0, 1)),
    -- Name of the paired item when granted, NULL when refused.
    user_name       TEXT,
    decided_at      TEXT    NOT NULL
);

CREATE INDEX access_decisions_by_lock_time ON access_decisions (lock_serial, decided_at);

CREATE TABLE lock_events (
    id              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lock_serial     TEXT    NOT NULL,
    -- Name of the device that relayed the event.
    from_device     TEXT    NOT NULL,
    -- The event payload.
    message         JSONB   NOT NULL,
    received_at     TEXT    NOT NULL
);

CREATE INDEX lock_events_by_lock_time ON lock_events (lock_serial, received_at);
