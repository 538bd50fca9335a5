-- Pairing: an administrator asks a lock to pair a new tag or phone (a pairing request);
-- when the lock completes it, the item becomes a paired item of that lock.

CREATE TABLE pairing_requests (
    -- Random v4 UUID; the lock sends it back when it completes the pairing.
    pair_id         TEXT    NOT NULL PRIMARY KEY,
    lock_serial     TEXT    NOT NULL REFERENCES locks (serial) ON DELETE CASCADE,
    -- Name the paired item will get (usually the person it belongs to).
    name            TEXT    NOT NULL,
    item_type       TEXT    NOT NULL CHECK (item_type IN ('tag', 'mobile_phone')),
    created_at      TEXT    NOT NULL,
    -- The request is refused after this time.
    expires_at      TEXT    NOT NULL,
    -- Set when the lock completed the pairing; NULL while pending.
    completed_at    TEXT
);

CREATE INDEX pairing_requests_by_lock ON pairing_requests (lock_serial, created_at);

CREATE TABLE paired_items (
    id              INTEGER NOT NULL PRIMARY KEY,
    lock_serial     TEXT    NOT NULL REFERENCES locks (serial) ON DELETE CASCADE,
    -- The item's own serial as the lock read it (tag UID, phone id).
    item_serial     TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    item_type       TEXT    NOT NULL CHECK (item_type IN ('tag', 'mobile_phone')),
    -- The pairing request that (last) paired this item.
    pair_id         TEXT    NOT NULL REFERENCES pairing_requests (pair_id),
    paired_at       TEXT    NOT NULL,
    -- Set to revoke access without forgetting the item; NULL while active.
    revoked_at      TEXT,
    UNIQUE (lock_serial, item_serial)
);

CREATE INDEX paired_items_by_pair_id ON paired_items (pair_id);
