/* src/sql/apiary--0.12--0.13.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.13'" to load this file. \quit

/*
 * Provenance status tells a failing collector from a recording one.  A
 * collector that fails (on a row it cannot store, say) is started again
 * and decodes the same WAL again, its slot holding the WAL meanwhile: the
 * view said "recording" all along.  The collector notes the time of its
 * failure in shared memory until a collector gets past that point of the
 * WAL; the view shows it as the state and as failed_at, for monitoring.
 */
CREATE FUNCTION apiary.provenance_failed_at() RETURNS pg_catalog.timestamptz
    AS 'MODULE_PATHNAME', 'apiary_provenance_failed_at'
    LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION apiary.provenance_failed_at() IS
    'when the provenance collector last failed, unless it got past that point since';

CREATE OR REPLACE VIEW apiary.provenance_status AS
    SELECT pg_catalog.current_setting('apiary.provenance', true) AS setting,
           pg_catalog.current_setting('wal_level') AS wal_level,
           s.slot_name IS NOT NULL AS slot,
           pg_catalog.pg_wal_lsn_diff(
               CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL ELSE pg_catalog.pg_current_wal_lsn() END,
               s.confirmed_flush_lsn)::pg_catalog.int8 AS lag_bytes,
           CASE
             WHEN coalesce(pg_catalog.current_setting('apiary.provenance', true), 'off')
                  OPERATOR(pg_catalog.=) 'off' THEN 'off'
             WHEN pg_catalog.current_database() OPERATOR(pg_catalog.<>)
                  coalesce(pg_catalog.current_setting('apiary.database', true), 'postgres')
               THEN 'not recording: apiary.database is '
                    || coalesce(pg_catalog.current_setting('apiary.database', true), 'postgres')
             WHEN pg_catalog.current_setting('wal_level') OPERATOR(pg_catalog.<>) 'logical'
               THEN 'not recording: wal_level is ' || pg_catalog.current_setting('wal_level')
                    || '; set wal_level = logical and restart'
             -- pg_settings, not current_setting: only roles that may read
             -- the setting see it there, and others get no error
             WHEN NOT ('apiary' OPERATOR(pg_catalog.=) ANY (pg_catalog.string_to_array(
                       pg_catalog.replace(coalesce((SELECT g.setting FROM pg_catalog.pg_settings g
                                                     WHERE g.name OPERATOR(pg_catalog.=) 'output_plugin_libraries'),
                                                   'apiary'), ' ', ''), ',')))
               THEN 'not recording: output_plugin_libraries does not list apiary; add it and reload'
             WHEN s.slot_name IS NULL THEN 'starting (or failing: see the server log)'
             WHEN f.at IS NOT NULL THEN 'failing since ' || f.at || ': see the server log'
             ELSE 'recording'
           END AS state,
           f.at AS failed_at
      FROM apiary.provenance_failed_at() AS f(at)
      LEFT JOIN pg_catalog.pg_replication_slots s
             ON s.slot_name OPERATOR(pg_catalog.=) 'apiary_provenance'
            AND s.database OPERATOR(pg_catalog.=) pg_catalog.current_database();

/*
 * A task found running is cancelled by its row, whatever the workflow's
 * state.  Up to 0.12 only a finished workflow's cancel marked its running
 * tasks (a running workflow's said it by its own state): a task whose
 * executor was terminated after a cancel left its ready row behind,
 * pending, and another executor ran it again after the cancel, and an
 * external call made from it was made after the cancel.  A task marked
 * cancelled is never claimed: its ready row is only tidied away.
 *
 * A resume of such a task queues it with a ready row of its own while the
 * row its executor took may still be there; the library's claims lock the
 * task they take (0.13), so that two rows never make two runs.
 */
CREATE OR REPLACE FUNCTION apiary.cancel_workflow(wf_role pg_catalog.oid, wf_id pg_catalog.text,
                                                  timed_out pg_catalog.interval)
RETURNS pg_catalog.bool LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    taken int8[];
BEGIN
    UPDATE apiary.workflows
       SET state = 'cancelled', finished_at = clock_timestamp(), deadline = NULL,
           error = CASE WHEN timed_out IS NULL
                        THEN jsonb_build_object('sqlstate', '57014',
                                                'message', format('workflow "%s" was cancelled', wf_id))
                        ELSE jsonb_build_object('sqlstate', '57014',
                                                'message', format('workflow "%s" timed out', wf_id),
                                                'detail', format('It did not finish within its timeout of %s, and was cancelled.', timed_out),
                                                'hint', 'apiary_resume runs its cancelled tasks again, with the same time to finish.',
                                                'timeout', timed_out)
                   END
     WHERE role = wf_role AND id = wf_id AND state = 'running';
    IF NOT FOUND AND NOT EXISTS (SELECT FROM apiary.workflows WHERE role = wf_role AND id = wf_id) THEN
        RETURN false;
    END IF;
    WITH gone AS (
        DELETE FROM apiary.ready r
         WHERE r.ctid = ANY (ARRAY(
               SELECT x.ctid FROM apiary.ready x JOIN apiary.tasks t ON t.id = x.task
                WHERE t.role = wf_role AND t.workflow = wf_id
                  FOR UPDATE OF x SKIP LOCKED))
        RETURNING r.task)
    SELECT array_agg(task) INTO taken FROM gone;
    -- pending tasks whose ready row an executor holds are running: they
    -- are cancelled here too, and find it at their end
    UPDATE apiary.tasks
       SET state = 'cancelled', finished_at = clock_timestamp(),
           error = jsonb_build_object('sqlstate', '57014', 'cancelled',
                                      CASE WHEN timed_out IS NULL THEN 'by apiary_cancel'
                                           ELSE 'by the workflow''s timeout' END)
     WHERE (id = ANY (taken) AND state = 'pending')
        OR id IN (SELECT id FROM apiary.tasks
                   WHERE role = wf_role AND workflow = wf_id
                     AND state IN ('pending', 'waiting', 'linked')
                     FOR UPDATE SKIP LOCKED);
    RETURN true;
END $$;
