/*-------------------------------------------------------------------------
 *
 * sketch.c
 *	  A fixed-size latency histogram (see sketch.h for its error bound).
 *
 *-------------------------------------------------------------------------
 */
#include <string.h>

#include "sketch.h"

void
sketch_clear(Sketch *s)
{
	memset(s, 0, sizeof(*s));
}

/* Bucket 0: below 1 us; then SKETCH_SUB per doubling; last: beyond. */
int
sketch_bucket(uint64_t us)
{
	int			d = 0;

	if (us == 0)
		return 0;
	while (d < 63 && (us >> (d + 1)) != 0)
		d++;
	if (d >= SKETCH_DOUBLINGS)
		return SKETCH_BUCKETS - 1;
	/* position within [2^d, 2^(d+1)), in SKETCH_SUB equal parts */
	return 1 + d * SKETCH_SUB +
		(int) (((us - ((uint64_t) 1 << d)) * SKETCH_SUB) >> d);
}

void
sketch_add(Sketch *s, uint64_t us)
{
	if (s->count == 0 || us < s->min_us)
		s->min_us = us;
	if (s->count == 0 || us > s->max_us)
		s->max_us = us;
	s->count++;
	s->buckets[sketch_bucket(us)]++;
}

/* The middle of bucket b, in microseconds. */
static double
bucket_middle(int b)
{
	int			d;
	int			k;
	double		lo;
	double		width;

	if (b == 0)
		return 0.5;
	if (b == SKETCH_BUCKETS - 1)
		return (double) ((uint64_t) 1 << SKETCH_DOUBLINGS);
	d = (b - 1) / SKETCH_SUB;
	k = (b - 1) % SKETCH_SUB;
	width = (double) ((uint64_t) 1 << d) / SKETCH_SUB;
	lo = (double) ((uint64_t) 1 << d) + k * width;
	return lo + width / 2;
}

double
sketch_quantile(const Sketch *s, double q)
{
	uint64_t	rank;
	uint64_t	seen = 0;
	double		v = 0;

	if (s->count == 0)
		return 0;
	if (q <= 0)
		return (double) s->min_us;
	if (q >= 1)
		return (double) s->max_us;
	/* the smallest value with at least q of all at or below it */
	rank = (uint64_t) (q * (double) s->count);
	if ((double) rank < q * (double) s->count)
		rank++;
	if (rank == 0)
		rank = 1;
	for (int b = 0; b < SKETCH_BUCKETS; b++)
	{
		seen += s->buckets[b];
		if (seen >= rank)
		{
			v = bucket_middle(b);
			break;
		}
	}
	if (v < (double) s->min_us)
		v = (double) s->min_us;
	if (v > (double) s->max_us)
		v = (double) s->max_us;
	return v;
}
