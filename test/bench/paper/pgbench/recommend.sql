\set rlat random(0, 200000)
\set rlon random(0, 200000)
\set req random(0, 2)
WITH best AS (SELECT id FROM hotels ORDER BY CASE :req::int
	WHEN 0 THEN loc <-> point(-122.5 + :rlon::int / 1e6, 37.7 + :rlat::int / 1e6) WHEN 1 THEN -rate ELSE price END, id LIMIT 5)
SELECT jsonb_agg(jsonb_build_object('id', id, 'name', name, 'rate', rate, 'price', price, 'address', address) ORDER BY id)
FROM hotels WHERE id IN (SELECT id FROM best);
