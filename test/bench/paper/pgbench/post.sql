\set u random(1, :rt_users)
\set r random(0, 1073741824)
\startpipeline
BEGIN;
INSERT INTO posts (author, body) VALUES (:u::int, 'a post by ' || :u::int || ', ' || :r::int);
UPDATE rt_users SET nposts = nposts + 1 WHERE id = :u::int;
COMMIT;
\endpipeline
