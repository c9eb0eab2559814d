-- the checkout's three transactions, pipelined: one round trip, three commits
-- (currval in a subquery: compared directly, a volatile function rules out
-- the index scan on orders)
\set u random(1, :shop_users / 2)
\startpipeline
BEGIN;
SELECT 1 FROM items WHERE id IN (SELECT item FROM carts WHERE uid = :u::int) ORDER BY id FOR UPDATE;
UPDATE items i SET stock = i.stock - c.qty FROM carts c WHERE c.uid = :u::int AND i.id = c.item;
COMMIT;
BEGIN;
INSERT INTO orders (uid, total)
SELECT :u::int, sum(c.qty * i.price) FROM carts c JOIN items i ON i.id = c.item WHERE c.uid = :u::int;
INSERT INTO order_lines SELECT currval('orders_id_seq'), c.item, c.qty, i.price
FROM carts c JOIN items i ON i.id = c.item WHERE c.uid = :u::int;
COMMIT;
BEGIN;
INSERT INTO payments SELECT id, total FROM orders WHERE id = (SELECT currval('orders_id_seq'));
COMMIT;
\endpipeline
