\set rlat random(0, 200000)
\set rlon random(0, 200000)
\set in random(0, :nights - 4)
\set len random(1, 3)
WITH near AS (SELECT id FROM hotels ORDER BY loc <-> point(-122.5 + :rlon::int / 1e6, 37.7 + :rlat::int / 1e6) LIMIT 5),
avail AS (SELECT hotel FROM room_nights WHERE hotel IN (SELECT id FROM near)
	AND night >= DATE '2026-03-01' + :in::int AND night < DATE '2026-03-01' + :in::int + :len::int
	GROUP BY hotel HAVING bool_and(booked < capacity))
SELECT jsonb_agg(jsonb_build_object('id', id, 'name', name, 'rate', rate, 'price', price, 'address', address) ORDER BY id)
FROM hotels WHERE id IN (SELECT hotel FROM avail);
