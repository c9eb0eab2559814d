--
-- Registering functions with apiary.
--
CREATE EXTENSION apiary;

-- What the extension installs.
SELECT pg_describe_object(classid, objid, objsubid) AS object
FROM pg_depend
WHERE refclassid = 'pg_extension'::regclass
  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'apiary')
  AND deptype = 'e'
ORDER BY 1;

CREATE TABLE stock (item int PRIMARY KEY, qty int NOT NULL);
INSERT INTO stock VALUES (1, 10), (2, 5);

CREATE FUNCTION reserve(item int, qty int DEFAULT 1) RETURNS int
LANGUAGE sql AS $$
  UPDATE stock SET qty = stock.qty - reserve.qty
  WHERE stock.item = reserve.item RETURNING stock.qty
$$;

-- Register under its own name, as a transactional function (the default).
SELECT apiary_register('reserve(int,int)');
SELECT name, fn, kind, max_attempts, timeout, declared, registered_by
FROM apiary.functions;

-- Registering again updates the registration.
SELECT apiary_register('reserve(int,int)', 'external', max_attempts => 5,
                       timeout => '30 seconds');
SELECT name, kind, max_attempts, timeout FROM apiary.functions;
SELECT apiary_register('reserve(int,int)');

-- A function can be registered under another name, but only once.
CREATE FUNCTION stock_of(item int) RETURNS int LANGUAGE sql STABLE
AS $$ SELECT qty FROM stock WHERE stock.item = stock_of.item $$;
SELECT apiary_register('stock_of(int)', 'readonly', name => 'inventory');
SELECT apiary_register('stock_of(int)', 'readonly', name => 'inventory2');
-- And a name belongs to one function.
SELECT apiary_register('stock_of(int)', name => 'reserve');

-- Kinds are checked.
SELECT apiary_register('stock_of(int)', 'fast');
SELECT apiary_register('stock_of(int)', NULL);
SELECT apiary_register(NULL);
SELECT apiary_register('stock_of(int)', max_attempts => 0);
SELECT apiary_register('stock_of(int)', timeout => '-1 s');
SELECT apiary_register('stock_of(int)', timeout => '25 days');
SELECT apiary_register('stock_of(int)', name => '');
SELECT apiary_register('stock_of(int)', name => E'stock\nof');
SELECT apiary_register('stock_of(int)', name => E'stock\u0085of');  -- C1 NEXT LINE
SELECT apiary_register('stock_of(int)', name => repeat('x', 64));
SELECT apiary_register('stock_of(int)', name => '(other)');  -- apiary.stats's
-- Registering is a write: refused in a read-only transaction (a
-- standby's, say).
BEGIN READ ONLY;
SELECT apiary_register('stock_of(int)', name => 'stock_ro');
ROLLBACK;
BEGIN READ ONLY;
SELECT apiary_unregister('inventory');
ROLLBACK;
-- a declared name is the function's own, held to the same rules
CREATE FUNCTION U&"stock\000Aof"() RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT 1 $$;

-- Only plain functions with types that JSON can reach.
CREATE PROCEDURE restock() LANGUAGE sql AS $$ UPDATE stock SET qty = 10 $$;
SELECT apiary_register('restock()');
SELECT apiary_register('sum(int)');
CREATE FUNCTION ident(x anyelement) RETURNS anyelement LANGUAGE sql AS $$ SELECT x $$;
SELECT apiary_register('ident(anyelement)');
CREATE FUNCTION anon_record() RETURNS record LANGUAGE sql AS $$ SELECT 1, 2 $$;
SELECT apiary_register('anon_record()');
CREATE FUNCTION takes_record(r record) RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;
SELECT apiary_register('takes_record(record)');
CREATE FUNCTION trig() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
SELECT apiary_register('trig()');

-- Only the function's owner may register it.
CREATE ROLE apiary_stranger;
GRANT USAGE ON SCHEMA public TO apiary_stranger;
SET ROLE apiary_stranger;
SELECT apiary_register('stock_of(int)', name => 'stolen');
SELECT apiary_unregister('inventory');
-- The registry itself is readable, but not writable, by everyone.
SELECT count(*) FROM apiary.functions;
DELETE FROM apiary.functions;
RESET ROLE;

--
-- Declarative registration: SET apiary.kind in the function's definition.
--
CREATE FUNCTION restock_item(item int, qty int) RETURNS int
LANGUAGE sql SET apiary.kind = 'transactional' AS $$
  UPDATE stock SET qty = restock_item.qty WHERE stock.item = restock_item.item
  RETURNING stock.qty
$$;
SELECT name, fn, kind, declared FROM apiary.functions ORDER BY name;

-- ALTER FUNCTION ... SET changes the kind; RESET unregisters.
ALTER FUNCTION restock_item(int, int) SET apiary.kind = 'external';
SELECT name, kind FROM apiary.functions WHERE name = 'restock_item';
ALTER FUNCTION restock_item(int, int) RESET apiary.kind;
SELECT count(*) FROM apiary.functions WHERE name = 'restock_item';

-- CREATE OR REPLACE registers again, and replaces the kind.
CREATE OR REPLACE FUNCTION restock_item(item int, qty int) RETURNS int
LANGUAGE sql SET apiary.kind = 'readonly' AS $$ SELECT qty $$;
SELECT name, kind FROM apiary.functions WHERE name = 'restock_item';

-- apiary_register on a declared function is the user's word: ALTER FUNCTION
-- keeps its settings, and says so when the clause disagrees with its kind.
SELECT apiary_register('restock_item(int,int)', 'transactional', max_attempts => 5, timeout => '2 s');
ALTER FUNCTION restock_item(int, int) COST 10;
SELECT name, kind, max_attempts, timeout, declared FROM apiary.functions WHERE name = 'restock_item';
-- RESET leaves a registration made with apiary_register alone
ALTER ROUTINE restock_item(int, int) RESET apiary.kind;
SELECT name, kind, declared FROM apiary.functions WHERE name = 'restock_item';
SELECT apiary_unregister('restock_item');
-- ALTER ROUTINE is seen as ALTER FUNCTION is.
ALTER ROUTINE restock_item(int, int) SET apiary.kind = 'readonly';
SELECT name, kind, declared FROM apiary.functions WHERE name = 'restock_item';
-- A function that declares a kind but is not registered (unregistered
-- here, or declared while apiary was not installed) says how to fix that.
SELECT apiary_unregister('restock_item');
SELECT apiary_invoke('restock_item', '[1, 2]');
ALTER FUNCTION restock_item(int, int) SET apiary.kind = 'readonly';
SELECT apiary_invoke('restock_item', '[1, 2]');
-- a procedure cannot be registered, declaratively either
CREATE PROCEDURE restock_all() LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ UPDATE stock SET qty = 10 $$;
CREATE PROCEDURE restock_all() LANGUAGE sql AS $$ UPDATE stock SET qty = 10 $$;
ALTER PROCEDURE restock_all() SET apiary.kind = 'transactional';
DROP PROCEDURE restock_all();

-- A registration inserted for a function that has one replaces it: a
-- restore creates the function (which registers it again by its clause)
-- before it copies apiary.functions, rows made by apiary_register included.
INSERT INTO apiary.functions (name, fn, kind, max_attempts, declared, registered_by)
VALUES ('restock_item', 'restock_item(int,int)', 'external', 7, false, current_user::regrole);
SELECT name, kind, max_attempts, declared FROM apiary.functions WHERE name = 'restock_item';
-- the function is read as regprocedure reads it, and stored qualified
SELECT fn FROM apiary.functions WHERE name = 'restock_item';
INSERT INTO apiary.functions (name, fn, kind, declared, registered_by)
VALUES ('lost', 'no_such_function(int)', 'external', false, current_user::regrole);

-- An unknown kind is rejected by the setting's own check.
CREATE FUNCTION bad_kind() RETURNS int LANGUAGE sql
SET apiary.kind = 'eventual' AS $$ SELECT 1 $$;
-- An empty one registers nothing, as RESET would, and says so, also at
-- each later ALTER, which it does not stop.
CREATE FUNCTION empty_kind() RETURNS int LANGUAGE sql
SET apiary.kind = '' AS $$ SELECT 1 $$;
ALTER FUNCTION empty_kind() STABLE;
SELECT count(*) AS registered FROM apiary.functions WHERE name = 'empty_kind';
DROP FUNCTION empty_kind();

-- A declared name that is taken fails the CREATE FUNCTION as a whole.
CREATE SCHEMA other;
CREATE FUNCTION other.reserve(item int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT item $$;
SELECT to_regprocedure('other.reserve(int)') IS NULL AS not_created;
-- With check_function_bodies off, as in a restore (which copies the
-- registrations after it), the function is created, unregistered, with a
-- warning: a restore never loses a function to apiary.
SET check_function_bodies = off;
CREATE FUNCTION other.reserve(item int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT item $$;
CREATE PROCEDURE other.restock() LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT 1 $$;
RESET check_function_bodies;
SELECT to_regprocedure('other.reserve(int)') IS NOT NULL AS created,
       (SELECT fn FROM apiary.functions WHERE name = 'reserve') AS reserve_is;
-- a function registered under another name says which
SELECT apiary_invoke('stock_of', '1');

-- Dropping a function unregisters it, also through a cascade.
CREATE FUNCTION other.audit(item int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT item $$;
SELECT name FROM apiary.functions ORDER BY name;
DROP SCHEMA other CASCADE;
DROP FUNCTION restock_item(int, int);
SELECT name FROM apiary.functions ORDER BY name;

-- A misspelt apiary setting is an error, not a silent placeholder.
SET apiary.kindd = 'readonly';

--
-- Unregistering.
--
SELECT apiary_unregister('inventory');
SELECT apiary_unregister('inventory');
SELECT apiary_unregister('reserv');
SELECT apiary_unregister(NULL);
SELECT name FROM apiary.functions ORDER BY name;

-- A registration left behind by a drop the event trigger did not see (it
-- is disabled here) is reported on use, and can be removed.
SELECT apiary_register('stock_of(int)', 'readonly', name => 'inventory');
ALTER EVENT TRIGGER apiary_sql_drop DISABLE;
DROP FUNCTION stock_of(int);
ALTER EVENT TRIGGER apiary_sql_drop ENABLE ALWAYS;
SELECT apiary_invoke('inventory', '1');
SELECT apiary_unregister('inventory');
SELECT name FROM apiary.functions ORDER BY name;

--
-- A registration names its function by signature (which pg_upgrade keeps,
-- where it does not keep OIDs), and follows renames of the function, its
-- schema and the types of its arguments, a table's row type included.
--
CREATE SCHEMA warehouse;
CREATE TABLE warehouse.bin (item int, qty int);
CREATE DOMAIN warehouse.amount AS int CHECK (VALUE >= 0);
CREATE FUNCTION warehouse.fill(b warehouse.bin, extra warehouse.amount) RETURNS int
LANGUAGE sql SET apiary.kind = 'transactional' AS $$ SELECT b.qty + extra $$;
SELECT fn FROM apiary.functions WHERE name = 'fill';
ALTER TABLE warehouse.bin RENAME TO shelf;
ALTER DOMAIN warehouse.amount RENAME TO quantity;
ALTER FUNCTION warehouse.fill(warehouse.shelf, warehouse.quantity) RENAME TO top_up;
ALTER SCHEMA warehouse RENAME TO depot;
SELECT fn FROM apiary.functions WHERE name = 'fill';
ALTER FUNCTION depot.top_up(depot.shelf, depot.quantity) SET SCHEMA public;
SELECT fn FROM apiary.functions WHERE name = 'fill';
SELECT apiary_invoke('fill', '{"b": {"item": 1, "qty": 4}, "extra": 3}');
-- a rename rolled back leaves the registration as it was
BEGIN;
ALTER TABLE depot.shelf RENAME TO stock;
ROLLBACK;
SELECT fn FROM apiary.functions WHERE name = 'fill';
-- ALTER INDEX renames a table too
ALTER INDEX depot.shelf RENAME TO rack;
SELECT fn FROM apiary.functions WHERE name = 'fill';
-- Signatures never take the quoted-everything form, which any session
-- may ask for: they are compared as text.
SET quote_all_identifiers = on;
ALTER TABLE depot.rack RENAME TO shelf;
CREATE FUNCTION depot.count_up(n int) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT n + 1 $$;
RESET quote_all_identifiers;
SELECT name, fn FROM apiary.functions WHERE name IN ('fill', 'count_up') ORDER BY name;
-- A rename the event trigger did not see leaves the signature behind, but
-- the registration names its function by OID in this cluster: calls go
-- on, and the next refresh (after any rename, and by the launcher once a
-- minute) catches up.
ALTER EVENT TRIGGER apiary_ddl_command_end DISABLE;
ALTER FUNCTION depot.count_up(int) RENAME TO count_on;
ALTER EVENT TRIGGER apiary_ddl_command_end ENABLE ALWAYS;
SELECT fn FROM apiary.functions WHERE name = 'count_up';
SELECT apiary_invoke('count_up', '1');
SELECT apiary.refresh_signatures();
SELECT fn FROM apiary.functions WHERE name = 'count_up';
-- After pg_upgrade the OIDs are another cluster's (apiary.registry_cluster
-- says so): calls find the function by its signature instead, and the
-- first change to the registry resolves every registration again, here as
-- test/recovery/pg_upgrade.sh does for real.
UPDATE apiary.registry_cluster SET system_identifier = 42;
UPDATE apiary.functions SET fn_oid = NULL WHERE name IN ('fill', 'count_up');
SELECT apiary_invoke('count_up', '1'), apiary_invoke('fill', '{"b": {"item": 1, "qty": 1}, "extra": 1}');
CREATE FUNCTION depot.unrelated() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
SELECT system_identifier = apiary.system_identifier() AS adopted FROM apiary.registry_cluster;
SELECT name, fn_oid = fn::regprocedure AS resolved FROM apiary.functions
WHERE name IN ('fill', 'count_up') ORDER BY name;
-- Before adoption, a rename adopts first, while the signatures still name
-- what they named ...
UPDATE apiary.registry_cluster SET system_identifier = 42;
UPDATE apiary.functions SET fn_oid = NULL WHERE name = 'count_up';
ALTER SCHEMA depot RENAME TO store;
SELECT name, fn, fn_oid = fn::regprocedure AS resolved FROM apiary.functions
WHERE name IN ('fill', 'count_up') ORDER BY name;
-- ... and a drop removes the registration of the function it dropped.
UPDATE apiary.registry_cluster SET system_identifier = 42;
UPDATE apiary.functions SET fn_oid = NULL WHERE name = 'count_up';
DROP FUNCTION store.count_on(int);
SELECT count(*) FROM apiary.functions WHERE name = 'count_up';
-- A signature that names nothing in the new cluster leaves its
-- registration unresolved, with a warning; calling it says so, and
-- registering a function under its name replaces it.
UPDATE apiary.registry_cluster SET system_identifier = 42;
UPDATE apiary.functions SET fn = 'store.vanished(integer)' WHERE name = 'fill';
SELECT apiary.adopt_registrations();
SELECT name, fn, fn_oid FROM apiary.functions WHERE name = 'fill';
SELECT apiary_invoke('fill', '{"b": {"item": 1, "qty": 1}, "extra": 1}');
SELECT apiary_register('public.top_up(store.shelf, store.quantity)', name => 'fill');
SELECT name, fn, fn_oid = fn::regprocedure AS resolved FROM apiary.functions WHERE name = 'fill';
DROP SCHEMA store CASCADE;
SELECT count(*) FROM apiary.functions WHERE name IN ('fill', 'count_up');
-- A temporary function, or one that takes a temporary type, is one
-- session's: it cannot be registered.
CREATE FUNCTION pg_temp.scratch() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
SELECT apiary_register('pg_temp.scratch()');
CREATE TEMP TABLE scratch_rows (a int);
CREATE FUNCTION public.scratch_sum(r scratch_rows) RETURNS int LANGUAGE sql AS $$ SELECT r.a $$;
SELECT apiary_register('public.scratch_sum(scratch_rows)');
DROP FUNCTION public.scratch_sum(scratch_rows);
-- A row that came in without its insert trigger (a data-only restore with
-- --disable-triggers) brings another database's OID: where it names
-- another function than the signature, or none, the signature's function
-- is called if its registrant owns it (not another role's function
-- created under the signature), and the upkeep takes its OID; OIDs that
-- chain or swap are all taken back.
CREATE FUNCTION restored_one() RETURNS text LANGUAGE sql AS $$ SELECT 'restored one' $$;
CREATE FUNCTION someone_elses() RETURNS text LANGUAGE sql AS $$ SELECT 'someone else''s' $$;
CREATE FUNCTION restored_two() RETURNS text LANGUAGE sql AS $$ SELECT 'restored two' $$;
CREATE FUNCTION restored_three() RETURNS text LANGUAGE sql AS $$ SELECT 'restored three' $$;
CREATE ROLE regress_squatter;
CREATE ROLE regress_registrant;
CREATE FUNCTION squatted() RETURNS text LANGUAGE sql AS $$ SELECT 'the squatter''s' $$;
ALTER FUNCTION squatted() OWNER TO regress_squatter;
ALTER TABLE apiary.functions DISABLE TRIGGER ALL;
INSERT INTO apiary.functions (name, fn, fn_oid, kind, registered_by)
VALUES ('restored_one', 'public.restored_one()', 'someone_elses()'::regprocedure, 'readonly', current_user::regrole),
       ('restored_two', 'public.restored_two()', 'restored_three()'::regprocedure, 'readonly', current_user::regrole),
       ('restored_three', 'public.restored_three()', 4000000000, 'readonly', current_user::regrole),
       ('squatted', 'public.squatted()', 4000000001, 'readonly', 'regress_registrant'::regrole);
ALTER TABLE apiary.functions ENABLE TRIGGER ALL;
SELECT apiary_invoke('restored_one'), apiary_invoke('restored_two'), apiary_invoke('restored_three');
SELECT apiary_invoke('squatted');
SELECT apiary.refresh_signatures();
SELECT name, fn, fn_oid::regprocedure FROM apiary.functions
WHERE name LIKE 'restored%' OR name = 'squatted' ORDER BY name;
SELECT apiary_invoke('restored_one'), apiary_invoke('restored_two'), apiary_invoke('restored_three');
DELETE FROM apiary.functions WHERE name = 'squatted';
DROP FUNCTION restored_one(), someone_elses(), restored_two(), restored_three(), squatted();
DROP ROLE regress_squatter, regress_registrant;
SELECT count(*) FROM apiary.functions WHERE name LIKE 'restored%';
-- Signatures are compared as the registry keeps them, unquoted, whatever
-- the session's quote_all_identifiers: a function that changed owners since
-- its registration is found.
CREATE ROLE regress_mover;
CREATE FUNCTION moved() RETURNS text LANGUAGE sql AS $$ SELECT 'moved' $$;
ALTER FUNCTION moved() OWNER TO regress_mover;
SET ROLE regress_mover;
SELECT apiary_register('public.moved()', 'readonly');
RESET ROLE;
ALTER FUNCTION moved() OWNER TO CURRENT_USER;
SET quote_all_identifiers = on;
SELECT apiary_invoke('moved');
RESET quote_all_identifiers;
DROP FUNCTION moved();
DROP ROLE regress_mover;
