-- A lock's "shadow": the state the hub wants (intended, with a version that grows with
-- every change) against the state the lock last reported, and whether the lock drifts,
-- i.e. did not report the intended state within HOMEHUB_STATE_DRIFT_MS of the hub's push.

-- 1 for a new lock; every change of intended_state adds 1. `PUT /api/locks/{serial}/state`
-- with `If-Match: <version>` changes it only if it is still that version.
ALTER TABLE locks ADD COLUMN intended_version BIGINT NOT NULL DEFAULT 1;
-- When intended_state last changed; NULL while it is the default of the lock's first join.
ALTER TABLE locks ADD COLUMN intended_at TEXT;
-- Since when the lock has not reported its intended state although the hub pushed it (the
-- hub pushes it again, with a growing pause); NULL when it is not drifting.
ALTER TABLE locks ADD COLUMN drifting_since TEXT;

-- One row per lock with what an administrator usually wants to see:
--   psql homehub -c 'SELECT * FROM lock_overview;'
--   psql homehub -c 'SELECT serial, intended_state, reported_state FROM lock_overview WHERE drifting = 1;'
--
-- in_agreement and drifting are 1 or 0, as on SQLite. in_agreement: the lock's last report
-- equals the intended state (as JSON values). There is
-- no "online" column: whether a lock is connected right now is known only to the running
-- hubs, not to the database. Use the admin API for that. last_seen_at is the time of the
-- lock's most recent channel join.
DROP VIEW lock_overview;
CREATE VIEW lock_overview AS
SELECT
    serial,
    uuid,
    name,
    mode,
    intended_state,
    intended_version,
    intended_at,
    reported_state,
    reported_at,
    (reported_state IS NOT NULL AND reported_state = intended_state)::INTEGER AS in_agreement,
    (drifting_since IS NOT NULL)::INTEGER AS drifting,
    drifting_since,
    holder_device,
    last_seen_at
FROM locks;
