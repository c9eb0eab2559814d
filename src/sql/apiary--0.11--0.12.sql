/* src/sql/apiary--0.11--0.12.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.12'" to load this file. \quit

/*
 * A task records the owner of the function it was queued for.  A task
 * names its function by its registered name, and a name freed while tasks
 * wait (the function dropped, or unregistered) may be taken by another
 * role's function, which the task would then run with its queuer's
 * rights.  The executor runs a task only if the function registered under
 * its name has the owner it had when the task was queued; the owner may
 * drop and recreate the function (a redeploy), and the tasks run it.
 * Tasks queued before this update have none, and run whatever function
 * holds their name, as before.
 */
ALTER TABLE apiary.tasks ADD COLUMN fn_owner pg_catalog.oid;
COMMENT ON COLUMN apiary.tasks.fn_owner IS 'the owner of the task''s function when it was queued: the task runs only a function of that owner';
