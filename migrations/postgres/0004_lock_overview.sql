-- One row per lock with what an administrator usually wants to see:
--   psql "$DATABASE_URL" -c 'SELECT * FROM lock_overview'
--
-- There is no "online" column: whether a lock is connected right now is known only to the
-- running hubs, not to the database. Use the admin API for that.
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
