-- Users of the Bester door (spec §4): a client's first message authenticates with a
-- username and password checked against these rows. Passwords are never stored: only
-- their argon2id hash, a PHC string with its own random salt and parameters
-- ("$argon2id$v=19$m=...,t=...,p=...$salt$hash").
CREATE TABLE bester_users (
    -- 1-64 chars of A-Za-z0-9._- (case-sensitive).
    username             TEXT NOT NULL PRIMARY KEY,
    password_hash        TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    password_changed_at  TEXT NOT NULL,
    -- Latest successful authentication, if any.
    last_login_at        TEXT
);

-- Bester users for people reading the database, without the hashes:
--   sqlite3 homehub.db 'SELECT * FROM bester_user_overview;'
CREATE VIEW bester_user_overview AS
SELECT
    username,
    created_at,
    password_changed_at,
    last_login_at
FROM bester_users
ORDER BY username;
