/* src/sql/apiary--0.1.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION apiary" to load this file. \quit

/*
 * The journal lives in schema apiary, owned by the extension; the API
 * functions live in the extension's schema (public unless WITH SCHEMA says
 * otherwise) so that apiary_invoke(...) needs no qualification.
 *
 * Every name below is qualified: nothing resolves through the caller's
 * search_path.  Users never write the journal directly; the C functions do,
 * as the journal's owner.
 */
CREATE SCHEMA apiary;
COMMENT ON SCHEMA apiary IS 'apiary journal: registered functions and keyed invocations';
REVOKE ALL ON SCHEMA apiary FROM PUBLIC;
GRANT USAGE ON SCHEMA apiary TO PUBLIC;

-- The registry: one row per registered function.
CREATE TABLE apiary.functions (
    name          pg_catalog.text PRIMARY KEY
                  CHECK (name OPERATOR(pg_catalog.<>) ''
                         AND pg_catalog.octet_length(name) OPERATOR(pg_catalog.<) 64),
    fn            pg_catalog.regprocedure NOT NULL UNIQUE,
    kind          pg_catalog.text NOT NULL DEFAULT 'transactional'
                  CHECK (kind OPERATOR(pg_catalog.=) ANY
                         (ARRAY['transactional', 'readonly', 'external']::pg_catalog.text[])),
    max_attempts  pg_catalog.int4 CHECK (max_attempts OPERATOR(pg_catalog.>) 0),
    timeout       pg_catalog.interval
                  CHECK (timeout OPERATOR(pg_catalog.>) '0'::pg_catalog.interval),
    declared      pg_catalog.bool NOT NULL DEFAULT false,
    registered_by pg_catalog.regrole NOT NULL,
    registered_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE apiary.functions IS 'functions registered with apiary';
COMMENT ON COLUMN apiary.functions.declared IS
    'registered by SET apiary.kind in CREATE/ALTER FUNCTION rather than by apiary_register()';
-- Registrations are configuration: pg_dump keeps them.
SELECT pg_catalog.pg_extension_config_dump('apiary.functions', '');

-- Keyed synchronous invocations: (role, key) -> function, arguments, output.
CREATE TABLE apiary.invocations (
    role          pg_catalog.regrole NOT NULL,
    key           pg_catalog.text COLLATE "C" NOT NULL,
    function      pg_catalog.text NOT NULL,
    args          pg_catalog.jsonb NOT NULL,
    output        pg_catalog.jsonb,
    parent_key    pg_catalog.text,
    xid           pg_catalog.xid8 NOT NULL,
    started_at    pg_catalog.timestamptz NOT NULL,
    finished_at   pg_catalog.timestamptz,
    PRIMARY KEY (role, key)
);
COMMENT ON TABLE apiary.invocations IS
    'journal of apiary_invoke calls made with a key: each key runs once per role';
COMMENT ON COLUMN apiary.invocations.role IS
    'the role whose key namespace the key belongs to (the caller of the outermost apiary_invoke)';
COMMENT ON COLUMN apiary.invocations.parent_key IS
    'key of the enclosing keyed invocation, for nested calls';
COMMENT ON COLUMN apiary.invocations.xid IS
    'the (sub)transaction that ran the call';

REVOKE ALL ON apiary.functions, apiary.invocations FROM PUBLIC;
GRANT SELECT ON apiary.functions TO PUBLIC;

-- Registry changes invalidate every backend's registry cache at commit.
CREATE FUNCTION apiary.registry_changed() RETURNS trigger
    AS 'MODULE_PATHNAME', 'apiary_registry_changed'
    LANGUAGE C;
CREATE TRIGGER registry_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON apiary.functions
    FOR EACH STATEMENT EXECUTE FUNCTION apiary.registry_changed();

-- Declarative registration: CREATE/ALTER FUNCTION ... SET apiary.kind, and
-- unregistration of every dropped function (also by DROP ... CASCADE).
CREATE FUNCTION apiary.on_ddl_command_end() RETURNS event_trigger
    AS 'MODULE_PATHNAME', 'apiary_on_ddl_command_end'
    LANGUAGE C;
CREATE FUNCTION apiary.on_sql_drop() RETURNS event_trigger
    AS 'MODULE_PATHNAME', 'apiary_on_sql_drop'
    LANGUAGE C;
REVOKE ALL ON FUNCTION apiary.registry_changed(), apiary.on_ddl_command_end(),
    apiary.on_sql_drop() FROM PUBLIC;

CREATE EVENT TRIGGER apiary_ddl_command_end ON ddl_command_end
    WHEN TAG IN ('CREATE FUNCTION', 'ALTER FUNCTION')
    EXECUTE FUNCTION apiary.on_ddl_command_end();
CREATE EVENT TRIGGER apiary_sql_drop ON sql_drop
    EXECUTE FUNCTION apiary.on_sql_drop();
-- also under session_replication_role = replica (restores, subscribers)
ALTER EVENT TRIGGER apiary_ddl_command_end ENABLE ALWAYS;
ALTER EVENT TRIGGER apiary_sql_drop ENABLE ALWAYS;

-- The API.
CREATE FUNCTION @extschema@.apiary_register(
    fn pg_catalog.regprocedure,
    kind pg_catalog.text DEFAULT 'transactional',
    name pg_catalog.text DEFAULT NULL,
    max_attempts pg_catalog.int4 DEFAULT NULL,
    timeout pg_catalog.interval DEFAULT NULL)
    RETURNS pg_catalog.text
    AS 'MODULE_PATHNAME', 'apiary_register'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.apiary_register(pg_catalog.regprocedure, pg_catalog.text,
    pg_catalog.text, pg_catalog.int4, pg_catalog.interval) IS
    'register a function with apiary under a name (default: its own) and a kind: transactional, readonly or external';

CREATE FUNCTION @extschema@.apiary_unregister(name pg_catalog.text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'apiary_unregister'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.apiary_unregister(pg_catalog.text) IS
    'remove a function''s apiary registration';

CREATE FUNCTION @extschema@.apiary_invoke(
    name pg_catalog.text,
    args pg_catalog.jsonb DEFAULT '{}',
    key pg_catalog.text DEFAULT NULL)
    RETURNS pg_catalog.jsonb
    AS 'MODULE_PATHNAME', 'apiary_invoke'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.apiary_invoke(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text) IS
    'run a registered function now, in this transaction; with a key, at most once per key';
