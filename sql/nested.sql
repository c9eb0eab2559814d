--
-- Nested calls: an apiary function calling apiary_invoke.
--
CREATE TABLE ledger (id serial PRIMARY KEY, entry text NOT NULL);

CREATE FUNCTION write_entry(entry text) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
DECLARE n int;
BEGIN
  INSERT INTO ledger (entry) VALUES (write_entry.entry) RETURNING id INTO n;
  IF entry LIKE 'bad%' THEN
    RAISE EXCEPTION 'refusing entry "%"', entry USING ERRCODE = 'check_violation',
      DETAIL = 'Entries must not start with "bad".', HINT = 'Pick a nicer entry.';
  END IF;
  RETURN n;
END $$;

-- The callee runs in a subtransaction: the caller can catch its error, the
-- callee's writes are rolled back, the caller's own writes stay.
CREATE FUNCTION write_both(first text, second text) RETURNS text LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM apiary_invoke('write_entry', jsonb_build_object('entry', first));
  BEGIN
    PERFORM apiary_invoke('write_entry', jsonb_build_object('entry', second));
  EXCEPTION WHEN check_violation THEN
    RETURN 'caught: ' || SQLERRM;
  END;
  RETURN 'both written';
END $$;
SELECT apiary_invoke('write_both', '{"first": "one", "second": "two"}');
SELECT apiary_invoke('write_both', '{"first": "three", "second": "bad four"}');
SELECT entry FROM ledger ORDER BY id;

-- Uncaught, the callee's error reaches the top unchanged.
CREATE FUNCTION write_strict(entry text) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN (apiary_invoke('write_entry', jsonb_build_object('entry', entry)))::int;
END $$;
SELECT apiary_invoke('write_strict', '"bad five"');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM ledger WHERE entry LIKE '%five';

-- Even without an exception block the subtransaction rolls back alone: a C
-- or SQL caller that catches the error sees no trace of the callee.
CREATE FUNCTION try_entry(entry text) RETURNS text LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN apiary_invoke('write_entry', jsonb_build_object('entry', entry))::text;
EXCEPTION WHEN OTHERS THEN
  RETURN 'failed: ' || SQLSTATE;
END $$;
SELECT apiary_invoke('try_entry', '"bad six"'), apiary_invoke('try_entry', '"seven"');
SELECT entry FROM ledger ORDER BY id;

-- A nested call of a name that is not registered fails inside its own
-- subtransaction as well: the caller catches it, goes on, and its writes
-- commit with the rest of the transaction.
CREATE FUNCTION try_unknown(entry text) RETURNS text LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
DECLARE msg text;
BEGIN
  BEGIN
    PERFORM apiary_invoke('no_such_function', '{}');
  EXCEPTION WHEN undefined_function THEN
    msg := SQLERRM;
  END;
  PERFORM apiary_invoke('write_entry', jsonb_build_object('entry', entry));
  RETURN msg;
END $$;
BEGIN;
SELECT apiary_invoke('try_unknown', '"seven and a half"');
INSERT INTO ledger (entry) VALUES ('after the call');
COMMIT;
SELECT entry FROM ledger WHERE entry IN ('seven and a half', 'after the call') ORDER BY id;

-- Keyed nested calls are journaled under the enclosing keyed call, in the
-- outermost caller's key namespace.
CREATE FUNCTION write_keyed(entry text) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN apiary_invoke('write_entry', jsonb_build_object('entry', entry),
                       'entry:' || entry)::int;
END $$;
SELECT apiary_invoke('write_keyed', '"eight"', 'outer-8') = apiary_invoke('write_keyed', '"eight"', 'outer-8') AS once;
SELECT key, function, parent_key FROM apiary.invocations
WHERE key IN ('outer-8', 'entry:eight') ORDER BY started_at;
SELECT count(*) FROM ledger WHERE entry = 'eight';
-- An unkeyed retry of the outer call finds the inner key already used.
SELECT apiary_invoke('write_keyed', '"eight"') =
       (SELECT output FROM apiary.invocations WHERE key = 'entry:eight') AS recorded;
SELECT count(*) FROM ledger WHERE entry = 'eight';

-- A keyed call cannot re-enter itself with its own key.
CREATE FUNCTION loop_keyed(n int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN apiary_invoke('loop_keyed', to_jsonb(n), 'loop')::int;
END $$;
SELECT apiary_invoke('loop_keyed', '1', 'loop');

-- Unbounded recursion ends in the stack depth check, not in a crash.
CREATE FUNCTION recurse(n int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN apiary_invoke('recurse', to_jsonb(n + 1))::int;
END $$;
\set VERBOSITY terse
SELECT apiary_invoke('recurse', '0');
\set VERBOSITY default

-- A readonly caller cannot write through a transactional callee.
CREATE FUNCTION peek_then_write(entry text) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'readonly' AS $$
BEGIN
  RETURN apiary_invoke('write_entry', jsonb_build_object('entry', entry))::int;
END $$;
SELECT apiary_invoke('peek_then_write', '"nine"');
-- ... and the nesting state is clean after all these errors.
SELECT apiary_invoke('write_entry', '"ten"')::int > 0 AS ok;
SELECT count(*) FROM apiary.invocations WHERE parent_key IS NOT NULL;
