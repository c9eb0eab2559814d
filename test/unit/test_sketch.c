/*-------------------------------------------------------------------------
 *
 * test_sketch.c
 *	  cmocka unit tests for src/sketch.c: the latency histogram behind the
 *	  p50/p99 columns of apiary.stats, and its error bound.
 *
 *-------------------------------------------------------------------------
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sketch.h"

static void
test_buckets_are_ordered(void **state)
{
	int			prev = sketch_bucket(0);

	(void) state;
	assert_int_equal(prev, 0);
	assert_int_equal(sketch_bucket(1), 1);
	/* each doubling starts a new run of SKETCH_SUB buckets */
	assert_int_equal(sketch_bucket(2), 1 + SKETCH_SUB);
	assert_int_equal(sketch_bucket(3), 1 + SKETCH_SUB + SKETCH_SUB / 2);
	assert_int_equal(sketch_bucket(1024), 1 + 10 * SKETCH_SUB);
	assert_int_equal(sketch_bucket(2047), 1 + 11 * SKETCH_SUB - 1);
	for (uint64_t us = 1; us < 300000; us++)
	{
		int			b = sketch_bucket(us);

		assert_true(b >= prev);
		/* once a bucket is narrower than 1 us, none is skipped */
		if (us > 2 * SKETCH_SUB)
			assert_true(b <= prev + 1);
		prev = b;
	}
	assert_int_equal(sketch_bucket(((uint64_t) 1 << SKETCH_DOUBLINGS) - 1),
					 SKETCH_BUCKETS - 2);
	assert_int_equal(sketch_bucket((uint64_t) 1 << SKETCH_DOUBLINGS), SKETCH_BUCKETS - 1);
	assert_int_equal(sketch_bucket(UINT64_MAX), SKETCH_BUCKETS - 1);
}

static void
test_empty_and_extremes(void **state)
{
	Sketch		s;

	(void) state;
	sketch_clear(&s);
	assert_true(sketch_quantile(&s, 0.5) == 0);
	sketch_add(&s, 700);
	/* one value: every quantile is that value, exactly (clamped) */
	assert_true(sketch_quantile(&s, 0.5) == 700);
	assert_true(sketch_quantile(&s, 0.99) == 700);
	sketch_add(&s, 3);
	sketch_add(&s, 90000);
	assert_true(sketch_quantile(&s, 0) == 3);
	assert_true(sketch_quantile(&s, 1) == 90000);
	assert_int_equal((int) s.count, 3);
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t	x = *(const uint64_t *) a;
	uint64_t	y = *(const uint64_t *) b;

	return x < y ? -1 : x > y;
}

/* The documented bound: within 1 / (2 * SKETCH_SUB) of the true quantile. */
static void
test_error_bound(void **state)
{
	enum {N = 20000};
	static uint64_t values[N];
	const double qs[] = {0.01, 0.25, 0.5, 0.9, 0.99, 0.999};
	uint64_t	x = 88172645463325252ULL;
	Sketch		s;

	(void) state;
	for (int round = 0; round < 4; round++)
	{
		sketch_clear(&s);
		for (int i = 0; i < N; i++)
		{
			/* xorshift; magnitudes from 1 us to 2^31 us, within the range */
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			values[i] = 1 + (x % ((uint64_t) 1 << (round * 6 + 6 + (x >> 61))));
			sketch_add(&s, values[i]);
		}
		qsort(values, N, sizeof(values[0]), cmp_u64);
		for (int j = 0; j < (int) (sizeof(qs) / sizeof(qs[0])); j++)
		{
			uint64_t	rank = (uint64_t) (qs[j] * N + 0.999999);
			double		exact = (double) values[rank - 1];
			double		est = sketch_quantile(&s, qs[j]);

			assert_true(est >= exact * (1 - 1.0 / (2 * SKETCH_SUB)) - 0.5);
			assert_true(est <= exact * (1 + 1.0 / (2 * SKETCH_SUB)) + 0.5);
		}
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_buckets_are_ordered),
		cmocka_unit_test(test_empty_and_extremes),
		cmocka_unit_test(test_error_bound),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
