-- Pairing: requests an administrator makes ("pair a new tag with lock X") and the items
-- (tags, phones) paired with each lock. The same tables as migrations/sqlite/0002.
CREATE TABLE pairing_requests (
    pair_id         TEXT    NOT NULL PRIMARY KEY,
    lock_serial     TEXT    NOT NULL REFERENCES locks (serial) ON DELETE CASCADE,
    -- Label for the item once paired ("Alice's card").
    name            TEXT    NOT NULL,
    item_type       TEXT    NOT NULL CHECK (item_type IN ('tag', 'mobile_phone')),
    created_at      TEXT    NOT NULL,
    expires_at      TEXT    NOT NULL,
    -- Set when the lock reports pair:complete.
    completed_at    TEXT,
    -- Insertion order, which SQLite keeps as its rowid: breaks ties of created_at.
    id              BIGINT  GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE INDEX pairing_requests_by_lock ON pairing_requests (lock_serial, created_at);

CREATE TABLE paired_items (
    id              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lock_serial     TEXT    NOT NULL REFERENCES locks (serial) ON DELETE CASCADE,
    -- Serial of the tag or phone, as reported by the lock.
    item_serial     TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    item_type       TEXT    NOT NULL CHECK (item_type IN ('tag', 'mobile_phone')),
    pair_id         TEXT    NOT NULL REFERENCES pairing_requests (pair_id),
    paired_at       TEXT    NOT NULL,
    -- Set when an administrator revokes the item; access is then refused.
    revoked_at      TEXT,
    UNIQUE (lock_serial, item_serial)
);

CREATE INDEX paired_items_by_pair_id ON paired_items (pair_id);

-- PostgreSQL only: tells every hub process sharing this database that a pairing request
-- was created (the payload is its expires_at), so each one pushes it to the lock when the
-- lock joins that process, whichever process created it.
CREATE FUNCTION homehub_pairing_request_created() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('homehub_pairing_requests', NEW.expires_at);
    RETURN NULL;
END
$$;

CREATE TRIGGER pairing_requests_notify AFTER INSERT ON pairing_requests
    FOR EACH ROW EXECUTE FUNCTION homehub_pairing_request_created();
