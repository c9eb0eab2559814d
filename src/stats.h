/*-------------------------------------------------------------------------
 *
 * stats.h
 *	  Per-function statistics in shared memory (apiary.stats).
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_STATS_H
#define APIARY_STATS_H

#include "datatype/timestamp.h"

/*
 * The row of apiary.stats that counts the functions beyond apiary.stats_max:
 * a name no function may be registered under.
 */
#define APIARY_STATS_OTHER "(other)"

/* Called from _PG_init while preloading. */
extern void apiary_stats_init(void);

/*
 * Count one execution of the function registered as name, which began at
 * started and has just ended: with an error, and then retried or not.  A
 * no-op unless apiary is preloaded.
 */
extern void apiary_stats_record(const char *name, TimestampTz started,
								bool error, bool retry);

#endif							/* APIARY_STATS_H */
