-- Pairing requests reach locks that were offline when they were made: the hub pushes a
-- pending, unexpired request (mode:pair) right after each join of its lock, until the lock
-- completes it, it expires, or an administrator cancels it.

-- When mode:pair last went out to the lock (at the request, or after a join); NULL while
-- the lock has not been sent it.
ALTER TABLE pairing_requests ADD COLUMN delivered_at TEXT;
-- How many times mode:pair went out for this request.
ALTER TABLE pairing_requests ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 0;
-- Set when an administrator cancelled the request (`homehub pair --cancel PAIR_ID`); a
-- cancelled request is never pushed again and its pair:complete is refused.
ALTER TABLE pairing_requests ADD COLUMN cancelled_at TEXT;

-- Pairing requests with their state in words, newest first:
--   sqlite3 homehub.db 'SELECT * FROM pairing_overview;'
-- state is 'completed', 'cancelled', 'expired' or 'pending' (expires_at compared as text,
-- which is correct for the hub's RFC 3339 UTC timestamps).
CREATE VIEW pairing_overview AS
SELECT
    pair_id,
    lock_serial,
    name,
    item_type,
    CASE
        WHEN completed_at IS NOT NULL THEN 'completed'
        WHEN cancelled_at IS NOT NULL THEN 'cancelled'
        WHEN expires_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now') THEN 'expired'
        ELSE 'pending'
    END AS state,
    created_at,
    expires_at,
    delivered_at,
    deliveries,
    completed_at,
    cancelled_at
FROM pairing_requests
ORDER BY created_at DESC;
