-- The paper's workloads: tables, data and their apiary functions.
--
-- Loaded by test/bench/paper.sh with psql variables for the scale:
--   items, shop_users (half check out a prefilled cart, half add to carts),
--   hotels, nights, rt_users (half read timelines, half follow), follows
--   (followees of each timeline user), posts (initial posts per user),
--   counters.
-- Every workload has a "reader" half and a "writer" half of its users where
-- a write would otherwise change what a later read costs (a checkout's cart,
-- a timeline's followees), so runs do the same work whatever their order.
-- Random data comes from setseed(), so every run loads the same rows.
SELECT setseed(0.42);

-- shop -----------------------------------------------------------------------
CREATE TABLE items (
	id int PRIMARY KEY,
	name text NOT NULL,
	price int NOT NULL,
	stock bigint NOT NULL CHECK (stock >= 0),
	stock0 bigint NOT NULL			-- initial stock, for the balance check
);
INSERT INTO items
SELECT g, 'item ' || g, 1 + (random() * 99)::int, 1000000000, 1000000000
FROM generate_series(1, :items) g;

CREATE TABLE carts (
	uid int NOT NULL,
	item int NOT NULL,
	qty int NOT NULL,
	PRIMARY KEY (uid, item)
);
-- checkout users 1..shop_users/2: three lines each, never changed
INSERT INTO carts
SELECT u, item, 1 + (random() * 2)::int
FROM generate_series(1, :shop_users / 2) u,
	LATERAL (SELECT DISTINCT 1 + ((random() * (:items - 1)) + u * 0)::int AS item
			 FROM generate_series(1, 3)) i
ON CONFLICT DO NOTHING;

CREATE TABLE orders (
	id bigserial PRIMARY KEY,
	uid int NOT NULL,
	total bigint NOT NULL
);
CREATE TABLE order_lines (
	oid bigint NOT NULL,
	item int NOT NULL,
	qty int NOT NULL,
	price int NOT NULL
);
CREATE INDEX ON order_lines (oid);
CREATE TABLE payments (
	oid bigint PRIMARY KEY,
	amount bigint NOT NULL
);

-- hotel (DeathStarBench hotel reservation) -----------------------------------
CREATE TABLE hotels (
	id int PRIMARY KEY,
	name text NOT NULL,
	loc point NOT NULL,				-- (lon, lat)
	rate real NOT NULL,				-- stars
	price int NOT NULL,
	capacity int NOT NULL,
	address text NOT NULL,
	description text NOT NULL
);
INSERT INTO hotels
SELECT g, 'hotel ' || g,
	point(-122.5 + random() * 0.2, 37.7 + random() * 0.2),
	round((1 + random() * 4)::numeric, 1), 80 + (random() * 300)::int,
	-- DeathStarBench gives 200 rooms; ours never fill up, so that every
	-- reservation takes the same path and the checks stay exact
	1000000, g || ' Market Street', repeat('A fine hotel. ', 10)
FROM generate_series(1, :hotels) g;
CREATE INDEX ON hotels USING gist (loc);

CREATE TABLE room_nights (
	hotel int NOT NULL,
	night date NOT NULL,
	booked int NOT NULL DEFAULT 0,
	capacity int NOT NULL,
	PRIMARY KEY (hotel, night)
);
INSERT INTO room_nights
SELECT h.id, DATE '2026-03-01' + n, 0, h.capacity
FROM hotels h, generate_series(0, :nights - 1) n;

CREATE TABLE reservations (
	id bigserial PRIMARY KEY,
	uid int NOT NULL,
	hotel int NOT NULL,
	check_in date NOT NULL,
	check_out date NOT NULL,
	rooms int NOT NULL
);

-- retwis ---------------------------------------------------------------------
CREATE TABLE rt_users (
	id int PRIMARY KEY,
	nposts int NOT NULL DEFAULT 0,
	nfollowing int NOT NULL DEFAULT 0
);
INSERT INTO rt_users (id) SELECT g FROM generate_series(1, :rt_users) g;
CREATE TABLE follows (
	follower int NOT NULL,
	followee int NOT NULL,
	PRIMARY KEY (follower, followee)
);
-- timeline users 1..rt_users/2 follow exactly :follows others, never changed
INSERT INTO follows
SELECT u, 1 + ((u + k * 7919) % :rt_users)
FROM generate_series(1, :rt_users / 2) u, generate_series(1, :follows) k;
CREATE TABLE posts (
	id bigserial PRIMARY KEY,
	author int NOT NULL,
	body text NOT NULL
);
INSERT INTO posts (author, body)
SELECT u, 'post ' || k || ' of user ' || u
FROM generate_series(1, :posts) k, generate_series(1, :rt_users) u;
CREATE INDEX ON posts (author, id DESC);
UPDATE rt_users u SET nposts = :posts,
	nfollowing = (SELECT count(*) FROM follows f WHERE f.follower = u.id);

-- increment ------------------------------------------------------------------
CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
INSERT INTO counters SELECT g, 0 FROM generate_series(1, :counters) g;

-- =============================================================================
-- apiary functions.  Each runs the same statements as the interactive
-- baseline sends one round trip at a time (driver.c) and as the raw pgbench
-- scripts (pgbench/*.sql) pipeline.
--
-- They are PL/pgSQL (or C), not SQL: the SET clause that registers a
-- function keeps a SQL function from being inlined, and a SQL function that
-- is not inlined plans its statements again at every call, where PL/pgSQL
-- keeps its plans for the session.
-- =============================================================================

-- a catalogue page of 10 items
CREATE FUNCTION shop_browse(first int) RETURNS jsonb
LANGUAGE plpgsql STABLE SET apiary.kind = 'readonly' AS $$
BEGIN
	RETURN (SELECT jsonb_agg(jsonb_build_object('id', id, 'name', name, 'price', price, 'stock', stock) ORDER BY id)
		FROM items WHERE id BETWEEN first AND first + 9);
END $$;

CREATE FUNCTION shop_add_to_cart(uid int, item int, qty int DEFAULT 1) RETURNS int
LANGUAGE plpgsql SET apiary.kind = 'transactional' AS $$
DECLARE q int;
BEGIN
	INSERT INTO carts AS c VALUES (shop_add_to_cart.uid, shop_add_to_cart.item, shop_add_to_cart.qty)
	ON CONFLICT ON CONSTRAINT carts_pkey DO UPDATE SET qty = c.qty + excluded.qty
	RETURNING c.qty INTO q;
	RETURN q;
END $$;

-- checkout, step 1 (the workflow's root): reserve the cart's stock, locking
-- the items in id order so that concurrent checkouts cannot deadlock, then
-- queue step 2 and return its future (the workflow's output is step 3's)
CREATE FUNCTION shop_checkout(uid int) RETURNS jsonb
LANGUAGE plpgsql SET apiary.kind = 'transactional' AS $$
DECLARE total bigint;
BEGIN
	PERFORM 1 FROM items WHERE id IN (SELECT c.item FROM carts c WHERE c.uid = shop_checkout.uid)
		ORDER BY id FOR UPDATE;
	WITH u AS (UPDATE items i SET stock = i.stock - c.qty FROM carts c
			   WHERE c.uid = shop_checkout.uid AND i.id = c.item
			   RETURNING c.qty * i.price AS amount)
	SELECT sum(amount) INTO total FROM u;
	RETURN apiary_queue('shop_create_order', jsonb_build_object('uid', uid, 'total', total));
END $$;

-- step 2: the order and its lines
CREATE FUNCTION shop_create_order(uid int, total bigint) RETURNS jsonb
LANGUAGE plpgsql SET apiary.kind = 'transactional' AS $$
DECLARE o bigint;
BEGIN
	INSERT INTO orders (uid, total) VALUES (uid, total) RETURNING id INTO o;
	INSERT INTO order_lines SELECT o, c.item, c.qty, i.price
		FROM carts c JOIN items i ON i.id = c.item WHERE c.uid = shop_create_order.uid;
	RETURN apiary_queue('shop_charge', jsonb_build_object('oid', o, 'amount', total));
END $$;

-- step 3: the payment
CREATE FUNCTION shop_charge(oid bigint, amount bigint) RETURNS bigint
LANGUAGE plpgsql SET apiary.kind = 'transactional' AS $$
BEGIN
	INSERT INTO payments VALUES (oid, amount);
	RETURN oid;
END $$;

-- hotel search, as DeathStarBench's frontend composes it: the geo service's
-- nearest hotels, the rate service's availability for the dates, the
-- profile service's details of those available
CREATE FUNCTION hotel_search(lat float8, lon float8, check_in date, check_out date)
RETURNS jsonb LANGUAGE plpgsql STABLE SET apiary.kind = 'readonly' AS $$
DECLARE near int[]; avail int[];
BEGIN
	SELECT array_agg(id) INTO near FROM
		(SELECT id FROM hotels ORDER BY loc <-> point(lon, lat) LIMIT 5) h;
	SELECT array_agg(hotel) INTO avail FROM
		(SELECT hotel FROM room_nights WHERE hotel = ANY (near)
			AND night >= check_in AND night < check_out
		 GROUP BY hotel HAVING bool_and(booked < capacity)) a;
	RETURN (SELECT jsonb_agg(jsonb_build_object('id', id, 'name', name, 'rate', rate,
			'price', price, 'address', address) ORDER BY id)
		FROM hotels WHERE id = ANY (avail));
END $$;

-- recommendation by distance, rate or price, then the profiles
CREATE FUNCTION hotel_recommend(lat float8, lon float8, require text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET apiary.kind = 'readonly' AS $$
DECLARE best int[];
BEGIN
	SELECT array_agg(id) INTO best FROM (SELECT id FROM hotels ORDER BY
		CASE require WHEN 'dis' THEN loc <-> point(lon, lat)
			WHEN 'rate' THEN -rate ELSE price END, id LIMIT 5) h;
	RETURN (SELECT jsonb_agg(jsonb_build_object('id', id, 'name', name, 'rate', rate,
			'price', price, 'address', address) ORDER BY id)
		FROM hotels WHERE id = ANY (best));
END $$;

-- check availability for every night and reserve, in one transaction
CREATE FUNCTION hotel_reserve(uid int, hotel int, check_in date, check_out date,
							  rooms int DEFAULT 1) RETURNS bigint
LANGUAGE plpgsql SET apiary.kind = 'transactional' AS $$
DECLARE free int; r bigint;
BEGIN
	SELECT min(capacity - booked) INTO free FROM
		(SELECT capacity, booked FROM room_nights n WHERE n.hotel = hotel_reserve.hotel
			AND night >= check_in AND night < check_out ORDER BY night FOR UPDATE) x;
	IF free IS NULL OR free < rooms THEN
		RAISE EXCEPTION 'hotel % is full', hotel USING ERRCODE = 'check_violation';
	END IF;
	UPDATE room_nights n SET booked = booked + rooms WHERE n.hotel = hotel_reserve.hotel
		AND night >= check_in AND night < check_out;
	INSERT INTO reservations (uid, hotel, check_in, check_out, rooms)
		VALUES (uid, hotel, check_in, check_out, rooms) RETURNING id INTO r;
	RETURN r;
END $$;

CREATE FUNCTION retwis_post(uid int, body text) RETURNS bigint
LANGUAGE plpgsql SET apiary.kind = 'transactional' AS $$
DECLARE p bigint;
BEGIN
	INSERT INTO posts (author, body) VALUES (uid, body) RETURNING id INTO p;
	UPDATE rt_users SET nposts = nposts + 1 WHERE id = uid;
	RETURN p;
END $$;

CREATE FUNCTION retwis_follow(uid int, other int) RETURNS boolean
LANGUAGE plpgsql SET apiary.kind = 'transactional' AS $$
BEGIN
	INSERT INTO follows VALUES (uid, other) ON CONFLICT DO NOTHING;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	UPDATE rt_users SET nfollowing = nfollowing + 1 WHERE id = uid;
	RETURN true;
END $$;

-- the timeline: one task per followee reads its latest posts (the root,
-- paper_timeline, is in C: apiary_paper.c), and a merge task takes their
-- futures as arguments and keeps the latest 10
CREATE FUNCTION retwis_posts_of(author int) RETURNS jsonb
LANGUAGE plpgsql STABLE SET apiary.kind = 'readonly' AS $$
BEGIN
	RETURN (SELECT coalesce(jsonb_agg(jsonb_build_object('id', id, 'author', x.author, 'body', body) ORDER BY id DESC), '[]')
		FROM (SELECT id, p.author, body FROM posts p WHERE p.author = retwis_posts_of.author
			  ORDER BY id DESC LIMIT 10) x);
END $$;

CREATE FUNCTION retwis_merge(
	p1 jsonb DEFAULT NULL, p2 jsonb DEFAULT NULL, p3 jsonb DEFAULT NULL, p4 jsonb DEFAULT NULL,
	p5 jsonb DEFAULT NULL, p6 jsonb DEFAULT NULL, p7 jsonb DEFAULT NULL, p8 jsonb DEFAULT NULL,
	p9 jsonb DEFAULT NULL, p10 jsonb DEFAULT NULL, p11 jsonb DEFAULT NULL, p12 jsonb DEFAULT NULL,
	p13 jsonb DEFAULT NULL, p14 jsonb DEFAULT NULL, p15 jsonb DEFAULT NULL, p16 jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE SET apiary.kind = 'readonly' AS $$
BEGIN
	RETURN (SELECT coalesce(jsonb_agg(p ORDER BY (p->>'id')::bigint DESC), '[]') FROM
		(SELECT p FROM unnest(ARRAY[p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12,
									p13, p14, p15, p16]) l, jsonb_array_elements(l) p
		 ORDER BY (p->>'id')::bigint DESC LIMIT 10) x);
END $$;

-- the C functions (apiary_paper.c): increment, and the timeline's root
CREATE FUNCTION paper_increment(id int) RETURNS bigint
LANGUAGE c STRICT SET apiary.kind = 'transactional'
AS 'apiary_paper', 'paper_increment';
CREATE FUNCTION paper_timeline(uid int) RETURNS jsonb
LANGUAGE c STRICT SET apiary.kind = 'transactional'
AS 'apiary_paper', 'paper_timeline';

ANALYZE;
