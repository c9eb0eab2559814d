\set u random(:rt_users / 2 + 1, :rt_users)
\set o random(1, :rt_users)
WITH ins AS (INSERT INTO follows VALUES (:u::int, :o::int) ON CONFLICT DO NOTHING RETURNING follower)
UPDATE rt_users SET nfollowing = nfollowing + 1 WHERE id IN (SELECT follower FROM ins);
