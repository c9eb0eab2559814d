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

/* {"apiary_future": id} */
extern Jsonb *apiary_future_jsonb(int64 id);
extern bool apiary_jsonb_is_future(Jsonb *jb, int64 *id);

#endif							/* APIARY_EXECUTOR_H */
