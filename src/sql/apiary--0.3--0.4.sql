/* src/sql/apiary--0.3--0.4.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.4'" to load this file. \quit

/*
 * Observability: per-function statistics, workflow graphs, retention.
 */

-- Statistics in shared memory (src/stats.c), in the manner of
-- pg_stat_statements: a view over a set-returning function, and a reset.
CREATE FUNCTION apiary.stats_rows(
    OUT function pg_catalog.text, OUT calls pg_catalog.int8,
    OUT errors pg_catalog.int8, OUT retries pg_catalog.int8,
    OUT total_ms pg_catalog.float8, OUT mean_ms pg_catalog.float8,
    OUT min_ms pg_catalog.float8, OUT max_ms pg_catalog.float8,
    OUT p50_ms pg_catalog.float8, OUT p99_ms pg_catalog.float8)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'apiary_stats'
    LANGUAGE C STRICT VOLATILE PARALLEL SAFE;
CREATE VIEW apiary.stats AS SELECT * FROM apiary.stats_rows();
COMMENT ON VIEW apiary.stats IS
    'per registered function: executions, errors, retries and durations (p50/p99 within 3.2%), since the last apiary_stats_reset()';
GRANT SELECT ON apiary.stats TO PUBLIC;

CREATE FUNCTION @extschema@.apiary_stats_reset()
    RETURNS void
    AS 'MODULE_PATHNAME', 'apiary_stats_reset'
    LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.apiary_stats_reset() IS
    'forget the statistics of every function (superuser, or whom it is granted to)';
REVOKE ALL ON FUNCTION @extschema@.apiary_stats_reset() FROM PUBLIC;

/*
 * A workflow as a Graphviz graph: one node per task (its function, state
 * and run time), edges from parent to child (solid), from a future to the
 * task that takes it as an argument (dashed) and from a future to the task
 * that returned it and takes its output (dotted).  Reads apiary.tasks as
 * the caller, so row-level security decides which workflows it can draw.
 */
CREATE FUNCTION @extschema@.apiary_graph(workflow pg_catalog.text)
RETURNS pg_catalog.text LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    roles regrole[];
    who regrole;
    dot text;
    esc CONSTANT text := '["\\]';
BEGIN
    IF workflow IS NULL THEN
        RAISE EXCEPTION 'workflow id must not be null' USING ERRCODE = '22004';
    END IF;
    SELECT array_agg(DISTINCT t.role) INTO roles FROM apiary.tasks t
     WHERE t.workflow OPERATOR(pg_catalog.=) apiary_graph.workflow;
    who := to_regrole(CURRENT_USER);
    IF roles IS NULL THEN
        RAISE EXCEPTION 'workflow "%" does not exist', workflow USING ERRCODE = '42704';
    ELSIF NOT who OPERATOR(pg_catalog.=) ANY (roles) THEN
        IF cardinality(roles) OPERATOR(pg_catalog.>) 1 THEN
            RAISE EXCEPTION 'workflow id "%" is used by % roles', workflow, cardinality(roles)
                USING ERRCODE = '42P08';
        END IF;
        who := roles[1];
    END IF;

    SELECT 'digraph "' || regexp_replace(apiary_graph.workflow, esc, '\\\&', 'g') || E'" {\n'
        || E'  rankdir=LR;\n'
        || E'  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];\n'
        || coalesce(string_agg(format(E'  t%s [label="%s: %s\\n%s%s", fillcolor="%s"];\n',
               t.id, t.id, regexp_replace(t.function, esc, '\\\&', 'g'), t.state,
               CASE WHEN t.finished_at IS NOT NULL AND t.started_at IS NOT NULL
                    THEN format(', %s ms', round((extract(epoch FROM t.finished_at OPERATOR(pg_catalog.-) t.started_at)
                                                  OPERATOR(pg_catalog.*) 1000)::numeric, 1))
                    ELSE '' END,
               CASE t.state WHEN 'done' THEN '#c8e6c9' WHEN 'failed' THEN '#ffcdd2'
                            WHEN 'cancelled' THEN '#e0e0e0' ELSE '#fff9c4' END),
               '' ORDER BY t.id), '')
      INTO dot
      FROM apiary.tasks t
     WHERE t.role OPERATOR(pg_catalog.=) who AND t.workflow OPERATOR(pg_catalog.=) apiary_graph.workflow;

    SELECT dot || coalesce(string_agg(e.line, '' ORDER BY e.a, e.b, e.line), '') || '}' || E'\n'
      INTO dot
      FROM (SELECT t.parent AS a, t.id AS b, format(E'  t%s -> t%s;\n', t.parent, t.id) AS line
              FROM apiary.tasks t
             WHERE t.role OPERATOR(pg_catalog.=) who AND t.workflow OPERATOR(pg_catalog.=) apiary_graph.workflow
               AND t.parent IS NOT NULL
            UNION ALL
            SELECT w.future, w.task, format(E'  t%s -> t%s [style=dashed, label="argument"];\n', w.future, w.task)
              FROM apiary.waits w JOIN apiary.tasks t ON t.id OPERATOR(pg_catalog.=) w.task
             WHERE t.role OPERATOR(pg_catalog.=) who AND t.workflow OPERATOR(pg_catalog.=) apiary_graph.workflow
            UNION ALL
            SELECT t.linked_to, t.id, format(E'  t%s -> t%s [style=dotted, label="output"];\n', t.linked_to, t.id)
              FROM apiary.tasks t
             WHERE t.role OPERATOR(pg_catalog.=) who AND t.workflow OPERATOR(pg_catalog.=) apiary_graph.workflow
               AND t.linked_to IS NOT NULL) e;
    RETURN dot;
END $$;
COMMENT ON FUNCTION @extschema@.apiary_graph(pg_catalog.text) IS
    'one of your workflows as a Graphviz DOT graph: tasks, parent and future edges';

/*
 * Retention: the launcher calls this with apiary.retention, in a
 * transaction of its own per batch, until a batch comes back short.  It
 * deletes finished workflows older than that with their tasks and waits,
 * and keyed calls and provenance rows older than that, skipping rows
 * others hold.  A keyed
 * call pruned can run again under its key: the retention is the keys'
 * lifetime.
 */
CREATE FUNCTION apiary.prune(older_than pg_catalog.interval, batch pg_catalog.int4)
RETURNS pg_catalog.int4 LANGUAGE plpgsql
-- housekeeping yields: a DROP EXTENSION or ALTER TABLE never waits on it
-- (it gives up in a moment, and the launcher tries again later)
SET lock_timeout = '100ms'
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cutoff timestamptz := clock_timestamp() OPERATOR(pg_catalog.-) older_than;
    workflows int;
    calls int;
    rows_gone int;
BEGIN
    WITH gone AS (
        DELETE FROM apiary.workflows w
         WHERE (w.role, w.id) IN (SELECT x.role, x.id FROM apiary.workflows x
                                   WHERE x.state OPERATOR(pg_catalog.<>) 'running'
                                     AND x.finished_at OPERATOR(pg_catalog.<) cutoff
                                   LIMIT batch FOR UPDATE SKIP LOCKED)
        RETURNING w.role, w.id),
    tasks AS (
        DELETE FROM apiary.tasks t USING gone
         WHERE t.role OPERATOR(pg_catalog.=) gone.role AND t.workflow OPERATOR(pg_catalog.=) gone.id
        RETURNING t.id),
    waits AS (
        DELETE FROM apiary.waits x USING tasks WHERE x.task OPERATOR(pg_catalog.=) tasks.id)
    SELECT count(*) INTO workflows FROM gone;

    DELETE FROM apiary.invocations i
     WHERE i.ctid OPERATOR(pg_catalog.=) ANY (ARRAY(
           SELECT x.ctid FROM apiary.invocations x
            WHERE x.finished_at OPERATOR(pg_catalog.<) cutoff
            LIMIT batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS calls = ROW_COUNT;
    DELETE FROM apiary.provenance_rows p
     WHERE p.ctid OPERATOR(pg_catalog.=) ANY (ARRAY(
           SELECT x.ctid FROM apiary.provenance_rows x
            WHERE x.at OPERATOR(pg_catalog.<) cutoff
            LIMIT batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS rows_gone = ROW_COUNT;
    RETURN greatest(workflows, calls, rows_gone);
END $$;
REVOKE ALL ON FUNCTION apiary.prune(pg_catalog.interval, pg_catalog.int4) FROM PUBLIC;
-- No index on the ages: each would cost every call and every workflow an
-- index entry (and the workflow's last update its HOT chance).  Rows come
-- in age order, so a batch is found at the start of a scan.

/*
 * Provenance (apiary.provenance = writes): the rows functions write, read
 * back from the WAL by logical decoding (wal2json) and kept here.
 *
 * While provenance is on, each task's transaction, and each client
 * transaction in which a synchronous apiary call wrote, notes its
 * transaction id in provenance_xids.  The launcher peeks at the changes in
 * the slot apiary_provenance, keeps those of noted transactions, and only
 * after that commits moves the slot past them: a crash in between decodes
 * them again (the slot keeps the WAL), and the key (begin_lsn, n) keeps
 * them once.  Nested calls are attributed to the task or outermost call of
 * their transaction.
 */
CREATE TABLE apiary.provenance_xids (
    xid           pg_catalog.xid8 PRIMARY KEY,
    role          pg_catalog.regrole NOT NULL,
    workflow      pg_catalog.text COLLATE "C",
    task          pg_catalog.int8,
    function      pg_catalog.text NOT NULL
);
COMMENT ON TABLE apiary.provenance_xids IS
    'transactions of apiary functions whose writes the launcher has yet to decode';

CREATE TABLE apiary.provenance_rows (
    begin_lsn     pg_catalog.pg_lsn NOT NULL,
    n             pg_catalog.int4 NOT NULL,
    role          pg_catalog.regrole NOT NULL,
    workflow      pg_catalog.text COLLATE "C",
    task          pg_catalog.int8,
    function      pg_catalog.text NOT NULL,
    xid           pg_catalog.xid8 NOT NULL,
    relation      pg_catalog.regclass,
    relname       pg_catalog.text NOT NULL,
    operation     pg_catalog.text NOT NULL,
    "row"         pg_catalog.jsonb,
    at            pg_catalog.timestamptz NOT NULL,
    PRIMARY KEY (begin_lsn, n)
);
COMMENT ON TABLE apiary.provenance_rows IS
    'one row per row an apiary function wrote: the new image, or the old key of a delete';
CREATE INDEX provenance_rows_workflow ON apiary.provenance_rows (role, workflow);

ALTER TABLE apiary.provenance_xids ENABLE ROW LEVEL SECURITY;
ALTER TABLE apiary.provenance_rows ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON apiary.provenance_rows FOR SELECT
    USING (role OPERATOR(pg_catalog.=) pg_catalog.to_regrole(CURRENT_USER)
           OR pg_catalog.pg_has_role('apiary_admin', 'MEMBER'));
REVOKE ALL ON apiary.provenance_xids, apiary.provenance_rows FROM PUBLIC;
GRANT SELECT ON apiary.provenance_rows TO PUBLIC;

CREATE VIEW apiary.provenance WITH (security_barrier) AS
    SELECT workflow, task, function, xid, relation, relname, operation, "row", at
      FROM apiary.provenance_rows;
COMMENT ON VIEW apiary.provenance IS
    'which apiary function wrote which row: workflow, task, function, transaction, relation, insert/update/delete, the row';
GRANT SELECT ON apiary.provenance TO PUBLIC;

-- Is provenance being recorded, and if not, why.
CREATE VIEW apiary.provenance_status AS
    SELECT pg_catalog.current_setting('apiary.provenance', true) AS setting,
           pg_catalog.current_setting('wal_level') AS wal_level,
           s.slot_name IS NOT NULL AS slot,
           pg_catalog.pg_wal_lsn_diff(
               CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL ELSE pg_catalog.pg_current_wal_lsn() END,
               s.confirmed_flush_lsn)::pg_catalog.int8 AS lag_bytes,
           CASE
             WHEN coalesce(pg_catalog.current_setting('apiary.provenance', true), 'off')
                  OPERATOR(pg_catalog.=) 'off' THEN 'off'
             WHEN pg_catalog.current_setting('wal_level') OPERATOR(pg_catalog.<>) 'logical'
               THEN 'not recording: wal_level is ' || pg_catalog.current_setting('wal_level')
                    || '; set wal_level = logical and restart'
             WHEN s.slot_name IS NULL THEN 'starting (or failing: see the server log)'
             ELSE 'recording'
           END AS state
      FROM (SELECT 1) one
      LEFT JOIN pg_catalog.pg_replication_slots s
             ON s.slot_name OPERATOR(pg_catalog.=) 'apiary_provenance';
GRANT SELECT ON apiary.provenance_status TO PUBLIC;

/*
 * Called by the launcher (max_changes NULL: all there are): keep the
 * decoded writes of noted transactions, forget the notes, and return the
 * commit position to move the slot to (NULL when there was nothing).
 */
CREATE FUNCTION apiary.collect_provenance(max_changes pg_catalog.int4)
RETURNS pg_catalog.pg_lsn LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    d jsonb;
    begin_lsn pg_lsn;
    last_commit pg_lsn;
    n int := 0;
    x apiary.provenance_xids;
    action text;
    -- wal2json gives 32-bit xids: widen them against the next xid's epoch
    next int8 := pg_snapshot_xmax(pg_current_snapshot())::text::int8;
    low int8;
    full_xid xid8;
BEGIN
    FOR r IN SELECT c.lsn, c.data::jsonb AS data
               FROM pg_logical_slot_peek_changes('apiary_provenance', NULL, max_changes,
                        'format-version', '2', 'include-xids', '1',
                        'include-timestamp', '1', 'filter-tables', 'apiary.*') c
    LOOP
        d := r.data;
        action := d->>'action';
        IF action = 'B' THEN
            begin_lsn := r.lsn;
            n := 0;
            low := (d->>'xid')::int8;
            full_xid := ((next OPERATOR(pg_catalog.&) ~4294967295::int8) OPERATOR(pg_catalog.+) low
                         OPERATOR(pg_catalog.-) CASE WHEN low OPERATOR(pg_catalog.>) (next OPERATOR(pg_catalog.&) 4294967295::int8)
                                                     THEN 4294967296::int8 ELSE 0 END)::text::xid8;
            x := NULL;
            SELECT * INTO x FROM apiary.provenance_xids p WHERE p.xid OPERATOR(pg_catalog.=) full_xid;
        ELSIF action = 'C' THEN
            last_commit := r.lsn;
            IF x.xid IS NOT NULL THEN
                DELETE FROM apiary.provenance_xids p WHERE p.xid OPERATOR(pg_catalog.=) x.xid;
            END IF;
        ELSIF action IN ('I', 'U', 'D') THEN
            n := n + 1;
            IF x.xid IS NOT NULL THEN
                INSERT INTO apiary.provenance_rows
                    (begin_lsn, n, role, workflow, task, function, xid, relation, relname,
                     operation, "row", at)
                VALUES (begin_lsn, n, x.role, x.workflow, x.task, x.function, x.xid,
                        to_regclass(quote_ident(d->>'schema') || '.' || quote_ident(d->>'table')),
                        (d->>'schema') || '.' || (d->>'table'),
                        CASE action WHEN 'I' THEN 'insert' WHEN 'U' THEN 'update' ELSE 'delete' END,
                        (SELECT jsonb_object_agg(c->>'name', c->'value')
                           FROM jsonb_array_elements(CASE action WHEN 'D' THEN d->'identity'
                                                                 ELSE d->'columns' END) c),
                        (d->>'timestamp')::timestamptz)
                ON CONFLICT DO NOTHING;
            END IF;
        END IF;
    END LOOP;
    RETURN last_commit;
END $$;
REVOKE ALL ON FUNCTION apiary.collect_provenance(pg_catalog.int4) FROM PUBLIC;
