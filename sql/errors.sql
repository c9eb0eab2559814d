--
-- Errors: each with its SQLSTATE, none leaving anything behind.
--
-- error_of runs a statement and shows the error it raises.
CREATE FUNCTION error_of(stmt text, OUT code text, OUT message text,
                         OUT detail text, OUT hint text, OUT context text)
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  message := 'no error';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
    detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT,
    context = PG_EXCEPTION_CONTEXT;
  context := split_part(context, E'\n', 1);
END $$;
\x on
CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0));
INSERT INTO items VALUES (1, 3);
CREATE FUNCTION take(id int, qty int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  UPDATE items SET qty = items.qty - take.qty WHERE items.id = take.id RETURNING items.qty
$$;
CREATE FUNCTION take_all(id int) RETURNS int LANGUAGE sql
AS $$ UPDATE items SET qty = 0 WHERE items.id = take_all.id RETURNING 0 $$;

-- Unknown names, with the nearest registered names as a hint.
SELECT * FROM error_of($$SELECT apiary_invoke('tkae', '{}')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('nonesuch', '{}')$$);
-- A name longer than any registered one is cut short in the message.
SELECT * FROM error_of($$SELECT apiary_invoke(repeat('x', 1000), '{}')$$);
-- A function that exists but is not registered.
SELECT * FROM error_of($$SELECT apiary_invoke('take_all', '{"id": 1}')$$);
-- NULLs.
SELECT * FROM error_of($$SELECT apiary_invoke(NULL, '{}')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('take', NULL)$$);

-- Binding errors name the parameter.
SELECT * FROM error_of($$SELECT apiary_invoke('take', '{"id": 1, "qyt": 1}')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('take', '{"id": 1, "color": "red"}')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('take', '{"id": 1}')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('take', '[1, 2, 3]')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('take', '[1]')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('take', '1')$$);
-- Parameters without names bind only by position, and the hints say so.
CREATE FUNCTION add_unnamed(int, int) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT $1 + $2 $$;
SELECT * FROM error_of($$SELECT apiary_invoke('add_unnamed', '{}')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('add_unnamed', '5')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('add_unnamed', '[5]')$$);
SELECT apiary_invoke('add_unnamed', '[5, 6]');
-- An empty name is no name.
SELECT * FROM error_of($$SELECT apiary_invoke('', '{}')$$);
SELECT * FROM error_of($$SELECT apiary_unregister('')$$);

-- Conversion errors keep the conversion's own SQLSTATE.
SELECT * FROM error_of($$SELECT apiary_invoke('take', '{"id": 1, "qty": "lots"}')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('take', '{"id": 1, "qty": 1.5}')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('take', '{"id": 1, "qty": 99999999999}')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('take', '{"id": 1, "qty": true}')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('take', '{"id": 1, "qty": {"n": 1}}')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('take', '{"id": [1], "qty": 1}')$$);
-- Arrays and rows come from JSON arrays, objects or text: a number or a
-- boolean is a type mismatch.  Their conversion runs in the call
-- statement, whose context line it gives.
CREATE TYPE pair AS (a int, b int);
CREATE FUNCTION sum_pair(p pair, extra int[] DEFAULT '{}') RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT p.a + p.b + coalesce((SELECT sum(e) FROM unnest(extra) e), 0)::int $$;
SELECT * FROM error_of($$SELECT apiary_invoke('sum_pair', '{"p": 3}')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('sum_pair', '{"p": {"a": 1, "b": 2}, "extra": true}')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('sum_pair', '{"p": {"a": "one", "b": 2}}')$$);
SELECT apiary_invoke('sum_pair', '{"p": "(1,2)", "extra": [3]}');

-- The function's own errors pass through unchanged.
SELECT * FROM error_of($$SELECT apiary_invoke('take', '{"id": 1, "qty": 5}')$$);
CREATE FUNCTION fussy(x int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RAISE EXCEPTION 'x is %', x USING ERRCODE = 'AP001', DETAIL = 'Too fussy.',
    HINT = 'Try another x.';
END $$;
SELECT * FROM error_of($$SELECT apiary_invoke('fussy', '7')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('fussy', '"seven"')$$);
SELECT qty FROM items;

-- Limits on arguments.
SET apiary.max_args_size = '100B';
SELECT * FROM error_of($$SELECT apiary_invoke('take', jsonb_build_object('id', 1, 'qty', 1, 'pad', repeat('x', 200)))$$);
RESET apiary.max_args_size;
SET apiary.max_args_depth = 3;
SELECT * FROM error_of($$SELECT apiary_invoke('take', '{"id": 1, "qty": [[[[1]]]]}')$$);
SELECT * FROM error_of($$SELECT apiary_invoke('take', '{"id": 1, "qty": [[1]]}')$$);
RESET apiary.max_args_depth;
-- The limits are for superusers to set.
CREATE ROLE apiary_limited;
SET ROLE apiary_limited;
SELECT * FROM error_of($$SET apiary.max_args_size = '1GB'$$);
RESET ROLE;
-- Malformed JSON is rejected before apiary sees it.
SELECT * FROM error_of($$SELECT apiary_invoke('take', '{"id": 1,')$$);
\x off

-- Nothing was written by any of these.
SELECT qty FROM items;
SELECT count(*) FROM apiary.invocations WHERE function IN ('take', 'fussy');
