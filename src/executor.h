/*-------------------------------------------------------------------------
 *
 * executor.h
 *	  Executor background workers, and futures.
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_EXECUTOR_H
#define APIARY_EXECUTOR_H

#include "utils/jsonb.h"

extern PGDLLEXPORT void apiary_executor_main(Datum main_arg);

/*
 * Futures mean something to apiary_queue only: elsewhere (apiary_start,
 * apiary_invoke) one among the top-level arguments is an error.
 */
extern void apiary_check_no_futures(const char *caller, Jsonb *args);

/* Is this process running a task's function?  Which, and as which role? */
extern bool apiary_in_task(text **workflow, int64 *task, Oid *role);
extern int	apiary_next_call(void);

/* For the launcher: count crashes of tasks that took the server down. */
extern void apiary_count_crashes(void);

/* apiary_future_jsonb and apiary_jsonb_is_future are in apiary.h */
#include "apiary.h"

#endif							/* APIARY_EXECUTOR_H */
