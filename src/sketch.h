/*-------------------------------------------------------------------------
 *
 * sketch.h
 *	  A fixed-size latency histogram, for the percentiles of apiary.stats.
 *
 * Durations in microseconds fall into log-linear buckets: each power of two
 * from 1 us to 2^32 us (about 72 minutes) is split into SKETCH_SUB equal
 * buckets, plus one bucket below 1 us and one above the range.  A quantile
 * is reported as the middle of its bucket, clamped to the exact minimum
 * and maximum seen, so within the range it is off by at most half a
 * bucket's width: 1 / (2 * SKETCH_SUB) = 3.125% of the true value.
 *
 * Free of any PostgreSQL dependency (no palloc, no ereport), so that it can
 * be unit tested on its own; the caller provides the memory and the locks.
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_SKETCH_H
#define APIARY_SKETCH_H

#include <stdint.h>

#define SKETCH_SUB 16
#define SKETCH_DOUBLINGS 32
#define SKETCH_BUCKETS (SKETCH_DOUBLINGS * SKETCH_SUB + 2)

typedef struct Sketch
{
	uint64_t	count;
	uint64_t	min_us;
	uint64_t	max_us;
	uint64_t	buckets[SKETCH_BUCKETS];
} Sketch;

extern void sketch_clear(Sketch *s);
extern int	sketch_bucket(uint64_t us);
extern void sketch_add(Sketch *s, uint64_t us);

/* The q-quantile (0 <= q <= 1) in microseconds; 0 when empty. */
extern double sketch_quantile(const Sketch *s, double q);

#endif							/* APIARY_SKETCH_H */
