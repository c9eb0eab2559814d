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
