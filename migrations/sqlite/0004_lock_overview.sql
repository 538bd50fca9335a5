-- One row per lock with what an administrator usually wants to see:
--   sqlite3 homehub.db 'SELECT * FROM lock_overview;'
--
-- There is no "online" column: whether a lock is connected right now is known only to the
-- running hub (connections live in memory), not to the database. Use the admin API for that.
-- last_seen_at is the time of the lock's most recent channel join.
CREATE VIEW lock_overview AS
SELECT
    serial,
    uuid,
    name,
    mode,
    intended_state,
    reported_state,
    reported_at,
    holder_device,
    last_seen_at
FROM locks;
