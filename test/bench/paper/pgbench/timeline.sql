\set u random(1, :rt_users / 2)
SELECT jsonb_agg(jsonb_build_object('id', p.id, 'author', p.author, 'body', p.body) ORDER BY p.id DESC)
FROM (SELECT p.* FROM follows f CROSS JOIN LATERAL
	(SELECT id, author, body FROM posts WHERE author = f.followee ORDER BY id DESC LIMIT 10) p
	WHERE f.follower = :u::int ORDER BY p.id DESC LIMIT 10) p;
