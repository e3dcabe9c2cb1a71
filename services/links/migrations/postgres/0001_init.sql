-- Users, short links and their events.
CREATE TABLE users (
    id         BIGSERIAL PRIMARY KEY,
    username   TEXT        NOT NULL UNIQUE,
    email      TEXT        NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE urls (
    id           BIGSERIAL PRIMARY KEY,
    user_id      BIGINT      NOT NULL REFERENCES users (id),
    short_code   TEXT        NOT NULL UNIQUE,
    original_url TEXT        NOT NULL,
    title        TEXT,
    is_active    BOOLEAN     NOT NULL DEFAULT TRUE,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX urls_user_id_idx ON urls (user_id, id);
CREATE INDEX urls_is_active_idx ON urls (is_active, id);

CREATE TABLE events (
    id         BIGSERIAL PRIMARY KEY,
    url_id     BIGINT      NOT NULL REFERENCES urls (id),
    user_id    BIGINT      NOT NULL REFERENCES users (id),
    event_type TEXT        NOT NULL,
    timestamp  TIMESTAMPTZ NOT NULL,
    details    JSONB       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX events_url_id_idx ON events (url_id, id);
CREATE INDEX events_user_id_idx ON events (user_id, id);
CREATE INDEX events_type_idx ON events (event_type, id);
