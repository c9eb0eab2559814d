\set first random(1, :items - 9)
SELECT jsonb_agg(jsonb_build_object('id', id, 'name', name, 'price', price, 'stock', stock) ORDER BY id)
FROM items WHERE id BETWEEN :first::int AND :first::int + 9;
