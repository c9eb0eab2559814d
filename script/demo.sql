-- apiary demo: a tiny shop whose logic runs inside PostgreSQL.
\set ECHO queries
\pset footer off
CREATE EXTENSION apiary;
-- (provenance records from the moment its slot exists: wait for that)
DO $$
BEGIN
  FOR i IN 1..100 LOOP
    EXIT WHEN (SELECT state = 'recording' FROM apiary.provenance_status);
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;

CREATE TABLE items  (id int PRIMARY KEY, name text NOT NULL, price numeric NOT NULL,
                     stock int NOT NULL CHECK (stock >= 0));
CREATE TABLE orders (id serial PRIMARY KEY, item int REFERENCES items, qty int NOT NULL,
                     total numeric NOT NULL);
INSERT INTO items VALUES (1, 'honey jar', 8.50, 10), (2, 'beeswax candle', 4.00, 3);

-- Functions register themselves with one SET clause...
CREATE FUNCTION reserve(item int, qty int DEFAULT 1) RETURNS int
LANGUAGE sql SET apiary.kind = 'transactional' AS $$
  UPDATE items SET stock = stock - qty WHERE id = item RETURNING stock
$$;

CREATE FUNCTION place_order(item int, qty int) RETURNS jsonb
LANGUAGE plpgsql SET apiary.kind = 'transactional' AS $$
DECLARE
  left_in_stock int;
  order_id int;
BEGIN
  -- a nested call: runs in a subtransaction of this one, journaled as a child
  left_in_stock := apiary_invoke('reserve', jsonb_build_object('item', item, 'qty', qty));
  INSERT INTO orders (item, qty, total)
  SELECT item, qty, qty * price FROM items WHERE id = item
  RETURNING id INTO order_id;
  RETURN jsonb_build_object('order', order_id, 'left_in_stock', left_in_stock);
END $$;

-- ... or explicitly.
CREATE FUNCTION catalogue() RETURNS TABLE (id int, name text, price numeric, stock int)
LANGUAGE sql STABLE AS $$ SELECT id, name, price, stock FROM items ORDER BY id $$;
SELECT apiary_register('catalogue()', 'readonly');

SELECT name, fn, kind, declared FROM apiary.functions ORDER BY name;

-- Calls take JSON and give JSON.
SELECT jsonb_pretty(apiary_invoke('catalogue'));
SELECT apiary_invoke('place_order', '{"item": 1, "qty": 2}');

-- A key makes a call exactly-once: the retry returns the recorded output.
SELECT apiary_invoke('place_order', '{"item": 1, "qty": 3}', 'checkout-42');
SELECT apiary_invoke('place_order', '{"item": 1, "qty": 3}', 'checkout-42');
SELECT count(*) AS orders FROM orders;
SELECT key, function, args, output FROM apiary.invocations;

-- Errors keep their SQLSTATE and say what to do.
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
SELECT apiary_invoke('place_order', '{"item": 2, "qty": 5}');
SELECT apiary_invoke('place_ordr', '{"item": 2}');
SELECT apiary_invoke('place_order', '{"item": 2, "qtty": 1}');
\set VERBOSITY default
-- The failed order left nothing behind.
SELECT * FROM catalogue();

--
-- Workflows: run by background workers after the caller commits.
--
\set ON_ERROR_STOP 1
CREATE TABLE payments (order_id int, amount numeric, charged_with text);
CREATE TABLE receipts (order_id int, line text);

-- An external step: retried with backoff if it fails, with a key that stays
-- the same across attempts, for the payment provider's idempotency.
CREATE FUNCTION charge_card(order_id int, amount numeric) RETURNS jsonb
LANGUAGE sql SET apiary.kind = 'external' AS $$
  INSERT INTO payments VALUES (order_id, amount, apiary_task_key());
  SELECT jsonb_build_object('order', order_id, 'paid', amount)
$$;
CREATE FUNCTION send_receipt(order_id int, payment jsonb) RETURNS text
LANGUAGE sql SET apiary.kind = 'transactional' AS $$
  INSERT INTO receipts VALUES (order_id, 'paid ' || (payment->>'paid'))
  RETURNING 'receipt for order ' || order_id || ': paid ' || (payment->>'paid')
$$;
-- checkout places the order, queues the charge, and queues the receipt with
-- the charge's future as an argument; all of it commits together.
CREATE FUNCTION checkout(item int, qty int) RETURNS jsonb
LANGUAGE plpgsql SET apiary.kind = 'transactional' AS $$
DECLARE
  placed jsonb;
  paid jsonb;
BEGIN
  placed := apiary_invoke('place_order', jsonb_build_object('item', item, 'qty', qty));
  paid := apiary_queue('charge_card', jsonb_build_object(
            'order_id', placed->'order',
            'amount', (SELECT total FROM orders WHERE id = (placed->>'order')::int)));
  RETURN apiary_queue('send_receipt', jsonb_build_object(
            'order_id', placed->'order', 'payment', paid));
END $$;

-- (an order not through in 5 minutes is cancelled, its unfinished steps with it)
SELECT apiary_start('checkout', '{"item": 2, "qty": 1}', key => 'web-order-1001',
                    timeout => '5 min');
SELECT apiary_result('web-order-1001', timeout => '30 s');
SELECT task, parent, function, state, attempts, output FROM apiary_status('web-order-1001');
SELECT * FROM payments;

-- The workflow as a graph (Graphviz DOT), and what each function cost.
SELECT apiary_graph('web-order-1001');
SELECT function, calls, errors, round(mean_ms::numeric, 2) AS mean_ms,
       round(p99_ms::numeric, 2) AS p99_ms
FROM apiary.stats ORDER BY function;

-- Provenance (apiary.provenance = writes, set for this demo server): the
-- rows the workflow's functions wrote, decoded from the WAL.
DO $$
BEGIN
  FOR i IN 1..100 LOOP
    EXIT WHEN EXISTS (SELECT FROM apiary.provenance WHERE workflow = 'web-order-1001'
                      AND function = 'send_receipt');
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;
SELECT task, function, relname, operation, "row"
FROM apiary.provenance WHERE workflow = 'web-order-1001' ORDER BY task, relname, operation;
