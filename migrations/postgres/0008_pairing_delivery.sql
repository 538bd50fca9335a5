-- Pairing requests remember their delivery (the last `mode:pair` push and how many) and
-- may be cancelled. The same columns and view as migrations/sqlite/0008.
ALTER TABLE pairing_requests ADD COLUMN delivered_at TEXT;
ALTER TABLE pairing_requests ADD COLUMN deliveries BIGINT NOT NULL DEFAULT 0;
ALTER TABLE pairing_requests ADD COLUMN cancelled_at TEXT;

CREATE VIEW pairing_overview AS
SELECT
    pair_id,
    lock_serial,
    name,
    item_type,
    CASE
        WHEN completed_at IS NOT NULL THEN 'completed'
        WHEN cancelled_at IS NOT NULL THEN 'cancelled'
        WHEN expires_at <= to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
            THEN 'expired'
        ELSE 'pending'
    END AS state,
    created_at,
    expires_at,
    delivered_at,
    deliveries,
    completed_at,
    cancelled_at
FROM pairing_requests
ORDER BY created_at DESC, id DESC;
