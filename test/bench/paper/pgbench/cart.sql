\set u random(:shop_users / 2 + 1, :shop_users)
\set i random(1, :items)
INSERT INTO carts AS c VALUES (:u::int, :i::int, 1)
ON CONFLICT (uid, item) DO UPDATE SET qty = c.qty + excluded.qty RETURNING qty;
