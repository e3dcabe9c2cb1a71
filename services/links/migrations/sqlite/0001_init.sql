-- Users, short links and their events (SQLite twin of the PostgreSQL schema).
CREATE TABLE users (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    username   TEXT    NOT NULL UNIQUE,
    email      TEXT    NOT NULL UNIQUE,
    created_at TEXT    NOT NULL
);

CREATE TABLE urls (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      INTEGER NOT NULL REFERENCES users (id),
    short_code   TEXT    NOT NULL UNIQUE,
    original_url TEXT    NOT NULL,
    title        TEXT,
    is_active    BOOLEAN NOT NULL DEFAULT TRUE,
    created_at   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL
);
CREATE INDEX urls_user_id_idx ON urls (user_id, id);
CREATE INDEX urls_is_active_idx ON urls (is_active, id);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    url_id     INTEGER NOT NULL REFERENCES urls (id),
    user_id    INTEGER NOT NULL REFERENCES users (id),
    event_type TEXT    NOT NULL,
    timestamp  TEXT    NOT NULL,
    details    TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX events_url_id_idx ON events (url_id, id);
CREATE INDEX events_user_id_idx ON events (user_id, id);
CREATE INDEX events_type_idx ON events (event_type, id);
