-- Click analytics: an idempotency key on events and per-link click counts.
ALTER TABLE events ADD COLUMN dedupe_key TEXT;
CREATE UNIQUE INDEX events_dedupe_key_idx ON events (dedupe_key);

CREATE TABLE link_clicks (
    url_id        INTEGER PRIMARY KEY REFERENCES urls (id),
    clicks        INTEGER NOT NULL DEFAULT 0,
    last_click_at TEXT
);
