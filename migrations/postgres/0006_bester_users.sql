-- Bester users: username and the argon2id hash of the password (PHC string). The same
-- table and view as migrations/sqlite/0006.
CREATE TABLE bester_users (
    username             TEXT NOT NULL PRIMARY KEY,
    password_hash        TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    password_changed_at  TEXT NOT NULL,
    last_login_at        TEXT
);

CREATE VIEW bester_user_overview AS
SELECT
    username,
    created_at,
    password_changed_at,
    last_login_at
FROM bester_users
ORDER BY username;
