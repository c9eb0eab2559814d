--
-- DROP EXTENSION removes everything; CREATE EXTENSION starts afresh.
--
DROP EXTENSION apiary;
SELECT count(*) AS apiary_schemas FROM pg_namespace WHERE nspname = 'apiary';
SELECT count(*) AS event_triggers FROM pg_event_trigger WHERE evtname LIKE 'apiary%';
SELECT count(*) AS functions FROM pg_proc WHERE proname LIKE 'apiary%';
-- Functions that declared a kind keep their setting and work as before.
SELECT proconfig FROM pg_proc WHERE proname = 'take';
SELECT take(1, 1);
-- DDL goes on without the extension.
CREATE FUNCTION later() RETURNS int LANGUAGE sql SET apiary.kind = 'readonly' AS $$ SELECT 1 $$;
DROP FUNCTION later();

-- Installed again (here in another schema), it starts with an empty
-- registry: declared functions register again when next created or altered.
CREATE SCHEMA api;
CREATE EXTENSION apiary SCHEMA api;
SELECT count(*) FROM apiary.functions;
ALTER FUNCTION take(int, int) SET apiary.kind = 'transactional';
SELECT api.apiary_invoke('take', '{"id": 1, "qty": 1}');
DROP EXTENSION apiary;
DROP SCHEMA api;
