/*-------------------------------------------------------------------------
 *
 * bind.h
 *	  Calling a registered function with JSON arguments.
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_BIND_H
#define APIARY_BIND_H

#include "fmgr.h"
#include "utils/jsonb.h"

#include "registry.h"

/* NULL name or args to apiary_invoke, apiary_start, apiary_queue: an error. */
extern void bind_require_call_args(FunctionCallInfo fcinfo);
extern void bind_require_name_args(const char *name, const void *args,
								   const char *key);
extern void bind_require_not_parallel(const char *what);

/*
 * True from the start of a task's own call (bind_call with direct) until
 * its arguments are bound and converted: an error while it is set is the
 * arguments', which no retry can cure.
 */
extern bool bind_binding_task;

/* Reject arguments over apiary.max_args_size or apiary.max_args_depth. */
extern void bind_check_limits(const char *name, Jsonb *args);

/*
 * Before a task is queued: "does not exist", with its hint, unless name is
 * registered; "permission denied" unless the current user may execute its
 * function; and the errors of apiary_invoke unless args bind its parameters
 * (names and number: the values convert when the task runs, and may be
 * futures).  The executor checks all of it again when the task runs.
 * Returns the owner of the function, which the task records.
 */
extern Oid	bind_check_queued(const char *name, Jsonb *args);

/* An output to be journaled must fit apiary.max_output_size. */
extern void bind_check_output(const char *name, Datum output, bool isnull);

/*
 * Call f with args and return its result as jsonb (or SQL NULL), allocated
 * in resultcxt.  Requires an SPI connection.  read_only runs the call on
 * the current snapshot, for functions that do not write; direct calls the
 * function without a statement around it when nothing needs one.
 */
extern Datum bind_call(ApiaryFunction *f, Jsonb *args, bool read_only,
					   bool direct, MemoryContext resultcxt, bool *isnull);

#endif							/* APIARY_BIND_H */
