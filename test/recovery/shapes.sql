-- Workflow shapes shared by the crash and cancel/resume race tests, run
-- with psql -v N=<workflows> -v sleep_min=<s> -v sleep_spread=<s>.
--
-- Workflow wf-n: a root fans out to 2 + n % 3 leaves, fans in to a merger
-- that takes their futures, and returns the future of a chain of n % 7
-- levels starting from the merger's future; each level queues an "add"
-- task and returns the future of the next level, which takes the add's
-- future.  Every task records itself in steps (workflow, step) in its own
-- transaction, then sleeps a little, so that a kill or a cancel lands
-- between that write and the commit: a step that took effect twice would
-- show n = 2.  expected and expected_step hold what each workflow must
-- produce, computed without apiary.
CREATE TABLE steps (
    workflow text NOT NULL,
    step     text NOT NULL,
    n        int NOT NULL DEFAULT 1,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workflow, step)
);

-- Called by every task: record the step in the task's transaction, then
-- take a while, so that kills land between this write and the commit.
CREATE TABLE step_sleep AS SELECT :sleep_min::float8 AS lo, :sleep_spread::float8 AS spread;
CREATE FUNCTION step(p_wf text, p_step text) RETURNS void LANGUAGE sql AS $$
  INSERT INTO steps AS s (workflow, step) VALUES (p_wf, p_step)
  ON CONFLICT (workflow, step) DO UPDATE SET n = s.n + 1;
  SELECT pg_sleep(lo + random() * spread) FROM step_sleep;
$$;

-- Root: fan out to k = 2 + n % 3 leaves, fan in to a merger that takes
-- their futures, and return the future of a chain of n % 7 levels that
-- starts from the merger's future.
CREATE FUNCTION wf_root(wf text, n int) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
DECLARE
  merge_args jsonb := jsonb_build_object('wf', wf);
BEGIN
  PERFORM step(wf, 'root');
  FOR i IN 1 .. 2 + n % 3 LOOP
    merge_args := merge_args || jsonb_build_object(chr(96 + i),
      apiary_queue('wf_leaf', jsonb_build_object('wf', wf, 'i', i, 'x', n + i)));
  END LOOP;
  RETURN apiary_queue('wf_chain', jsonb_build_object('wf', wf, 'depth', n % 7,
    'acc', apiary_queue('wf_merge', merge_args)));
END $$;

CREATE FUNCTION wf_leaf(wf text, i int, x int) RETURNS bigint LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM step(wf, 'leaf-' || i);
  RETURN x::bigint * x;
END $$;

-- weights catch swapped arguments
CREATE FUNCTION wf_merge(wf text, a bigint, b bigint, c bigint DEFAULT 0, d bigint DEFAULT 0)
RETURNS bigint LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM step(wf, 'merge');
  RETURN a + 2 * b + 3 * c + 4 * d;
END $$;

-- One level of a chain: acc' = acc * 3 + depth, computed by a queued task
-- whose future the next level takes; the last level returns acc.
CREATE FUNCTION wf_chain(wf text, depth int, acc bigint) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM step(wf, 'chain-' || depth);
  IF depth = 0 THEN
    RETURN to_jsonb(acc);
  END IF;
  RETURN apiary_queue('wf_chain', jsonb_build_object('wf', wf, 'depth', depth - 1,
    'acc', apiary_queue('wf_add', jsonb_build_object('wf', wf, 'depth', depth,
                                                      'x', acc, 'y', depth))));
END $$;

CREATE FUNCTION wf_add(wf text, depth int, x bigint, y int) RETURNS bigint LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM step(wf, 'add-' || depth);
  RETURN x * 3 + y;
END $$;

-- What each workflow must produce, computed without apiary.
CREATE FUNCTION expected_steps(n int) RETURNS SETOF text LANGUAGE sql AS $$
  SELECT 'root' UNION ALL SELECT 'merge'
  UNION ALL SELECT 'leaf-' || i FROM generate_series(1, 2 + n % 3) i
  UNION ALL SELECT 'chain-' || d FROM generate_series(0, n % 7) d
  UNION ALL SELECT 'add-' || d FROM generate_series(1, n % 7) d
$$;
CREATE FUNCTION expected_output(n int) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE acc bigint;
BEGIN
  SELECT sum(i * (n + i)::bigint * (n + i)) INTO acc FROM generate_series(1, 2 + n % 3) i;
  FOR d IN REVERSE n % 7 .. 1 LOOP
    acc := acc * 3 + d;
  END LOOP;
  RETURN acc;
END $$;
CREATE TABLE expected AS
  SELECT 'wf-' || n AS workflow, n, expected_output(n) AS output FROM generate_series(1, :N) n;
CREATE TABLE expected_step AS
  SELECT e.workflow, s AS step FROM expected e, expected_steps(e.n) s;
