--
-- apiary_invoke: calling registered functions with JSON arguments.
--
CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL,
                       balance numeric NOT NULL DEFAULT 0);
INSERT INTO accounts VALUES (1, 'ann', 100), (2, 'bob', 50);

CREATE FUNCTION deposit(account int, amount numeric DEFAULT 10,
                        note text DEFAULT 'deposit') RETURNS numeric
LANGUAGE sql SET apiary.kind = 'transactional' AS $$
  UPDATE accounts SET balance = balance + amount WHERE id = account
  RETURNING balance
$$;

-- An object binds by name, an array by position, a scalar binds the only
-- required parameter; defaults fill in the rest.
SELECT apiary_invoke('deposit', '{"account": 1, "amount": 5}');
SELECT apiary_invoke('deposit', '{"amount": 1, "account": 1}');
SELECT apiary_invoke('deposit', '[1, 2.5]');
SELECT apiary_invoke('deposit', '1');
-- Any subset by name: here the second parameter keeps its default.
SELECT apiary_invoke('deposit', '{"account": 2, "note": "gift"}');
-- args defaults to '{}': a function without parameters needs nothing.
CREATE FUNCTION total() RETURNS numeric LANGUAGE sql STABLE
SET apiary.kind = 'readonly' AS $$ SELECT sum(balance) FROM accounts $$;
SELECT apiary_invoke('total');
SELECT apiary_invoke('total', '[]');

-- Calls run in the caller's transaction.
BEGIN;
SELECT apiary_invoke('deposit', '{"account": 1, "amount": 1000}');
ROLLBACK;
SELECT balance FROM accounts WHERE id = 1;

--
-- Conversions: JSON values to parameter types, results through to_jsonb.
--
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN percent AS int CHECK (VALUE BETWEEN 0 AND 100);
CREATE TYPE point3 AS (x int, y int, z int);
CREATE FUNCTION echo(t text, i int, b bool, d date, u uuid, m mood, p percent,
                     ts timestamptz, n numeric, f float8, a int[], c point3,
                     j json, jb jsonb) RETURNS jsonb
LANGUAGE sql AS $$
  SELECT jsonb_build_object('t', t, 'i', i, 'b', b, 'd', d, 'u', u, 'm', m,
    'p', p, 'ts', ts, 'n', n, 'f', f, 'a', a, 'c', c, 'j', j, 'jb', jb)
$$;
SELECT apiary_register('echo(text,int,bool,date,uuid,mood,percent,timestamptz,numeric,float8,int[],point3,json,jsonb)');
SELECT jsonb_pretty(apiary_invoke('echo', '{
  "t": "hello", "i": 42, "b": true, "d": "2024-02-29",
  "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "m": "happy", "p": 99,
  "ts": "2024-01-01 12:00:00+00", "n": 12345678901234567890.5, "f": 1.5e3,
  "a": [1, 2, 3], "c": {"x": 1, "y": 2, "z": 3},
  "j": {"raw":   "json"}, "jb": [{"nested": [true, null]}]}'));
-- A domain over jsonb or json takes the value as its base type would, and
-- checks its constraint.
CREATE DOMAIN jdoc AS jsonb CHECK (jsonb_typeof(VALUE) = 'object');
CREATE DOMAIN jlist AS json;
CREATE FUNCTION takes_docs(d jdoc, l jlist) RETURNS text LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT (d->>'a') || ' ' || l::text $$;
SELECT apiary_invoke('takes_docs', '{"d": {"a": "x"}, "l": ["y", 1]}');
SELECT apiary_invoke('takes_docs', '{"d": ["not an object"], "l": []}');
\echo :LAST_ERROR_SQLSTATE
-- A JSON null is a null of the domain, which its NOT NULL refuses.
CREATE DOMAIN required_int AS int NOT NULL;
CREATE FUNCTION takes_required(x required_int) RETURNS text LANGUAGE plpgsql
SET apiary.kind = 'readonly' AS $$ BEGIN RETURN coalesce(x::text, 'null got through'); END $$;
SELECT apiary_invoke('takes_required', '[null]');
\echo :LAST_ERROR_SQLSTATE
-- Strings reach any type through its input function; numbers and booleans
-- reach text as their JSON text; JSON null is SQL NULL.
SELECT apiary_invoke('echo', '{
  "t": 7, "i": "8", "b": "yes", "d": null, "u": null, "m": null, "p": "0",
  "ts": null, "n": "1e3", "f": "NaN", "a": "{4,5}", "c": null, "j": null,
  "jb": null}');

-- Results: sets become arrays, rows become objects, void becomes null.
CREATE FUNCTION owners() RETURNS SETOF text LANGUAGE sql STABLE
AS $$ SELECT owner FROM accounts ORDER BY id $$;
CREATE FUNCTION rich(min numeric) RETURNS TABLE (id int, owner text)
LANGUAGE sql STABLE AS $$ SELECT id, owner FROM accounts WHERE balance >= min ORDER BY id $$;
CREATE FUNCTION account(id int, OUT owner text, OUT balance numeric)
LANGUAGE sql STABLE AS $$ SELECT owner, balance FROM accounts WHERE accounts.id = account.id $$;
CREATE FUNCTION nothing() RETURNS void LANGUAGE sql AS $$ $$;
CREATE FUNCTION maybe(x int) RETURNS int LANGUAGE sql AS $$ SELECT NULLIF(x, 0) $$;
SELECT apiary_register('owners()', 'readonly'), apiary_register('rich(numeric)', 'readonly'),
       apiary_register('account(int)', 'readonly'), apiary_register('nothing()'),
       apiary_register('maybe(int)');
SELECT apiary_invoke('owners');
SELECT apiary_invoke('rich', '{"min": 0}');
SELECT apiary_invoke('rich', '{"min": 1000000}');
SELECT apiary_invoke('account', '{"id": 2}');
SELECT apiary_invoke('nothing');
SELECT apiary_invoke('maybe', '0') IS NULL AS sql_null, apiary_invoke('maybe', '3');

-- VARIADIC functions take their array.
CREATE FUNCTION add_all(VARIADIC xs int[]) RETURNS int LANGUAGE sql
AS $$ SELECT sum(x)::int FROM unnest(xs) x $$;
SELECT apiary_register('add_all(int[])');
SELECT apiary_invoke('add_all', '{"xs": [1, 2, 3]}'), apiary_invoke('add_all', '[[4, 5]]');
-- An array of a type with a length takes values of any length, as a call does.
CREATE FUNCTION chars(cs char[], bs bit[]) RETURNS text LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT cs::text || ' ' || bs::text $$;
SELECT apiary_invoke('chars', '[["abc", "de"], ["101"]]');
-- By name only with every parameter before it: PostgreSQL resolves no call
-- that leaves one of them to its default.
CREATE FUNCTION add_to(base int DEFAULT 10, VARIADIC xs int[] DEFAULT '{}') RETURNS int
LANGUAGE sql SET apiary.kind = 'readonly' AS $$ SELECT base + coalesce(sum(x)::int, 0) FROM unnest(xs) x $$;
SELECT apiary_invoke('add_to', '{"base": 1, "xs": [2, 3]}'), apiary_invoke('add_to', '{}');
SELECT apiary_invoke('add_to', '{"xs": [2, 3]}');

-- Any language: PL/pgSQL here.
CREATE FUNCTION transfer(src int, dst int, amount numeric) RETURNS jsonb
LANGUAGE plpgsql SET apiary.kind = 'transactional' AS $$
BEGIN
  UPDATE accounts SET balance = balance - amount WHERE id = src;
  UPDATE accounts SET balance = balance + amount WHERE id = dst;
  RETURN (SELECT jsonb_object_agg(owner, balance) FROM accounts);
END $$;
SELECT apiary_invoke('transfer', '{"src": 1, "dst": 2, "amount": 25}');

--
-- Kinds.
--
-- A readonly function runs with the transaction read-only: writes fail.
CREATE FUNCTION sneaky_write() RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ UPDATE accounts SET balance = 0 RETURNING 1 $$;
SELECT apiary_invoke('sneaky_write');
SELECT sum(balance) FROM accounts;
-- ... only for its duration: the caller's transaction may write after it.
BEGIN;
SELECT apiary_invoke('total');
SELECT apiary_invoke('deposit', '{"account": 2, "amount": 1}');
SHOW transaction_read_only;
COMMIT;
-- In a read-only transaction (or on a standby), readonly functions still run.
BEGIN READ ONLY;
SELECT apiary_invoke('total');
SELECT apiary_invoke('deposit', '{"account": 2, "amount": 1}');
ROLLBACK;
-- ... but not with a key: the journal is a write.
BEGIN READ ONLY;
SELECT apiary_invoke('total', '{}', 'read-only-key');
ROLLBACK;
-- A readonly function may make keyed calls: its kind makes the function
-- read-only, not apiary's journal.
CREATE FUNCTION total_keyed() RETURNS jsonb LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT apiary_invoke('total', '{}', 'total-from-readonly') $$;
SELECT apiary_invoke('total_keyed') = apiary_invoke('total') AS same;
DELETE FROM apiary.invocations WHERE key = 'total-from-readonly' RETURNING function AS journaled;
-- An external function can be called synchronously too: it runs once, now.
CREATE FUNCTION notify_owner(account int) RETURNS text LANGUAGE sql
SET apiary.kind = 'external' AS $$ SELECT 'notified ' || owner FROM accounts WHERE id = account $$;
SELECT apiary_invoke('notify_owner', '1');

--
-- The registry cache follows changes to functions and registrations.
--
CREATE FUNCTION greet(who text) RETURNS text LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT 'hello ' || who $$;
SELECT apiary_invoke('greet', '"ann"');
-- a new body
CREATE OR REPLACE FUNCTION greet(who text) RETURNS text LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT 'hi ' || who $$;
SELECT apiary_invoke('greet', '"ann"');
-- a new signature is a new function: it must replace the old one by name
CREATE FUNCTION greet(who text, punct text DEFAULT '!') RETURNS text
LANGUAGE sql SET apiary.kind = 'transactional' AS $$ SELECT 'hi ' || who || punct $$;
DROP FUNCTION greet(text);
CREATE FUNCTION greet(who text, punct text DEFAULT '!') RETURNS text
LANGUAGE sql SET apiary.kind = 'transactional' AS $$ SELECT 'hi ' || who || punct $$;
SELECT apiary_invoke('greet', '"bob"');
SELECT apiary_invoke('greet', '{"who": "bob", "punct": "?"}');
-- renaming the function or its schema keeps the registration working
ALTER FUNCTION greet(text, text) RENAME TO salute;
SELECT apiary_invoke('greet', '"cy"');
ALTER SCHEMA public RENAME TO public2;
SELECT public2.apiary_invoke('greet', '"dee"');
ALTER SCHEMA public2 RENAME TO public;
ALTER FUNCTION salute(text, text) SET apiary.kind = 'readonly';
SELECT name, fn, kind FROM apiary.functions WHERE name = 'greet';

--
-- search_path cannot redirect apiary's own SQL.
--
CREATE SCHEMA evil;
CREATE FUNCTION evil.texteq_evil(text, text) RETURNS bool LANGUAGE plpgsql
AS $$ BEGIN RAISE EXCEPTION 'captured'; END $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq_evil);
CREATE FUNCTION evil.to_jsonb(numeric) RETURNS jsonb LANGUAGE plpgsql
AS $$ BEGIN RAISE EXCEPTION 'captured'; END $$;
SET search_path = evil, public, pg_catalog;
SELECT 'a'::text = 'a'::text;
SELECT apiary_invoke('deposit', '{"account": 1, "amount": 1}', 'evil-1');
SELECT apiary_invoke('deposit', '{"account": 1, "amount": 1}', 'evil-1');
SELECT apiary_register('total()', 'readonly');
RESET search_path;
DROP SCHEMA evil CASCADE;

--
-- What a session keeps of the functions it calls: at most 16 prepared call
-- statements per function, one per set of parameters named (the least
-- recently used goes), and nothing of functions dropped since.
--
CREATE FUNCTION many_optional(a int DEFAULT 0, b int DEFAULT 0, c int DEFAULT 0,
                              d int DEFAULT 0, e int DEFAULT 0, f int DEFAULT 0)
RETURNS int LANGUAGE sql SET apiary.kind = 'readonly'
AS $$ SELECT a + b + c + d + e + f $$;
-- all 64 sets of named parameters
SELECT sum((apiary_invoke('many_optional',
              (SELECT coalesce(jsonb_object_agg(p, 1), '{}')
               FROM unnest(ARRAY['a', 'b', 'c', 'd', 'e', 'f']) WITH ORDINALITY u(p, k)
               WHERE (i >> (k::int - 1)) & 1 = 1)))::int) AS total
FROM generate_series(0, 63) i;
SELECT count(*) AS call_statements FROM pg_backend_memory_contexts
WHERE name = 'CachedPlanSource' AND ident LIKE '%many_optional(%';
DO $$
BEGIN
  FOR i IN 1..20 LOOP
    EXECUTE format('CREATE FUNCTION short_lived_%s() RETURNS int LANGUAGE sql '
                   'SET apiary.kind = ''readonly'' AS $f$ SELECT %s $f$', i, i);
  END LOOP;
END $$;
SELECT sum(apiary_invoke('short_lived_' || i)::int) FROM generate_series(1, 20) i;
SELECT count(*) AS cached FROM pg_backend_memory_contexts
WHERE name = 'apiary function' AND ident LIKE 'short\_lived\_%';
DO $$
BEGIN
  FOR i IN 1..20 LOOP
    EXECUTE format('DROP FUNCTION short_lived_%s()', i);
  END LOOP;
END $$;
SELECT apiary_invoke('many_optional', '{"a": 1}');
SELECT count(*) AS cached FROM pg_backend_memory_contexts
WHERE name = 'apiary function' AND ident LIKE 'short\_lived\_%';
DROP FUNCTION many_optional(int, int, int, int, int, int);
