-- Exact list totals without a COUNT(*) per request (issue 8, decision D48),
-- and the composite indexes that combined list filters need.
--
-- `list_counts` holds one row per (list, scope, facet):
--   list 'users':  user_id 0, url_id 0, facet ''                 (all users)
--   list 'urls':   user_id 0 or the owner, url_id 0,
--                  facet 'active' | 'inactive'
--   list 'events': (user_id 0, url_id 0), (the event's user_id, 0) and
--                  (0, the event's url_id), facet = the event type
-- A total is the sum of the matching rows of `list_counts` and of
-- `list_count_deltas`. Statement-level triggers append a delta row per
-- touched key (aggregated over the statement, in the writer's transaction);
-- nothing ever updates a shared counter row on the write path, so
-- concurrent writers never wait on each other. The links service folds the
-- deltas into `list_counts` in the background (`compact_list_counts`).
--
-- Writers block for the whole migration (the lock below), so the backfill
-- and the triggers agree exactly. On a large database create the three new
-- indexes CONCURRENTLY by hand first (docs/RUNBOOKS.md); the IF NOT EXISTS
-- below then skips them.
LOCK TABLE users, urls, events IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE list_counts (
    list    TEXT   NOT NULL,
    user_id BIGINT NOT NULL,
    url_id  BIGINT NOT NULL,
    facet   TEXT   NOT NULL,
    n       BIGINT NOT NULL,
    PRIMARY KEY (list, user_id, url_id, facet)
);

CREATE TABLE list_count_deltas (
    list    TEXT   NOT NULL,
    user_id BIGINT NOT NULL,
    url_id  BIGINT NOT NULL,
    facet   TEXT   NOT NULL,
    n       BIGINT NOT NULL
);
CREATE INDEX list_count_deltas_key_idx ON list_count_deltas (list, user_id, url_id, facet);

CREATE FUNCTION list_counts_users() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO list_count_deltas (list, user_id, url_id, facet, n)
        SELECT 'users', 0, 0, '', COUNT(*) FROM new_rows HAVING COUNT(*) > 0;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO list_count_deltas (list, user_id, url_id, facet, n)
        SELECT 'users', 0, 0, '', -COUNT(*) FROM old_rows HAVING COUNT(*) > 0;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION list_counts_urls() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO list_count_deltas (list, user_id, url_id, facet, n)
        SELECT 'urls', COALESCE(c.user_id, 0), 0, c.facet, SUM(c.d)
        FROM (SELECT user_id, CASE WHEN is_active THEN 'active' ELSE 'inactive' END AS facet, 1 AS d
              FROM new_rows) c
        GROUP BY GROUPING SETS ((c.user_id, c.facet), (c.facet))
        HAVING SUM(c.d) <> 0;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO list_count_deltas (list, user_id, url_id, facet, n)
        SELECT 'urls', COALESCE(c.user_id, 0), 0, c.facet, SUM(c.d)
        FROM (SELECT user_id, CASE WHEN is_active THEN 'active' ELSE 'inactive' END AS facet, 1 AS d
              FROM new_rows
              UNION ALL
              SELECT user_id, CASE WHEN is_active THEN 'active' ELSE 'inactive' END, -1
              FROM old_rows) c
        GROUP BY GROUPING SETS ((c.user_id, c.facet), (c.facet))
        HAVING SUM(c.d) <> 0;
    ELSE
        INSERT INTO list_count_deltas (list, user_id, url_id, facet, n)
        SELECT 'urls', COALESCE(c.user_id, 0), 0, c.facet, SUM(c.d)
        FROM (SELECT user_id, CASE WHEN is_active THEN 'active' ELSE 'inactive' END AS facet, -1 AS d
              FROM old_rows) c
        GROUP BY GROUPING SETS ((c.user_id, c.facet), (c.facet))
        HAVING SUM(c.d) <> 0;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION list_counts_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO list_count_deltas (list, user_id, url_id, facet, n)
        SELECT 'events', COALESCE(c.user_id, 0), COALESCE(c.url_id, 0), c.event_type, SUM(c.d)
        FROM (SELECT user_id, url_id, event_type, 1 AS d FROM new_rows) c
        GROUP BY GROUPING SETS ((c.event_type), (c.user_id, c.event_type), (c.url_id, c.event_type))
        HAVING SUM(c.d) <> 0;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO list_count_deltas (list, user_id, url_id, facet, n)
        SELECT 'events', COALESCE(c.user_id, 0), COALESCE(c.url_id, 0), c.event_type, SUM(c.d)
        FROM (SELECT user_id, url_id, event_type, 1 AS d FROM new_rows
              UNION ALL
              SELECT user_id, url_id, event_type, -1 FROM old_rows) c
        GROUP BY GROUPING SETS ((c.event_type), (c.user_id, c.event_type), (c.url_id, c.event_type))
        HAVING SUM(c.d) <> 0;
    ELSE
        INSERT INTO list_count_deltas (list, user_id, url_id, facet, n)
        SELECT 'events', COALESCE(c.user_id, 0), COALESCE(c.url_id, 0), c.event_type, SUM(c.d)
        FROM (SELECT user_id, url_id, event_type, -1 AS d FROM old_rows) c
        GROUP BY GROUPING SETS ((c.event_type), (c.user_id, c.event_type), (c.url_id, c.event_type))
        HAVING SUM(c.d) <> 0;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER users_list_counts_insert AFTER INSERT ON users
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION list_counts_users();
CREATE TRIGGER users_list_counts_delete AFTER DELETE ON users
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION list_counts_users();

CREATE TRIGGER urls_list_counts_insert AFTER INSERT ON urls
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION list_counts_urls();
CREATE TRIGGER urls_list_counts_update AFTER UPDATE ON urls
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION list_counts_urls();
CREATE TRIGGER urls_list_counts_delete AFTER DELETE ON urls
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION list_counts_urls();

CREATE TRIGGER events_list_counts_insert AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION list_counts_events();
CREATE TRIGGER events_list_counts_update AFTER UPDATE ON events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION list_counts_events();
CREATE TRIGGER events_list_counts_delete AFTER DELETE ON events
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION list_counts_events();

-- Recounts everything from the tables, under a lock that holds writers
-- back until the caller's transaction ends. The migration's backfill; also
-- what a bulk load run with triggers disabled calls afterwards
-- (scripts/bench-scale.sh), and the repair step in docs/RUNBOOKS.md.
CREATE FUNCTION list_counts_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE users, urls, events IN SHARE ROW EXCLUSIVE MODE;
    SET LOCAL work_mem = '256MB';
    TRUNCATE list_counts, list_count_deltas;
    INSERT INTO list_counts (list, user_id, url_id, facet, n)
    SELECT 'users', 0, 0, '', COUNT(*) FROM users;
    INSERT INTO list_counts (list, user_id, url_id, facet, n)
    SELECT 'urls', COALESCE(c.user_id, 0), 0, c.facet, COUNT(*)
    FROM (SELECT user_id, CASE WHEN is_active THEN 'active' ELSE 'inactive' END AS facet FROM urls) c
    GROUP BY GROUPING SETS ((c.user_id, c.facet), (c.facet));
    INSERT INTO list_counts (list, user_id, url_id, facet, n)
    SELECT 'events', COALESCE(user_id, 0), COALESCE(url_id, 0), event_type, COUNT(*)
    FROM events
    GROUP BY GROUPING SETS ((event_type), (user_id, event_type), (url_id, event_type));
END $$;

SELECT list_counts_rebuild();

-- Combined filters: /urls?user_id=&is_active= (and /users/{id}/urls?is_active=),
-- /events?url_id=&event_type= (and /urls/{id}/events?event_type=),
-- /events?user_id=&event_type=. Each lists in id order straight off the index.
CREATE INDEX IF NOT EXISTS urls_user_active_idx ON urls (user_id, is_active, id);
CREATE INDEX IF NOT EXISTS events_url_type_idx ON events (url_id, event_type, id);
CREATE INDEX IF NOT EXISTS events_user_type_idx ON events (user_id, event_type, id);
