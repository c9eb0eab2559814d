\set u random(1, 500)
\set h random(1, :hotels)
\set in random(0, :nights - 4)
\set len random(1, 3)
\startpipeline
BEGIN;
SELECT min(capacity - booked) FROM (SELECT capacity, booked FROM room_nights WHERE hotel = :h::int
	AND night >= DATE '2026-03-01' + :in::int AND night < DATE '2026-03-01' + :in::int + :len::int ORDER BY night FOR UPDATE) x;
UPDATE room_nights SET booked = booked + 1 WHERE hotel = :h::int
	AND night >= DATE '2026-03-01' + :in::int AND night < DATE '2026-03-01' + :in::int + :len::int AND booked < capacity;
INSERT INTO reservations (uid, hotel, check_in, check_out, rooms)
VALUES (:u::int, :h::int, DATE '2026-03-01' + :in::int, DATE '2026-03-01' + :in::int + :len::int, 1);
COMMIT;
\endpipeline
