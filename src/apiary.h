/*-------------------------------------------------------------------------
 *
 * apiary.h
 *	  apiary's public C API, for functions written in C.
 *
 * A C function registered with apiary can call other registered functions,
 * queue tasks and build futures without going through SQL.  Include this
 * header after postgres.h (it is installed with the extension, in
 * $(pg_config --includedir-server)/extension/apiary/) and load the module
 * in a server where apiary is in shared_preload_libraries: the symbols
 * below are resolved against the loaded apiary library.
 *
 * Every function here may raise errors with ereport, as its SQL
 * counterpart does.  Results are allocated in the caller's current memory
 * context.  Strings passed in must be in the database's encoding (22021
 * otherwise).  None may be called during a parallel operation (25000): a
 * function that calls them must be PARALLEL UNSAFE (apiary_task_key
 * RESTRICTED).
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_H
#define APIARY_H

#include "utils/jsonb.h"

#ifdef __cplusplus
extern "C"
{
#endif

/*
 * apiary_invoke: run the function registered as name now, in the current
 * transaction; with a non-NULL key, at most once per key.  Returns the
 * output, or NULL for an SQL NULL.  name and args must not be NULL (an
 * error, 22004, as for the SQL function; pass '{}' for no arguments).
 * The call runs in a subtransaction of its own, rolled back if it fails
 * before its error is raised: the caller may catch the error (PG_TRY, then
 * CopyErrorData and FlushErrorState) and go on without the call's effects.
 */
extern PGDLLEXPORT Jsonb *apiary_invoke_jsonb(const char *name, Jsonb *args,
											  const char *key);

/*
 * apiary_queue: inside a running task, queue a child task of the same
 * workflow, committed with the current transaction.  Returns its future.
 * name and args must not be NULL (22004).  Unlike apiary_invoke_jsonb it
 * has no subtransaction of its own: to go on after its error, as after
 * any PostgreSQL function's, catch it in a subtransaction of the caller's
 * (BeginInternalSubTransaction); what was queued in it goes with it.
 */
extern PGDLLEXPORT Jsonb *apiary_queue_jsonb(const char *name, Jsonb *args);

/*
 * Futures: {"apiary_future": task}.  apiary_jsonb_is_future is false for
 * NULL; task may be NULL when only the answer is wanted.
 */
extern PGDLLEXPORT Jsonb *apiary_future_jsonb(int64 task);
extern PGDLLEXPORT bool apiary_jsonb_is_future(Jsonb *jb, int64 *task);

/*
 * apiary_task_key: inside a running task, a key that stays the same across
 * its attempts, "<workflow>/<task>"; inside the nth apiary_invoke call the
 * task makes, "<workflow>/<task>.<n>"; NULL outside a task.
 */
extern PGDLLEXPORT char *apiary_task_key_cstring(void);

#ifdef __cplusplus
}
#endif

#endif							/* APIARY_H */
