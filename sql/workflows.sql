--
-- Workflows: tasks run by the background executors, composed with futures.
--
-- wait_until polls a condition for up to a minute and says whether it
-- came true (a wait that times out shows as f).  Each poll reads the
-- statistics afresh: pg_stat_activity would otherwise show the whole call
-- what its first read saw.
CREATE FUNCTION wait_until(cond text) RETURNS bool LANGUAGE plpgsql AS $$
DECLARE
  ok bool;
BEGIN
  FOR i IN 1..1200 LOOP
    PERFORM pg_stat_clear_snapshot();
    EXECUTE 'SELECT ' || cond INTO ok;
    IF ok THEN
      RETURN true;
    END IF;
    PERFORM pg_sleep(0.05);
  END LOOP;
  RETURN false;
END $$;
CREATE TABLE carts (id int PRIMARY KEY, amount int NOT NULL, state text NOT NULL);
INSERT INTO carts VALUES (7, 42, 'open'), (8, 10, 'open');
CREATE TABLE payments (cart int, amount int);
CREATE TABLE receipts (cart int, payment jsonb);

CREATE FUNCTION charge_card(cart int, amount int) RETURNS jsonb LANGUAGE sql
SET apiary.kind = 'external' AS $$
  INSERT INTO payments VALUES (cart, amount);
  SELECT jsonb_build_object('paid', amount, 'cart', cart)
$$;
CREATE FUNCTION send_receipt(cart int, payment jsonb) RETURNS text LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  INSERT INTO receipts VALUES (cart, payment);
  SELECT 'receipt for cart ' || cart || ': paid ' || (payment->>'paid')
$$;
-- The worked example: checkout's update, the two queued tasks and the edge
-- between them commit together.
CREATE FUNCTION checkout(cart int) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
DECLARE total int; paid jsonb;
BEGIN
  UPDATE carts SET state = 'ordered' WHERE id = cart RETURNING amount INTO total;
  paid := apiary_queue('charge_card', jsonb_build_object('cart', cart, 'amount', total));
  RETURN apiary_queue('send_receipt', jsonb_build_object('cart', cart, 'payment', paid));
END $$;

SELECT apiary_start('checkout', '{"cart": 7}', key => 'order-7');
SELECT apiary_result('order-7', timeout => '60 s');
SELECT task, parent, function, state, attempts, waiting_for, linked_to, output
FROM apiary_status('order-7');
SELECT * FROM payments;
SELECT * FROM receipts;
SELECT state FROM carts WHERE id = 7;

-- Starting the same key again is the same workflow; another call is not.
SELECT apiary_start('checkout', '{"cart": 7}', key => 'order-7');
SELECT apiary_start('checkout', '{"cart": 8}', key => 'order-7');
SELECT count(*) FROM payments;

-- Without a key, the workflow id is generated.
SELECT apiary_start('checkout', '{"cart": 8}') AS id \gset
SELECT length(:'id') AS id_length, apiary_result(:'id', '60 s');

-- The arguments must bind to the function's parameters when the workflow
-- starts, as for apiary_invoke.  An empty workflow id is an error, and so
-- is a start in a read-only transaction (a standby's, say).
SELECT apiary_start('checkout', '{"cartt": 8}');
SELECT apiary_start('checkout', '{"cart": 8}', '');
BEGIN READ ONLY;
SELECT apiary_start('checkout', '{"cart": 8}');
ROLLBACK;

--
-- Fan-out and fan-in: futures as arguments, chains of returned futures.
--
CREATE FUNCTION square(x int) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT x * x $$;
CREATE FUNCTION add3(a int, b int, c int) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT a + b + c $$;
CREATE FUNCTION sum_of_squares(a int, b int, c int) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN apiary_queue('add3', jsonb_build_object(
    'a', apiary_queue('square', to_jsonb(a)),
    'b', apiary_queue('square', to_jsonb(b)),
    'c', apiary_queue('square', to_jsonb(c))));
END $$;
SELECT apiary_start('sum_of_squares', '[1, 2, 3]', 'squares');
SELECT apiary_result('squares', '60 s');
SELECT function, state, waiting_for, output FROM apiary_status('squares') ORDER BY task;
-- An id started already is looked at before the call: another call (here
-- one whose arguments would not even bind) is 23505, and the same call is
-- the workflow started, even with its function unregistered since.
SELECT apiary_start('square', '{"y": 1}', 'squares');
\echo :LAST_ERROR_SQLSTATE
ALTER FUNCTION sum_of_squares(int, int, int) RESET apiary.kind;
SELECT apiary_start('sum_of_squares', '[1, 2, 3]', 'squares');
ALTER FUNCTION sum_of_squares(int, int, int) SET apiary.kind = 'transactional';
-- A readonly function may not start a workflow: that is a write.
CREATE FUNCTION start_square(x int) RETURNS text LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT apiary_start('square', to_jsonb(x), 'square-from-readonly') $$;
SELECT apiary_invoke('start_square', '3');

-- A chain: each step returns the future of the next.
CREATE FUNCTION countdown(n int) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  IF n = 0 THEN RETURN '"liftoff"'; END IF;
  RETURN apiary_queue('countdown', to_jsonb(n - 1));
END $$;
SELECT apiary_start('countdown', '5', 'countdown');
SELECT apiary_result('countdown', '60 s');
SELECT count(*) AS tasks, count(*) FILTER (WHERE linked_to IS NOT NULL) AS linked
FROM apiary_status('countdown');

--
-- Failures: re-raised with the original SQLSTATE, naming task and workflow.
--
CREATE TABLE issuer (approves bool NOT NULL);
INSERT INTO issuer VALUES (false);
CREATE FUNCTION decline(cart int) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  IF NOT (SELECT approves FROM issuer) THEN
    RAISE EXCEPTION 'card declined for cart %', cart USING ERRCODE = 'AP402',
      DETAIL = 'The issuer said no.', HINT = 'Try another card.';
  END IF;
  RETURN jsonb_build_object('paid', 10, 'cart', cart);
END $$;
CREATE FUNCTION checkout_declined(cart int) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
DECLARE paid jsonb;
BEGIN
  paid := apiary_queue('decline', to_jsonb(cart));
  RETURN apiary_queue('send_receipt', jsonb_build_object('cart', cart, 'payment', paid));
END $$;
SELECT apiary_start('checkout_declined', '8', 'declined');
SELECT apiary_result('declined', '60 s');
\echo :LAST_ERROR_SQLSTATE
-- the receipt was never sent: its task was cancelled, with the cause
SELECT function, state, error->>'sqlstate' AS sqlstate, error->>'message' AS message,
       error->>'function' AS failed_function, error->>'cancelled' AS cancelled
FROM apiary_status('declined') ORDER BY task;
SELECT count(*) FROM receipts WHERE cart = 8;
-- Once the cause is fixed, apiary_resume queues the failed and cancelled
-- tasks again, and the workflow completes.
UPDATE issuer SET approves = true;
SELECT apiary_resume('declined');
SELECT apiary_result('declined', '60 s');
SELECT function, state, error FROM apiary_status('declined') ORDER BY task;
SELECT count(*) FROM receipts WHERE cart = 8;
SELECT apiary_resume('no-such-workflow');

-- A failed task rolls back its own effects only.
CREATE FUNCTION pay_then_fail(cart int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  INSERT INTO payments VALUES (cart, -1);
  RETURN 1 / 0;
END $$;
SELECT apiary_start('pay_then_fail', '99', 'div0');
SELECT apiary_result('div0', '60 s');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM payments WHERE cart = 99;

--
-- Waiting, and refusing to wait.
--
-- The transaction that starts a workflow cannot wait for it.
BEGIN;
SELECT apiary_start('square', '4', 'own');
SELECT apiary_result('own');
ROLLBACK;
-- Nor can a REPEATABLE READ transaction, whose snapshot would never see the
-- workflow finish.  (This session holds an advisory lock that the task waits
-- for, so the workflow is certainly still running.)
CREATE FUNCTION gated(x int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT x FROM pg_advisory_xact_lock(4242) $$;
SELECT pg_advisory_lock(4242);
SELECT apiary_start('gated', '1', 'gated');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT apiary_result('gated');
ROLLBACK;
-- A timeout ends the wait, not the workflow.
SELECT apiary_result('gated', '10 ms');
SELECT apiary_result('gated', '-1 s');
SELECT pg_advisory_unlock(4242);
SELECT apiary_result('gated', '60 s');
SELECT apiary_result('no-such-workflow');
SELECT apiary_result(NULL);

--
-- Retries, timeouts, cancellation.
--
-- An external function is retried, with backoff, after any error, and sees
-- the same apiary_task_key() at every attempt (a sequence counts attempts,
-- since a failed attempt's writes roll back).
CREATE SEQUENCE flaky_attempts;
CREATE FUNCTION flaky_call() RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
  IF nextval('flaky_attempts') < 3 THEN
    RAISE EXCEPTION 'service unavailable' USING ERRCODE = 'AP503';
  END IF;
  RETURN jsonb_build_object('key', apiary_task_key());
END $$;
SELECT apiary_register('flaky_call()', 'external', max_attempts => 3);
SELECT apiary_start('flaky_call', '{}', 'flaky');
SELECT apiary_result('flaky', '60 s');
SELECT function, state, attempts, error FROM apiary_status('flaky');
-- (a retried task that is done shows no error; while it waits for its next
-- attempt it shows the last one's, below)
SELECT apiary_task_key();
SELECT apiary_task_attempt();
-- A transactional function is not retried after an ordinary error (the
-- division by zero above ran once).
SELECT attempts FROM apiary_status('div0');
-- But not when its arguments do not bind: the function never ran, and a
-- retry would bind them no better.
CREATE FUNCTION text_out() RETURNS text LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT 'abc' $$;
CREATE FUNCTION ext_int(x int) RETURNS int LANGUAGE sql AS $$ SELECT x $$;
SELECT apiary_register('ext_int(int)', 'external', max_attempts => 3);
CREATE FUNCTION feed_text() RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN apiary_queue('ext_int', jsonb_build_array(apiary_queue('text_out')));
END $$;
SELECT apiary_start('feed_text', '{}', 'unbindable');
SELECT apiary_result('unbindable', '60 s');
SELECT function, state, attempts FROM apiary_status('unbindable') ORDER BY task;
-- (arrays and composite values too)
CREATE FUNCTION ext_ints(xs int[]) RETURNS int LANGUAGE sql AS $$ SELECT xs[1] $$;
SELECT apiary_register('ext_ints(int[])', 'external', max_attempts => 3);
SELECT apiary_start('ext_ints', '[["abc"]]', 'unbindable-array');
SELECT apiary_result('unbindable-array', '60 s');
SELECT function, state, attempts FROM apiary_status('unbindable-array');
-- Inside the calls a task makes with apiary_invoke, the key also numbers
-- the call, so that two calls of an external service are two calls.
CREATE FUNCTION key_of() RETURNS text LANGUAGE sql AS $$ SELECT apiary_task_key() $$;
SELECT apiary_register('key_of()', 'external');
CREATE FUNCTION two_calls() RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN jsonb_build_array(apiary_task_key(), apiary_invoke('key_of'), apiary_invoke('key_of'));
END $$;
SELECT apiary_start('two_calls', '{}', 'two-calls');
SELECT apiary_result('two-calls', '60 s');
-- apiary_resume gives the tasks it queues again a fresh budget of attempts
-- (apiary_task_attempt() says which attempt runs).
CREATE SEQUENCE stubborn_attempts;
CREATE FUNCTION fails_thrice() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  IF nextval('stubborn_attempts') < 4 THEN
    RAISE EXCEPTION 'service unavailable' USING ERRCODE = 'AP503';
  END IF;
  RETURN apiary_task_attempt();
END $$;
SELECT apiary_register('fails_thrice()', 'external', max_attempts => 2);
SELECT apiary_start('fails_thrice', '{}', 'fails-thrice');
SELECT apiary_result('fails-thrice', '60 s');
SELECT state, attempts FROM apiary_status('fails-thrice');
SELECT apiary_resume('fails-thrice');
SELECT apiary_result('fails-thrice', '60 s');
SELECT state, attempts FROM apiary_status('fails-thrice');

-- A function's timeout ends it, as a statement timeout would.
CREATE FUNCTION sleepy() RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM pg_sleep(30) $$;
SELECT apiary_register('sleepy()', timeout => '100 ms');
SELECT apiary_start('sleepy', '{}', 'sleepy');
SELECT apiary_result('sleepy', '60 s');
\echo :LAST_ERROR_SQLSTATE
-- Also when the function catches the cancel and carries on.
CREATE FUNCTION stubborn() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  BEGIN
    PERFORM pg_sleep(30);
  EXCEPTION WHEN query_canceled THEN
    NULL;
  END;
  RETURN 'finished anyway';
END $$;
SELECT apiary_register('stubborn()', timeout => '100 ms');
SELECT apiary_start('stubborn', '{}', 'stubborn');
SELECT apiary_result('stubborn', '60 s');
SELECT state, attempts FROM apiary_status('stubborn');
-- A cancel the function raises itself is its own error: not retried.
CREATE FUNCTION raises_cancel() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'gave up' USING ERRCODE = 'query_canceled';
END $$;
SELECT apiary_register('raises_cancel()', max_attempts => 3);
SELECT apiary_start('raises_cancel', '{}', 'raises-cancel');
SELECT apiary_result('raises-cancel', '60 s');
SELECT state, attempts FROM apiary_status('raises-cancel');
-- Another cancel (pg_cancel_backend of the executor, say) is not the
-- function's doing: the task is retried.
CREATE FUNCTION gated_cancel(x int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT x FROM pg_advisory_xact_lock(4246) $$;
SELECT pg_advisory_lock(4246);
SELECT apiary_start('gated_cancel', '5', 'cancelled-backend');
SELECT wait_until($c$EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'apiary executor'
  AND query LIKE '%: gated_cancel' AND wait_event_type = 'Lock')$c$);
-- (apiary_status shows the task an executor runs as running, and
-- pg_stat_activity whose task it is)
SELECT function, state FROM apiary_status('cancelled-backend');
SELECT regexp_replace(query, '^apiary task \d+ ', 'apiary task N ') = 'apiary task N of workflow "cancelled-backend" as ' || quote_ident(current_user) || ': gated_cancel' AS activity
FROM pg_stat_activity WHERE backend_type = 'apiary executor' AND query LIKE '%: gated_cancel';
SELECT pg_cancel_backend(pid) FROM pg_stat_activity
WHERE backend_type = 'apiary executor' AND query LIKE '%: gated_cancel';
-- the cancelled attempt is counted once its retry is recorded
SELECT wait_until($c$(SELECT attempts FROM apiary_status('cancelled-backend')) = 1$c$);
SELECT pg_advisory_unlock(4246);
SELECT apiary_result('cancelled-backend', '60 s');
SELECT state, attempts FROM apiary_status('cancelled-backend');
-- A workflow id is escaped where pg_stat_activity (and the log) show it:
-- its own quote or line break cannot make the line name another task.
CREATE FUNCTION gated_odd(x int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT x FROM pg_advisory_xact_lock(4247) $$;
SELECT pg_advisory_lock(4247);
SELECT apiary_start('gated_odd', '1', E'odd" as someone: else\nline');
SELECT wait_until($c$EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'apiary executor'
  AND query LIKE '%: gated_odd' AND wait_event_type = 'Lock')$c$);
SELECT replace(regexp_replace(query, '^apiary task \d+ ', 'apiary task N '), quote_ident(current_user), 'ME') AS activity
FROM pg_stat_activity WHERE backend_type = 'apiary executor' AND query LIKE '%: gated_odd';
SELECT pg_advisory_unlock(4247);
SELECT apiary_result(E'odd" as someone: else\nline', '60 s');

-- apiary_cancel stops a workflow: a task still running rolls back.
CREATE TABLE effects (what text);
CREATE FUNCTION gated_write(what text) RETURNS text LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  INSERT INTO effects VALUES (what);
  SELECT what FROM pg_advisory_xact_lock(4343)
$$;
-- the executors running gated_write, held up by this session's lock
CREATE VIEW gated AS
  SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 4343 AND NOT granted;
SELECT pg_advisory_lock(4343);
SELECT apiary_start('gated_write', '"cancelled write"', 'to-cancel');
-- wait until an executor runs it: blocked on our lock, its write made
SELECT wait_until('EXISTS (SELECT FROM gated)');
SELECT apiary_cancel('to-cancel');
SELECT apiary_result('to-cancel', '60 s');
SELECT pg_advisory_unlock(4343);
SELECT wait_until($c$(SELECT error->>'cancelled' FROM apiary_status('to-cancel'))
  = 'by apiary_cancel, while running'$c$);
SELECT function, state, error->>'cancelled' AS cancelled FROM apiary_status('to-cancel');
SELECT count(*) FROM effects;
SELECT apiary_cancel('no-such-workflow');

-- A task cannot cancel its own workflow: the cancel would be rolled back
-- with its own effects.
CREATE FUNCTION cancel_self() RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  SELECT apiary_cancel(split_part(apiary_task_key(), '/', 1));
  SELECT 1
$$;
SELECT apiary_start('cancel_self', '{}', 'self-cancel');
SELECT apiary_result('self-cancel', '60 s');

-- A finished workflow's cancel cancels the tasks it left unfinished (queued
-- and not waited for): a running one rolls back at its end, and the
-- workflow keeps its result.
CREATE FUNCTION fire_and_forget() RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM apiary_queue('square', jsonb_build_array(apiary_queue('gated_write', '"left running"')));
  RETURN 1;
END $$;
SELECT pg_advisory_lock(4343);
SELECT apiary_start('fire_and_forget', '{}', 'forgotten');
SELECT apiary_result('forgotten', '60 s');
SELECT wait_until('EXISTS (SELECT FROM gated)');
SELECT apiary_cancel('forgotten');
SELECT pg_advisory_unlock(4343);
SELECT wait_until($c$(SELECT error->>'cancelled' FROM apiary_status('forgotten')
  WHERE function = 'gated_write') = 'by apiary_cancel, while running'$c$);
SELECT function, state, error->>'cancelled' AS cancelled FROM apiary_status('forgotten') ORDER BY task;
SELECT apiary_result('forgotten', '60 s');
SELECT count(*) FROM effects;

-- A resume that comes before the running task's end undoes the cancel: the
-- task commits, once (the ready row the resume adds is passed over while it
-- runs, and taken away after), and the task waiting for it runs after it.
CREATE FUNCTION shout(what text) RETURNS text LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT upper(what) $$;
CREATE FUNCTION leave_running(what text) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM apiary_queue('shout', jsonb_build_array(apiary_queue('gated_write', to_jsonb(what))));
  RETURN 1;
END $$;
SELECT pg_advisory_lock(4343);
SELECT apiary_start('leave_running', '"resumed while running"', 'left-resumed');
SELECT apiary_result('left-resumed', '60 s');
SELECT wait_until('EXISTS (SELECT FROM gated)');
SELECT apiary_cancel('left-resumed');
SELECT function, state FROM apiary_status('left-resumed') ORDER BY task;
SELECT apiary_resume('left-resumed');
SELECT pg_advisory_unlock(4343);
SELECT wait_until($c$NOT EXISTS (SELECT FROM apiary_status('left-resumed') WHERE state <> 'done')$c$);
SELECT function, state, output FROM apiary_status('left-resumed') ORDER BY task;
SELECT count(*) FROM effects WHERE what = 'resumed while running';

-- An executor that dies after the cancel leaves its task cancelled: the
-- next executor takes the ready row it left and does not run the task; a
-- resume then queues it once.
SELECT pg_advisory_lock(4343);
SELECT apiary_start('gated_write', '"terminated after cancel"', 'cancel-terminated');
SELECT wait_until('EXISTS (SELECT FROM gated)');
SELECT apiary_cancel('cancel-terminated');
SELECT pg_terminate_backend(pid, 60000) FROM gated;
SELECT wait_until($c$NOT EXISTS (SELECT FROM apiary.ready r JOIN apiary.tasks t ON t.id = r.task
  WHERE t.workflow = 'cancel-terminated')$c$);
SELECT state, error->>'cancelled' AS cancelled FROM apiary_status('cancel-terminated');
SELECT apiary_resume('cancel-terminated');
SELECT count(*) FROM apiary.ready r JOIN apiary.tasks t ON t.id = r.task
 WHERE t.workflow = 'cancel-terminated';
SELECT pg_advisory_unlock(4343);
SELECT apiary_result('cancel-terminated', '60 s');
SELECT count(*) FROM effects WHERE what = 'terminated after cancel';

-- Retention may take a cancelled workflow while a task it left still runs:
-- the task finds its workflow gone, and rolls back.
SELECT pg_advisory_lock(4343);
SELECT apiary_start('leave_running', '"pruned while running"', 'left-pruned');
SELECT apiary_result('left-pruned', '60 s');
SELECT wait_until('EXISTS (SELECT FROM gated)');
SELECT apiary_cancel('left-pruned');
BEGIN;
UPDATE apiary.workflows SET finished_at = finished_at - interval '200 years' WHERE id = 'left-pruned';
SELECT apiary.prune('100 years', 10);
COMMIT;
SELECT pg_advisory_unlock(4343);
SELECT wait_until($c$NOT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND objid = 4343)$c$);
SELECT count(*) FROM effects WHERE what = 'pruned while running';
-- And so it does when a new workflow has taken the id meanwhile.
SELECT pg_advisory_lock(4343);
SELECT apiary_start('gated_write', '"replaced while running"', 'replaced');
SELECT wait_until('EXISTS (SELECT FROM gated)');
SELECT apiary_cancel('replaced');
BEGIN;
UPDATE apiary.workflows SET finished_at = finished_at - interval '200 years' WHERE id = 'replaced';
SELECT apiary.prune('100 years', 10);
COMMIT;
SELECT apiary_start('shout', '"anew"', 'replaced');
SELECT apiary_result('replaced', '60 s');
SELECT pg_advisory_unlock(4343);
SELECT wait_until($c$NOT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND objid = 4343)$c$);
SELECT count(*) FROM effects WHERE what = 'replaced while running';

-- A cancel or resume goes by the workflow's tasks as they are now, which a
-- REPEATABLE READ or SERIALIZABLE snapshot may not show: refused.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT apiary_resume('left-resumed');
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT apiary_cancel('left-resumed');
ROLLBACK;

-- A task that returns a future of its workflow which failed already fails
-- too, with its effects committed: apiary_resume links it to that future
-- again, and does not run it a second time.
UPDATE issuer SET approves = false;
CREATE FUNCTION pass_on(f jsonb) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  -- the future comes inside an array, so this task does not wait for it
  IF NOT wait_until(format('(SELECT state FROM apiary.tasks WHERE id = %s) = %L',
                           f->0->'apiary_future', 'failed')) THEN
    RAISE EXCEPTION 'the future did not fail';
  END IF;
  INSERT INTO effects VALUES ('passed on');
  RETURN f->0;
END $$;
CREATE FUNCTION decline_late(cart int) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN apiary_queue('pass_on', jsonb_build_object('f',
           jsonb_build_array(apiary_queue('decline', to_jsonb(cart)))));
END $$;
SELECT apiary_start('decline_late', '9', 'declined-late');
SELECT apiary_result('declined-late', '60 s');
\echo :LAST_ERROR_SQLSTATE
SELECT function, state, error->>'sqlstate' AS sqlstate FROM apiary_status('declined-late') ORDER BY task;
UPDATE issuer SET approves = true;
SELECT apiary_resume('declined-late');
SELECT apiary_result('declined-late', '60 s');
SELECT function, state, attempts FROM apiary_status('declined-late') ORDER BY task;
SELECT count(*) FROM effects WHERE what = 'passed on';

-- Tasks run as the role that started them, and workflow ids are per role.
CREATE FUNCTION whoami() RETURNS text LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT current_user::text $$;
CREATE ROLE apiary_worker_user;
SET ROLE apiary_worker_user;
SELECT apiary_start('whoami', '{}', 'who');
SELECT apiary_result('who', '60 s');
SELECT apiary_result('order-7');
RESET ROLE;
SELECT apiary_start('whoami', '{}', 'who');
SELECT apiary_result('who', '60 s');
-- A role dropped with work still queued leaves no rights to run it with:
-- its tasks fail (42704), and are not retried.
CREATE ROLE apiary_gone_user;
BEGIN;
SET ROLE apiary_gone_user;
SELECT apiary_start('whoami', '{}', 'orphaned');
RESET ROLE;
DROP ROLE apiary_gone_user;
COMMIT;
SELECT wait_until($c$(SELECT state FROM apiary.workflows WHERE id = 'orphaned') <> 'running'$c$);
SELECT w.state, t.attempts, t.error->>'sqlstate' AS sqlstate,
       t.error->>'message' LIKE 'role with OID %, which queued this task, no longer exists' AS message
FROM apiary.workflows w JOIN apiary.tasks t ON t.id = w.root WHERE w.id = 'orphaned';

-- apiary_queue belongs inside a running task.
SELECT apiary_queue('square', '2');
-- Inside one, its arguments must bind as apiary_start's do.
CREATE FUNCTION misqueue() RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN apiary_queue('square', '{"y": 2}');
END $$;
SELECT apiary_start('misqueue', '{}', 'misqueued');
SELECT apiary_result('misqueued', '60 s');
-- A future's id is an integer: any other number under the key is data.
CREATE FUNCTION echo_jsonb(v jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT v $$;
SELECT apiary_register('echo_jsonb(jsonb)');
SELECT apiary_invoke('echo_jsonb', '[{"apiary_future": 5.7}]'),
       apiary_invoke('echo_jsonb', '[{"apiary_future": 1e30}]');
SELECT apiary_start('echo_jsonb', '[{"apiary_future": 5.7}]', 'not-a-future');
SELECT apiary_result('not-a-future', '60 s');
-- Futures are checked: another workflow's task is not a future of this one.
CREATE FUNCTION forge(task bigint) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN apiary_queue('square', jsonb_build_array(jsonb_build_object('apiary_future', task)));
END $$;
SELECT apiary_start('forge', (SELECT to_jsonb(min(task)) FROM apiary_status('squares')), 'forged');
SELECT apiary_result('forged', '60 s');

-- An executor calls a function directly when the call needs no statement
-- around it, and through one when it does (an omitted default): alike.
CREATE FUNCTION strict_inc(x int) RETURNS int LANGUAGE sql STRICT
SET apiary.kind = 'readonly' AS $$ SELECT x + 1 $$;
CREATE FUNCTION returns_void(x int) RETURNS void LANGUAGE plpgsql
SET apiary.kind = 'readonly' AS $$ BEGIN END $$;
CREATE FUNCTION with_default(x int, y int DEFAULT 10) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT x + y $$;
CREATE FUNCTION weekday(d date) RETURNS text LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT to_char(d, 'FMDay') $$;
SELECT apiary_start('strict_inc', '{"x": null}', 'direct-null'),
       apiary_start('strict_inc', '{"x": 1}', 'direct-int'),
       apiary_start('returns_void', '[1]', 'direct-void'),
       apiary_start('with_default', '[1]', 'via-statement'),
       apiary_start('with_default', '[1, 2]', 'direct-both'),
       apiary_start('weekday', '["2026-11-27"]', 'direct-text');
SELECT apiary_result('direct-null', '60 s') IS NULL AS strict_null,
       apiary_result('direct-int', '60 s') AS int,
       apiary_result('direct-void', '60 s') AS void,
       apiary_result('via-statement', '60 s') AS defaulted,
       apiary_result('direct-both', '60 s') AS both,
       apiary_result('direct-text', '60 s') AS text;

-- A future whose queueing an exception block rolled back is not a future.
CREATE FUNCTION undone_future() RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
DECLARE
  f jsonb;
BEGIN
  BEGIN
    f := apiary_queue('square', '2');
    RAISE EXCEPTION 'changed my mind';
  EXCEPTION WHEN raise_exception THEN
    NULL;
  END;
  RETURN f;
END $$;
SELECT apiary_start('undone_future', '{}', 'undone');
SELECT apiary_result('undone', '60 s');
SELECT function, state FROM apiary_status('undone') ORDER BY task;

-- Deferred constraints are checked when the task returns, as its role: a
-- violation fails the task, once, and constraint triggers do not run as
-- the executor.
CREATE TABLE deferred_parents (id int PRIMARY KEY);
INSERT INTO deferred_parents VALUES (1);
CREATE TABLE deferred_kids (parent int REFERENCES deferred_parents DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE checked_by (who text);
CREATE FUNCTION note_checker() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO checked_by VALUES (current_user);
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER note_checker AFTER INSERT ON deferred_kids
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION note_checker();
CREATE FUNCTION add_kid(parent int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ INSERT INTO deferred_kids VALUES (parent) RETURNING parent $$;
GRANT INSERT, SELECT ON deferred_kids, checked_by TO apiary_worker_user;
SET ROLE apiary_worker_user;
SELECT apiary_start('add_kid', '[1]', 'kid-1'), apiary_start('add_kid', '[42]', 'kid-42');
SELECT apiary_result('kid-1', '60 s');
SELECT apiary_result('kid-42', '60 s');
SELECT function, state, attempts, error->>'sqlstate' AS sqlstate FROM apiary_status('kid-42');
RESET ROLE;
SELECT who FROM checked_by;
SELECT parent FROM deferred_kids;

-- A cursor a task leaves open is closed when it returns: one WITH HOLD
-- would otherwise run the rest of its query at the commit, as the executor,
-- and stay open in the executor's session.
CREATE FUNCTION note_reader() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO checked_by VALUES ('read by ' || current_user);
  RETURN 1;
END $$;
CREATE FUNCTION leave_cursor() RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  DECLARE left_open CURSOR WITH HOLD FOR SELECT note_reader() FROM generate_series(1, 3);
  SELECT 1
$$;
SET ROLE apiary_worker_user;
SELECT apiary_start('leave_cursor', '{}', 'cursor-1'), apiary_start('leave_cursor', '{}', 'cursor-2');
SELECT apiary_result('cursor-1', '60 s'), apiary_result('cursor-2', '60 s');
RESET ROLE;
SELECT who, count(*) FROM checked_by GROUP BY who ORDER BY who;

-- Nor can a constraint trigger get code run at the commit: what it defers
-- is checked when the task returns, as the task's role, a cursor WITH HOLD
-- it opens is closed, and deferring once more fails the task (42501).
DELETE FROM checked_by;
CREATE TABLE redeferred (x int);
CREATE FUNCTION redefer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO checked_by VALUES ('trigger ' || NEW.x || ' as ' || current_user);
  IF NEW.x = 2 THEN
    EXECUTE 'DECLARE held CURSOR WITH HOLD FOR SELECT note_reader()';
  END IF;
  IF NEW.x < 3 THEN
    SET CONSTRAINTS ALL DEFERRED;
    INSERT INTO redeferred VALUES (NEW.x + 1);
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER redefer AFTER INSERT ON redeferred
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION redefer();
CREATE FUNCTION defer_from(x int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ INSERT INTO redeferred VALUES (x) RETURNING x $$;
GRANT INSERT, SELECT ON redeferred TO apiary_worker_user;
SET ROLE apiary_worker_user;
SELECT apiary_start('defer_from', '[2]', 'defer-2'), apiary_start('defer_from', '[1]', 'defer-1');
SELECT apiary_result('defer-2', '60 s');
SELECT apiary_result('defer-1', '60 s');
SELECT state, attempts, error->>'sqlstate' AS sqlstate FROM apiary_status('defer-1');
RESET ROLE;
SELECT who FROM checked_by ORDER BY who;
SELECT x FROM redeferred ORDER BY x;

-- Nothing a task does to the executor's session outlives it: its
-- temporary tables, settings, session locks, prepared statements, last
-- sequence value and random() seed are gone when the next task runs, and a
-- failed task's session locks too.
CREATE SEQUENCE state_seq;
CREATE FUNCTION leave_state() RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
DECLARE
  seeded float8;
  f jsonb;
BEGIN
  PERFORM setseed(0.42);
  seeded := random();
  f := apiary_queue('look_at_state', jsonb_build_object('seeded', seeded));
  CREATE TEMP TABLE left_behind (x int);
  PERFORM set_config('work_mem', '1234kB', false);
  PERFORM pg_advisory_lock(4242);
  EXECUTE 'PREPARE left_prepared AS SELECT 1';
  PERFORM nextval('state_seq');
  PERFORM setseed(0.42);
  RETURN f;
END $$;
CREATE FUNCTION look_at_state(seeded float8) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'readonly' AS $$
DECLARE
  last text;
BEGIN
  BEGIN
    last := lastval()::text;
  EXCEPTION WHEN object_not_in_prerequisite_state THEN
    last := 'not yet defined';
  END;
  RETURN jsonb_build_object('temp table', to_regclass('pg_temp.left_behind') IS NOT NULL,
                            'work_mem', current_setting('work_mem'),
                            'prepared', (SELECT count(*) FROM pg_prepared_statements),
                            'lastval', last,
                            'seeded random', random() = seeded);
END $$;
SELECT apiary_start('leave_state', '{}', 'session-state');
SELECT apiary_result('session-state', '60 s');
SELECT pg_try_advisory_lock(4242) AS lock_free;
SELECT pg_advisory_unlock(4242);
CREATE FUNCTION lock_and_fail() RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM pg_advisory_lock(4243);
  RAISE EXCEPTION 'failing with a session lock';
END $$;
SELECT apiary_start('lock_and_fail', '{}', 'lock-and-fail');
SELECT apiary_result('lock-and-fail', '60 s');
SELECT pg_try_advisory_lock(4243) AS lock_free;
SELECT pg_advisory_unlock(4243);

-- A task does not wait for a workflow: a waiting task would hold its
-- executor, which the awaited workflow may need.  A timeout of 0 reads a
-- finished workflow's result.
CREATE FUNCTION await(w text, timeout interval) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN apiary_result(w, timeout);
END $$;
SELECT apiary_start('await', '{"w": "order-7", "timeout": null}', 'await-waits'),
       apiary_start('await', '{"w": "order-7", "timeout": "0"}', 'await-polls');
SELECT apiary_result('await-waits', '60 s');
SELECT apiary_result('await-polls', '60 s');
-- A timeout too long to reckon is none.
SELECT apiary_result('order-7', '300000 years');

-- A readonly function cannot queue tasks.
CREATE FUNCTION queue_from_readonly() RETURNS jsonb LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT apiary_queue('square', '2') $$;
SELECT apiary_start('queue_from_readonly', '{}', 'readonly-queue');
SELECT apiary_result('readonly-queue', '60 s');

-- A task cannot return a future that waits for its own output, for
-- neither could ever finish: its own future, or that of a task waiting
-- for it.  (Such futures can only be forged.)
CREATE FUNCTION own_future() RETURNS jsonb LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  SELECT jsonb_build_object('apiary_future', split_part(apiary_task_key(), '/', 2)::bigint)
$$;
CREATE FUNCTION child_of_own() RETURNS jsonb LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  SELECT apiary_queue('square', jsonb_build_array(
           jsonb_build_object('apiary_future', split_part(apiary_task_key(), '/', 2)::bigint)))
$$;
SELECT apiary_start('own_future', '{}', 'own-future');
SELECT apiary_result('own-future', '60 s');
SELECT apiary_start('child_of_own', '{}', 'child-of-own');
SELECT apiary_result('child-of-own', '60 s');
SELECT function, state FROM apiary_status('child-of-own') ORDER BY task;

-- A future passed inside a value, and queued on by the task that gets it,
-- releases the new task even if it finishes while that task still runs:
-- the task that queues holds the future's row until it commits.
CREATE FUNCTION slow_value(x int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT x FROM pg_sleep(0.5) $$;
CREATE FUNCTION queue_on(deps jsonb) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
DECLARE
  f jsonb;
BEGIN
  f := apiary_queue('square', jsonb_build_array(deps->0));
  PERFORM pg_sleep(1.5);
  RETURN f;
END $$;
CREATE FUNCTION pass_future() RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN apiary_queue('queue_on', jsonb_build_object('deps',
           jsonb_build_array(apiary_queue('slow_value', '[6]'))));
END $$;
SELECT apiary_start('pass_future', '{}', 'passed-future');
SELECT apiary_result('passed-future', '60 s');
-- If that future fails meanwhile, the new task is cancelled, as the
-- future's finish would have done, and the task that returned it fails
-- with the future's error.  (The future waits for this session's lock,
-- which is let go once the task that queues on it is waiting for it to
-- fail.)
CREATE FUNCTION gated_fail(x int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(5151);
  RAISE EXCEPTION 'gated failure %', x USING ERRCODE = 'AP500';
END $$;
CREATE FUNCTION queue_on_failing(deps jsonb) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
DECLARE
  f jsonb;
BEGIN
  f := apiary_queue('square', jsonb_build_array(deps->0));
  FOR i IN 1..1200 LOOP
    EXIT WHEN (SELECT state FROM apiary.tasks
                WHERE id = (deps->0->>'apiary_future')::bigint) = 'failed';
    PERFORM pg_sleep(0.05);
  END LOOP;
  RETURN f;
END $$;
CREATE FUNCTION pass_failing() RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN apiary_queue('queue_on_failing', jsonb_build_object('deps',
           jsonb_build_array(apiary_queue('gated_fail', '[7]'))));
END $$;
SELECT pg_advisory_lock(5151);
SELECT apiary_start('pass_failing', '{}', 'passed-failure');
SELECT wait_until($c$EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'apiary executor'
  AND query LIKE '%queue_on_failing' AND wait_event = 'PgSleep')$c$);
SELECT pg_advisory_unlock(5151);
SELECT apiary_result('passed-failure', '60 s');
SELECT function, state FROM apiary_status('passed-failure') ORDER BY task;

-- While a task waits for its next attempt, its status shows the last
-- attempt's error.
CREATE FUNCTION always_down() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'service unavailable' USING ERRCODE = 'AP503';
END $$;
SELECT apiary_register('always_down()', 'external', max_attempts => 50);
SELECT apiary_start('always_down', '{}', 'down');
SELECT wait_until($c$(SELECT error IS NOT NULL FROM apiary_status('down'))$c$);
SELECT state IN ('pending', 'running') AS unfinished, attempts > 0 AS attempted,
       error->>'sqlstate' AS sqlstate, error->>'message' AS message
FROM apiary_status('down');
SELECT apiary_cancel('down');

-- A workflow started with a timeout is cancelled if it has not finished in
-- that time (the launcher looks once a second): apiary_result says it timed
-- out, and a task running then rolls back at its end.  (This session holds
-- the lock the task waits for, so it cannot finish in time.)
CREATE TABLE late_effects (x int);
CREATE FUNCTION late_write(x int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  INSERT INTO late_effects SELECT x FROM pg_advisory_xact_lock(4747) RETURNING x
$$;
SELECT pg_advisory_lock(4747);
SELECT apiary_start('late_write', '1', 'late', timeout => '3 s');
SELECT timeout, deadline - started_at AS time_given FROM apiary.workflows WHERE id = 'late';
SELECT wait_until($c$EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'apiary executor'
  AND query LIKE '%: late_write' AND wait_event_type = 'Lock')$c$);
SELECT apiary_result('late', '60 s');
\set VERBOSITY sqlstate
SELECT apiary_result('late', '60 s');
\set VERBOSITY default
SELECT state, error->>'message' AS message, deadline FROM apiary.workflows WHERE id = 'late';
SELECT pg_advisory_unlock(4747);
SELECT wait_until($c$(SELECT error->>'cancelled' FROM apiary_status('late'))
  = 'by the workflow''s timeout, while running'$c$);
SELECT state, error FROM apiary_status('late');
SELECT count(*) AS effects FROM late_effects;
-- A resume gives it the same time again; this time it finishes.
SELECT apiary_resume('late');
SELECT apiary_result('late', '60 s');
SELECT count(*) AS effects FROM late_effects;
-- Every task of the workflow is cancelled: the root, linked to its
-- future; a task waiting for another's output; and the one running, which
-- rolls back at its end.
CREATE FUNCTION pass_late_write() RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN apiary_queue('late_write', jsonb_build_object('x', apiary_queue('late_write', '2')));
END $$;
SELECT pg_advisory_lock(4747);
SELECT apiary_start('pass_late_write', '{}', 'late-chain', timeout => '3 s');
SELECT wait_until($c$EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'apiary executor'
  AND query LIKE '%: late_write' AND wait_event_type = 'Lock')$c$);
SELECT wait_until($c$(SELECT count(*) FROM apiary_status('late-chain')
  WHERE state = 'cancelled') = 3$c$);
SELECT pg_advisory_unlock(4747);
SELECT wait_until($c$EXISTS (SELECT FROM apiary_status('late-chain')
  WHERE error->>'cancelled' = 'by the workflow''s timeout, while running')$c$);
SELECT function, state, error->>'cancelled' AS cancelled FROM apiary_status('late-chain') ORDER BY task;
-- Cancel and resume are writes: refused in a read-only transaction (a
-- standby's, say), before the workflow is looked for.
BEGIN READ ONLY;
SELECT apiary_cancel('late-chain');
ROLLBACK;
BEGIN READ ONLY;
SELECT apiary_resume('late-chain');
ROLLBACK;
BEGIN READ ONLY;
SELECT apiary_resume('no-such-workflow');
ROLLBACK;
SELECT count(*) AS effects FROM late_effects;
-- A timeout must be positive, and less than 1000 years; a start of an
-- existing key returns it, whatever its timeout.
SELECT apiary_start('late_write', '1', timeout => '0');
SELECT apiary_start('late_write', '1', timeout => '-1 min');
SELECT apiary_start('late_write', '1', timeout => '1 month -29 days');
SELECT apiary_start('late_write', '1', timeout => '178000000 years');
SELECT apiary_start('late_write', '1', timeout => '1000 years');
SELECT apiary_start('late_write', '1', timeout => '365250 days');
SELECT apiary_start('late_write', '1', 'late', timeout => '1 h');
SELECT timeout FROM apiary.workflows WHERE id = 'late';

-- A retry is due later, and an executor naps until then.  Another task
-- (here one that waits for our lock) taken meanwhile by the executor that
-- put the retry off, or by the one napping, does not hold the retry up.
CREATE SEQUENCE flaky_tries;
CREATE FUNCTION flaky_once() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  IF nextval('flaky_tries') = 1 THEN
    RAISE EXCEPTION 'the first try fails';
  END IF;
  RETURN 1;
END $$;
SELECT apiary_register('flaky_once()', 'external');
SELECT pg_advisory_lock(4242);
SELECT apiary_start('flaky_once', '[]', 'flaky-once');
SELECT wait_until($c$(SELECT attempts FROM apiary.tasks WHERE workflow = 'flaky-once') = 1$c$);
SELECT apiary_start('gated', '7', 'beside-retry');
SELECT apiary_result('flaky-once', '20 s');
SELECT pg_advisory_unlock(4242);
SELECT apiary_result('beside-retry', '60 s');

-- A task queued on a future that failed already is cancelled, as one
-- queued before the failure is, and the workflow reports that failure:
-- queue_late, held up by our lock, queues square on the future of
-- fails_early once that has failed.
CREATE FUNCTION fails_early() RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RAISE EXCEPTION 'gate closed' USING ERRCODE = 'AB001';
END $$;
CREATE FUNCTION queue_late(v jsonb) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(4242);
  RETURN apiary_queue('square', jsonb_build_object('x', v->'f'));
END $$;
CREATE FUNCTION early_root() RETURNS jsonb LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  SELECT apiary_queue('queue_late', jsonb_build_object('v',
    jsonb_build_object('f', apiary_queue('fails_early', '[]'))))
$$;
SELECT pg_advisory_lock(4242);
SELECT apiary_start('early_root', '[]', 'early-failure');
SELECT wait_until($c$EXISTS (SELECT FROM apiary.tasks WHERE workflow = 'early-failure'
  AND function = 'fails_early' AND state = 'failed')$c$);
SELECT pg_advisory_unlock(4242);
\set VERBOSITY terse
SELECT apiary_result('early-failure', '60 s');
\set VERBOSITY default
\echo :LAST_ERROR_SQLSTATE
SELECT function, state, error->>'sqlstate' AS sqlstate, error->>'cancelled' AS cancelled
FROM apiary_status('early-failure') ORDER BY task;

-- A recorded error's message, detail, hint and context are cut at 1 MB
-- each (at a character boundary), and say how much was cut; apiary_result
-- raises what was recorded.
CREATE FUNCTION fails_long() RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RAISE EXCEPTION '%', 'x' || repeat('é', 1500000) USING ERRCODE = 'AB002',
    DETAIL = repeat('d', 3000000), HINT = 'short';
END $$;
SELECT apiary_start('fails_long', '[]', 'long-error');
DO $$
BEGIN
  PERFORM apiary_result('long-error', '60 s');
EXCEPTION WHEN OTHERS THEN
  RAISE NOTICE '% message % bytes, ends %, detail % bytes, ends %, hint %', SQLSTATE,
    octet_length(SQLERRM), right(SQLERRM, 20), octet_length(
      (SELECT error->>'detail' FROM apiary_status('long-error'))),
    right((SELECT error->>'detail' FROM apiary_status('long-error')), 20),
    (SELECT error->>'hint' FROM apiary_status('long-error'));
END $$;

-- A task's key is a key for apiary_invoke even when its workflow id is as
-- long as a key may be (apiary.max_key_size, 1 kB), and the suffix makes it
-- longer: the call runs once, under that key.
CREATE FUNCTION keyed_key_of() RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN jsonb_build_array(apiary_invoke('key_of', '{}', apiary_task_key()),
                           apiary_invoke('key_of', '{}', apiary_task_key()));
END $$;
SELECT apiary_start('keyed_key_of', '{}', repeat('w', 1024)) = repeat('w', 1024) AS started;
SELECT length(k) > 1024 AS longer, left(k, 4) AS starts, right(k, 2) AS ends, count(*) AS results
FROM jsonb_array_elements_text(apiary_result(repeat('w', 1024), '60 s')) k GROUP BY 1, 2, 3;
SELECT count(*) AS journaled FROM apiary.invocations
WHERE function = 'key_of' AND key LIKE 'wwww%' AND octet_length(key) > 1024;
-- other keys over the limit are refused, in a task too
CREATE FUNCTION long_key() RETURNS jsonb LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  SELECT apiary_invoke('key_of', '{}', apiary_task_key() || 'x')
$$;
SELECT apiary_start('long_key', '{}', repeat('v', 1024)) = repeat('v', 1024) AS started;
\set VERBOSITY terse
SELECT apiary_result(repeat('v', 1024), '60 s');
\set VERBOSITY default

-- apiary writes its tables directly, by column number.  A column a DBA
-- adds to one of them stops new work, with an error that says what to do;
-- dropped again, it changes nothing, and the executors go on.
ALTER TABLE apiary.workflows ADD COLUMN note text NOT NULL DEFAULT 'n/a';
SELECT apiary_start('square', '{"x": 4}', 'noted');
ALTER TABLE apiary.workflows DROP COLUMN note;
ALTER TABLE apiary.tasks ADD COLUMN note text;
ALTER TABLE apiary.tasks DROP COLUMN note;
ALTER TABLE apiary.ready ADD COLUMN note text;
ALTER TABLE apiary.ready DROP COLUMN note;
SELECT apiary_start('sum_of_squares', '{"a": 1, "b": 2, "c": 3}', 'after-note');
SELECT apiary_result('after-note', '60 s');
SELECT state, count(*) FROM apiary_status('after-note') GROUP BY state;

-- A DBA's own indexes on apiary's tables, with expressions or a
-- predicate, are kept up by apiary's writes like any others (a keyed
-- call's journal row took the server down before), and table maintenance
-- changes nothing.
CREATE INDEX invocations_by_x ON apiary.invocations ((args->>'x'));
CREATE UNIQUE INDEX invocations_one_never ON apiary.invocations (function)
  WHERE function = 'never';
CREATE INDEX tasks_by_x ON apiary.tasks ((args #>> '{}')) WHERE function = 'square';
SELECT apiary_invoke('square', '{"x": 6}', 'indexed-1'),
       apiary_invoke('square', '{"x": 7}', 'indexed-2');
SELECT apiary_start('sum_of_squares', '{"a": 4, "b": 5, "c": 6}', 'indexed');
SELECT apiary_result('indexed', '60 s');
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT key FROM apiary.invocations WHERE args->>'x' = '7';
SELECT workflow FROM apiary.tasks WHERE function = 'square' AND args #>> '{}' = '5';
RESET enable_seqscan;
RESET enable_bitmapscan;
VACUUM FULL apiary.tasks;
CLUSTER apiary.invocations USING invocations_pkey;
REINDEX TABLE apiary.ready;
SELECT apiary_start('sum_of_squares', '{"a": 1, "b": 1, "c": 1}', 'maintained');
SELECT apiary_result('maintained', '60 s');
SELECT apiary_invoke('square', '{"x": 6}', 'indexed-1');
DROP INDEX apiary.invocations_by_x, apiary.invocations_one_never, apiary.tasks_by_x;

-- A done workflow whose side task failed: resuming the task sets the
-- workflow's finished_at, from which retention counts (a prune that began
-- before the resume took the workflow with the task just resumed).
CREATE FUNCTION side_fails() RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RAISE EXCEPTION 'side task fails';
END $$;
CREATE FUNCTION leaves_a_side_task() RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM apiary_queue('side_fails');
  RETURN 1;
END $$;
SELECT apiary_start('leaves_a_side_task', '{}', 'with-side-task');
SELECT apiary_result('with-side-task', '60 s');
SELECT wait_until($$(SELECT state = 'failed' FROM apiary.tasks
                     WHERE workflow = 'with-side-task' AND function = 'side_fails')$$);
CREATE TEMP TABLE side_finished AS
SELECT finished_at FROM apiary.workflows WHERE id = 'with-side-task';
SELECT apiary_resume('with-side-task');
SELECT state, finished_at > (SELECT finished_at FROM side_finished) AS finished_at_moved
FROM apiary.workflows WHERE id = 'with-side-task';

-- A failed workflow whose recorded error a superuser cleared or replaced
-- by hand still reports its failure (a NULL error crashed the server).
SELECT apiary_start('square', '[3]', 'hand-edited');
SELECT apiary_result('hand-edited', '60 s');
UPDATE apiary.workflows SET state = 'failed', error = NULL WHERE id = 'hand-edited';
SELECT apiary_result('hand-edited', '0');
UPDATE apiary.workflows SET error = '[1, 2]' WHERE id = 'hand-edited';
SELECT apiary_result('hand-edited', '0');

-- (a timeout just under 1000 years is taken)
BEGIN;
SELECT apiary_start('late_write', '1', timeout => '999 years 11 months') IS NOT NULL AS started;
ROLLBACK;

-- A task cannot resume its own workflow (that would undo a cancel made
-- while it runs, and its effects would commit); reading the workflow's
-- result times out, saying that it may be waiting for the task.
CREATE FUNCTION resume_self() RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  SELECT apiary_resume(split_part(apiary_task_key(), '/', 1));
  SELECT 1
$$;
CREATE FUNCTION await_own() RETURNS jsonb LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  SELECT apiary_result(split_part(apiary_task_key(), '/', 1), '0')
$$;
SELECT apiary_start('resume_self', '{}', 'self-resume');
SELECT apiary_result('self-resume', '60 s');
SELECT apiary_start('await_own', '{}', 'await-own');
SELECT apiary_result('await-own', '60 s');

-- A workflow's timeout bounds the tasks its root left unfinished too: the
-- root's result stands, and they are cancelled at the deadline.
CREATE FUNCTION leave_late() RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM apiary_queue('late_write', '3');
  RETURN 1;
END $$;
SELECT pg_advisory_lock(4747);
SELECT apiary_start('leave_late', '{}', 'late-leftover', timeout => '2 s');
SELECT apiary_result('late-leftover', '60 s');
SELECT wait_until($c$EXISTS (SELECT FROM apiary_status('late-leftover')
  WHERE function = 'late_write' AND state = 'cancelled')$c$);
SELECT pg_advisory_unlock(4747);
SELECT wait_until($c$EXISTS (SELECT FROM apiary_status('late-leftover')
  WHERE error->>'cancelled' = 'by the workflow''s timeout, while running')$c$);
SELECT function, state, error->>'cancelled' AS cancelled FROM apiary_status('late-leftover') ORDER BY task;
SELECT state, output FROM apiary.workflows WHERE id = 'late-leftover';
SELECT count(*) AS effects FROM late_effects WHERE x = 3;

-- A task takes the settings of the session that queued it, as it takes its
-- search_path: its arguments and its output convert, and its function
-- runs, as apiary_invoke's call in that session does; and a task it
-- queues takes them in turn.
CREATE FUNCTION zoned(at timestamptz, d date, i interval, b bytea, m money)
RETURNS jsonb LANGUAGE sql SET apiary.kind = 'transactional' AS $$
  SELECT jsonb_build_object('at', at, 'day', to_char(d, 'YYYY-MM-DD'), 'd', d,
                            'i', i, 'b', b, 'f', 0.1::float8 + 0.2, 'm', m,
                            'tz', current_setting('TimeZone'))
$$;
CREATE FUNCTION zoned_child(at text) RETURNS jsonb LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  SELECT apiary_queue('zoned', jsonb_build_object('at', at, 'd', '03/04/2024',
                      'i', '-1 02:00', 'b', '\x0102', 'm', '1.5'))
$$;
SET TimeZone = 'Asia/Tokyo';
SET DateStyle = 'SQL, DMY';
SET IntervalStyle = 'sql_standard';
SET bytea_output = 'escape';
SET extra_float_digits = 0;
SELECT apiary_start('zoned', '{"at": "2024-01-02 12:00", "d": "03/04/2024", "i": "-1 02:00", "b": "\\x0102", "m": "1.5"}', 'zoned');
SELECT apiary_start('zoned_child', '{"at": "2024-01-02 12:00"}', 'zoned-child');
SELECT apiary_result('zoned', '60 s');
SELECT apiary_result('zoned', '60 s') = apiary_invoke('zoned', '{"at": "2024-01-02 12:00", "d": "03/04/2024", "i": "-1 02:00", "b": "\\x0102", "m": "1.5"}') AS as_invoked,
       apiary_result('zoned-child', '60 s') = apiary_result('zoned', '60 s') AS child_too;
SELECT settings FROM apiary.tasks WHERE workflow = 'zoned';
RESET TimeZone;
RESET DateStyle;
RESET IntervalStyle;
RESET bytea_output;
RESET extra_float_digits;
-- a setting the server no longer takes fails the task, without retries
CREATE FUNCTION zoned_now() RETURNS text LANGUAGE sql
SET apiary.kind = 'external' AS $$ SELECT current_setting('TimeZone') $$;
BEGIN;
SELECT apiary_start('zoned_now', '{}', 'zoned-gone');
UPDATE apiary.tasks SET settings[3] = 'Nowhere/Atlantis' WHERE workflow = 'zoned-gone';
COMMIT;
SELECT apiary_result('zoned-gone', '60 s');
SELECT state, attempts FROM apiary_status('zoned-gone');

-- Workflows belong to apiary.database, where the executors run: elsewhere
-- apiary_start says so instead of queueing work that would never run.
CREATE DATABASE apiary_elsewhere;
\c apiary_elsewhere
CREATE EXTENSION apiary;
SELECT apiary_start('checkout', '{"cart": 8}');
-- A column of apiary's own that a DBA drops stops the writes that need it
-- (here, a keyed call's journal row), with a hint that says what it costs.
CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42';
SELECT apiary_register('answer()');
ALTER TABLE apiary.invocations DROP COLUMN finished_at;
SELECT apiary_invoke('answer', '{}', 'after-drop');
SELECT apiary_invoke('answer', '{}');
\c contrib_regression
DROP DATABASE apiary_elsewhere;
