-- Exact list totals without a COUNT(*) per request (issue 8, decision D48),
-- and the composite indexes that combined list filters need. Same keys as
-- the PostgreSQL migration (see there):
--   list 'users':  user_id 0, url_id 0, facet ''
--   list 'urls':   user_id 0 or the owner, url_id 0, facet 'active' | 'inactive'
--   list 'events': (0, 0), (user_id, 0) and (0, url_id), facet = event type
-- SQLite has one writer at a time, so row triggers update `list_counts` in
-- place (no hot-row contention to avoid); `list_count_deltas` exists so both
-- backends read totals with the same statement, and stays empty here.

CREATE TABLE list_counts (
    list    TEXT    NOT NULL,
    user_id INTEGER NOT NULL,
    url_id  INTEGER NOT NULL,
    facet   TEXT    NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (list, user_id, url_id, facet)
);

CREATE TABLE list_count_deltas (
    list    TEXT    NOT NULL,
    user_id INTEGER NOT NULL,
    url_id  INTEGER NOT NULL,
    facet   TEXT    NOT NULL,
    n       INTEGER NOT NULL
);
CREATE INDEX list_count_deltas_key_idx ON list_count_deltas (list, user_id, url_id, facet);

CREATE TRIGGER users_list_counts_insert AFTER INSERT ON users BEGIN
    INSERT INTO list_counts (list, user_id, url_id, facet, n) VALUES ('users', 0, 0, '', 1)
    ON CONFLICT (list, user_id, url_id, facet) DO UPDATE SET n = n + excluded.n;
END;
CREATE TRIGGER users_list_counts_delete AFTER DELETE ON users BEGIN
    INSERT INTO list_counts (list, user_id, url_id, facet, n) VALUES ('users', 0, 0, '', -1)
    ON CONFLICT (list, user_id, url_id, facet) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER urls_list_counts_insert AFTER INSERT ON urls BEGIN
    INSERT INTO list_counts (list, user_id, url_id, facet, n) VALUES
        ('urls', 0, 0, CASE WHEN NEW.is_active THEN 'active' ELSE 'inactive' END, 1),
        ('urls', NEW.user_id, 0, CASE WHEN NEW.is_active THEN 'active' ELSE 'inactive' END, 1)
    ON CONFLICT (list, user_id, url_id, facet) DO UPDATE SET n = n + excluded.n;
END;
CREATE TRIGGER urls_list_counts_update AFTER UPDATE OF user_id, is_active ON urls
WHEN OLD.user_id IS NOT NEW.user_id OR OLD.is_active IS NOT NEW.is_active BEGIN
    INSERT INTO list_counts (list, user_id, url_id, facet, n) VALUES
        ('urls', 0, 0, CASE WHEN OLD.is_active THEN 'active' ELSE 'inactive' END, -1),
        ('urls', OLD.user_id, 0, CASE WHEN OLD.is_active THEN 'active' ELSE 'inactive' END, -1),
        ('urls', 0, 0, CASE WHEN NEW.is_active THEN 'active' ELSE 'inactive' END, 1),
        ('urls', NEW.user_id, 0, CASE WHEN NEW.is_active THEN 'active' ELSE 'inactive' END, 1)
    ON CONFLICT (list, user_id, url_id, facet) DO UPDATE SET n = n + excluded.n;
END;
CREATE TRIGGER urls_list_counts_delete AFTER DELETE ON urls BEGIN
    INSERT INTO list_counts (list, user_id, url_id, facet, n) VALUES
        ('urls', 0, 0, CASE WHEN OLD.is_active THEN 'active' ELSE 'inactive' END, -1),
        ('urls', OLD.user_id, 0, CASE WHEN OLD.is_active THEN 'active' ELSE 'inactive' END, -1)
    ON CONFLICT (list, user_id, url_id, facet) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER events_list_counts_insert AFTER INSERT ON events BEGIN
    INSERT INTO list_counts (list, user_id, url_id, facet, n) VALUES
        ('events', 0, 0, NEW.event_type, 1),
        ('events', NEW.user_id, 0, NEW.event_type, 1),
        ('events', 0, NEW.url_id, NEW.event_type, 1)
    ON CONFLICT (list, user_id, url_id, facet) DO UPDATE SET n = n + excluded.n;
END;
CREATE TRIGGER events_list_counts_update AFTER UPDATE OF url_id, user_id, event_type ON events
WHEN OLD.url_id IS NOT NEW.url_id OR OLD.user_id IS NOT NEW.user_id
  OR OLD.event_type IS NOT NEW.event_type BEGIN
    INSERT INTO list_counts (list, user_id, url_id, facet, n) VALUES
        ('events', 0, 0, OLD.event_type, -1),
        ('events', OLD.user_id, 0, OLD.event_type, -1),
        ('events', 0, OLD.url_id, OLD.event_type, -1),
        ('events', 0, 0, NEW.event_type, 1),
        ('events', NEW.user_id, 0, NEW.event_type, 1),
        ('events', 0, NEW.url_id, NEW.event_type, 1)
    ON CONFLICT (list, user_id, url_id, facet) DO UPDATE SET n = n + excluded.n;
END;
CREATE TRIGGER events_list_counts_delete AFTER DELETE ON events BEGIN
    INSERT INTO list_counts (list, user_id, url_id, facet, n) VALUES
        ('events', 0, 0, OLD.event_type, -1),
        ('events', OLD.user_id, 0, OLD.event_type, -1),
        ('events', 0, OLD.url_id, OLD.event_type, -1)
    ON CONFLICT (list, user_id, url_id, facet) DO UPDATE SET n = n + excluded.n;
END;

-- Backfill (the migration runs in one transaction, which on SQLite holds
-- the write lock throughout, so no write slips between count and trigger).
INSERT INTO list_counts (list, user_id, url_id, facet, n)
SELECT 'users', 0, 0, '', COUNT(*) FROM users;
INSERT INTO list_counts (list, user_id, url_id, facet, n)
SELECT 'urls', 0, 0, CASE WHEN is_active THEN 'active' ELSE 'inactive' END, COUNT(*)
FROM urls GROUP BY 4;
INSERT INTO list_counts (list, user_id, url_id, facet, n)
SELECT 'urls', user_id, 0, CASE WHEN is_active THEN 'active' ELSE 'inactive' END, COUNT(*)
FROM urls GROUP BY 2, 4;
INSERT INTO list_counts (list, user_id, url_id, facet, n)
SELECT 'events', 0, 0, event_type, COUNT(*) FROM events GROUP BY event_type;
INSERT INTO list_counts (list, user_id, url_id, facet, n)
SELECT 'events', user_id, 0, event_type, COUNT(*) FROM events GROUP BY user_id, event_type;
INSERT INTO list_counts (list, user_id, url_id, facet, n)
SELECT 'events', 0, url_id, event_type, COUNT(*) FROM events GROUP BY url_id, event_type;

CREATE INDEX IF NOT EXISTS urls_user_active_idx ON urls (user_id, is_active, id);
CREATE INDEX IF NOT EXISTS events_url_type_idx ON events (url_id, event_type, id);
CREATE INDEX IF NOT EXISTS events_user_type_idx ON events (user_id, event_type, id);
