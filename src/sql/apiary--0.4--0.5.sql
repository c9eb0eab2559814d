/* src/sql/apiary--0.4--0.5.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.5'" to load this file. \quit

/*
 * Provenance decoded by apiary's own output plugin (src/provenance.c).
 *
 * Invocations no longer note their transaction ids in a table: each one
 * that wrote says so in a logical-decoding message of its transaction,
 * and the collector worker, which keeps one decoding context open, keeps
 * the rows.  The slot apiary_provenance of 0.4 (output plugin wal2json)
 * is replaced by the collector when it starts; what it still held was of
 * transactions the 0.4 library had noted, and is not collected.
 *
 * apiary.provenance = all adds the rows each function read, with
 * operation 'read'.
 */
DROP FUNCTION apiary.collect_provenance(pg_catalog.int4);
DROP TABLE apiary.provenance_xids;

COMMENT ON TABLE apiary.provenance_rows IS
    'one row per row an apiary function wrote (the new image, or the old key of a delete) or, with apiary.provenance = all, read';
COMMENT ON VIEW apiary.provenance IS
    'which apiary function wrote or read which row: workflow, task, function, transaction, relation, insert/update/delete/read, the row';

-- Is provenance being recorded, and if not, why: now also where the server
-- restricts output plugins (output_plugin_libraries) and leaves apiary out.
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
             ELSE 'recording'
           END AS state
      FROM (SELECT 1) one
      LEFT JOIN pg_catalog.pg_replication_slots s
             ON s.slot_name OPERATOR(pg_catalog.=) 'apiary_provenance';
