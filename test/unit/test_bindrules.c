/*-------------------------------------------------------------------------
 *
 * test_bindrules.c
 *	  cmocka unit tests for src/bindrules.c, apiary's calling convention:
 *	  which JSON value binds which parameter, and the parameter masks that
 *	  bind.c uses to pick (and cache) a call statement.
 *
 * bindrules.c includes no PostgreSQL header, so it is compiled in here as
 * it is (see the Makefile).
 *
 *-------------------------------------------------------------------------
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "bindrules.h"

/* The mask holding exactly the given parameters; -1 ends the list. */
static BindMask
mask_of(int first, ...)
{
	BindMask	m;
	va_list		ap;

	bind_mask_clear(&m);
	va_start(ap, first);
	for (int i = first; i >= 0; i = va_arg(ap, int))
		bind_mask_set(&m, i);
	va_end(ap);
	return m;
}

static void
assert_mask(const BindMask *got, const BindMask *want)
{
	for (int i = 0; i < BIND_MAX_PARAMS; i++)
	{
		if (bind_mask_test(got, i) != bind_mask_test(want, i))
			fail_msg("parameter %d: mask has %d, expected %d", i,
					 bind_mask_test(got, i), bind_mask_test(want, i));
	}
	assert_true(bind_mask_equal(got, want));
}

/*
 * Key lengths of NUL-terminated test keys: bind_by_name takes them apart,
 * as the JSON parser hands them over.
 */
static void
lens_of(int nkeys, const char *const *keys, int *lens)
{
	for (int k = 0; k < nkeys; k++)
		lens[k] = (int) strlen(keys[k]);
}

/* f(a, b, c DEFAULT, d DEFAULT) */
static const char *const abcd_names[] = {"a", "b", "c", "d"};
static const BindSignature abcd = {4, abcd_names, 2};

/* ---------------------------------------------------------------- masks */

static void
test_mask_clear_is_empty(void **state)
{
	BindMask	m;
	BindMask	zero;

	(void) state;
	memset(&m, 0xff, sizeof(m));
	bind_mask_clear(&m);
	memset(&zero, 0, sizeof(zero));
	assert_memory_equal(&m, &zero, sizeof(m));
	for (int i = 0; i < BIND_MAX_PARAMS; i++)
		assert_false(bind_mask_test(&m, i));
}

/* Each bit lands in its own place, across the 64-bit word boundary. */
static void
test_mask_set_test_word_boundary(void **state)
{
	static const int probes[] = {0, 1, 62, 63, 64, 65, 99, 127};

	(void) state;
	for (size_t p = 0; p < sizeof(probes) / sizeof(probes[0]); p++)
	{
		BindMask	m;

		bind_mask_clear(&m);
		bind_mask_set(&m, probes[p]);
		for (int i = 0; i < BIND_MAX_PARAMS; i++)
		{
			if (bind_mask_test(&m, i) != (i == probes[p]))
				fail_msg("set %d, test %d gave %d", probes[p], i,
						 bind_mask_test(&m, i));
		}
	}
}

static void
test_mask_words(void **state)
{
	BindMask	m = mask_of(63, 64, 99, -1);

	(void) state;
	assert_int_equal(m.bits[0], UINT64_C(1) << 63);
	assert_int_equal(m.bits[1], (UINT64_C(1) << 0) | (UINT64_C(1) << 35));
	assert_true(bind_mask_test(&m, 63));
	assert_true(bind_mask_test(&m, 64));
	assert_true(bind_mask_test(&m, 99));
	assert_false(bind_mask_test(&m, 62));
	assert_false(bind_mask_test(&m, 65));
	assert_false(bind_mask_test(&m, 98));
	assert_false(bind_mask_test(&m, 100));
	assert_false(bind_mask_test(&m, 0));
}

static void
test_mask_set_is_idempotent(void **state)
{
	BindMask	once = mask_of(5, -1);
	BindMask	twice = mask_of(5, 5, -1);

	(void) state;
	assert_true(bind_mask_equal(&once, &twice));
}

static void
test_mask_equal(void **state)
{
	BindMask	a = mask_of(0, 63, 64, 99, -1);
	BindMask	b = mask_of(99, 64, 63, 0, -1);
	BindMask	c = mask_of(0, 63, 64, -1);
	BindMask	d = mask_of(0, 63, 64, 98, -1);
	BindMask	e1 = mask_of(-1);
	BindMask	e2 = mask_of(-1);
	BindMask	hi = mask_of(127, -1);

	(void) state;
	assert_true(bind_mask_equal(&a, &a));
	assert_true(bind_mask_equal(&a, &b));
	assert_true(bind_mask_equal(&b, &a));
	assert_false(bind_mask_equal(&a, &c));
	assert_false(bind_mask_equal(&c, &a));
	assert_false(bind_mask_equal(&a, &d));
	assert_true(bind_mask_equal(&e1, &e2));
	/* a difference only in the second word counts */
	assert_false(bind_mask_equal(&e1, &hi));
}

static void
test_mask_is_prefix_empty(void **state)
{
	BindMask	m = mask_of(-1);
	int			n = -42;

	(void) state;
	assert_true(bind_mask_is_prefix(&m, &n));
	assert_int_equal(n, 0);
}

static void
test_mask_is_prefix_true(void **state)
{
	BindMask	m;
	int			n = -42;

	(void) state;
	m = mask_of(0, -1);
	assert_true(bind_mask_is_prefix(&m, &n));
	assert_int_equal(n, 1);

	m = mask_of(0, 1, 2, -1);
	assert_true(bind_mask_is_prefix(&m, &n));
	assert_int_equal(n, 3);

	/* a prefix that fills the first word exactly */
	bind_mask_clear(&m);
	for (int i = 0; i < 64; i++)
		bind_mask_set(&m, i);
	assert_true(bind_mask_is_prefix(&m, &n));
	assert_int_equal(n, 64);

	/* ... and one that runs into the second word (FUNC_MAX_ARGS = 100) */
	bind_mask_clear(&m);
	for (int i = 0; i < 100; i++)
		bind_mask_set(&m, i);
	assert_true(bind_mask_is_prefix(&m, &n));
	assert_int_equal(n, 100);

	/* every parameter */
	bind_mask_clear(&m);
	for (int i = 0; i < BIND_MAX_PARAMS; i++)
		bind_mask_set(&m, i);
	assert_true(bind_mask_is_prefix(&m, &n));
	assert_int_equal(n, BIND_MAX_PARAMS);
}

static void
test_mask_is_prefix_false(void **state)
{
	BindMask	m;
	int			n = -42;

	(void) state;
	/* a hole at the start */
	m = mask_of(1, -1);
	assert_false(bind_mask_is_prefix(&m, &n));
	assert_int_equal(n, -42);	/* n is left alone on false */

	/* a hole in the middle */
	m = mask_of(0, 2, -1);
	assert_false(bind_mask_is_prefix(&m, &n));

	/* a prefix, plus a stray bit in the second word */
	m = mask_of(0, 1, 2, 99, -1);
	assert_false(bind_mask_is_prefix(&m, &n));

	/* only the second word */
	m = mask_of(64, -1);
	assert_false(bind_mask_is_prefix(&m, &n));

	/* 0..63 then a gap at 64, then 65 */
	bind_mask_clear(&m);
	for (int i = 0; i < 64; i++)
		bind_mask_set(&m, i);
	bind_mask_set(&m, 65);
	assert_false(bind_mask_is_prefix(&m, &n));

	/* the last possible bit alone */
	m = mask_of(127, -1);
	assert_false(bind_mask_is_prefix(&m, &n));
	assert_int_equal(n, -42);
}

/* ------------------------------------------------------- bind_by_name */

static void
test_name_all_given_any_order(void **state)
{
	const char *const keys[] = {"d", "b", "a", "c"};
	int			lens[4];
	int			slot[4] = {-1, -1, -1, -1};
	BindMask	m;
	BindMask	want = mask_of(0, 1, 2, 3, -1);
	int			bad = -42;

	(void) state;
	lens_of(4, keys, lens);
	assert_int_equal(bind_by_name(&abcd, 4, keys, lens, slot, &m, &bad),
					 BIND_OK);
	assert_int_equal(slot[0], 3);
	assert_int_equal(slot[1], 1);
	assert_int_equal(slot[2], 0);
	assert_int_equal(slot[3], 2);
	assert_mask(&m, &want);
	assert_int_equal(bad, -42);		/* untouched on success */
}

static void
test_name_required_only(void **state)
{
	const char *const keys[] = {"b", "a"};
	int			lens[2];
	int			slot[2] = {-1, -1};
	BindMask	m;
	BindMask	want = mask_of(0, 1, -1);
	int			bad = -42;
	int			n = -1;

	(void) state;
	lens_of(2, keys, lens);
	assert_int_equal(bind_by_name(&abcd, 2, keys, lens, slot, &m, &bad),
					 BIND_OK);
	assert_int_equal(slot[0], 1);
	assert_int_equal(slot[1], 0);
	assert_mask(&m, &want);
	assert_true(bind_mask_is_prefix(&m, &n));
	assert_int_equal(n, 2);
}

/* A default in the middle may be skipped: the mask is then no prefix. */
static void
test_name_skip_a_default(void **state)
{
	const char *const keys[] = {"a", "d", "b"};
	int			lens[3];
	int			slot[3] = {-1, -1, -1};
	BindMask	m;
	BindMask	want = mask_of(0, 1, 3, -1);
	int			bad = -42;
	int			n = -1;

	(void) state;
	lens_of(3, keys, lens);
	assert_int_equal(bind_by_name(&abcd, 3, keys, lens, slot, &m, &bad),
					 BIND_OK);
	assert_int_equal(slot[0], 0);
	assert_int_equal(slot[1], 3);
	assert_int_equal(slot[2], 1);
	assert_mask(&m, &want);
	assert_false(bind_mask_is_prefix(&m, &n));
}

static void
test_name_unknown_key(void **state)
{
	const char *const keys[] = {"a", "b", "e", "c"};
	int			lens[4];
	int			slot[4] = {-1, -1, -1, -1};
	BindMask	m;
	int			bad = -42;

	(void) state;
	lens_of(4, keys, lens);
	assert_int_equal(bind_by_name(&abcd, 4, keys, lens, slot, &m, &bad),
					 BIND_UNKNOWN_NAME);
	assert_int_equal(bad, 2);
}

/* An unknown key is reported even when required parameters are missing. */
static void
test_name_unknown_before_missing(void **state)
{
	const char *const keys[] = {"zzz"};
	int			lens[1];
	int			slot[1] = {-1};
	BindMask	m;
	int			bad = -42;

	(void) state;
	lens_of(1, keys, lens);
	assert_int_equal(bind_by_name(&abcd, 1, keys, lens, slot, &m, &bad),
					 BIND_UNKNOWN_NAME);
	assert_int_equal(bad, 0);
}

/* Names are matched exactly: no case folding, no prefix match. */
static void
test_name_exact_match_only(void **state)
{
	static const char *const names[] = {"id", "ident"};
	BindSignature sig = {2, names, 2};
	const char *const cases[] = {"ID", "i", "ide", "identity", "id ", " id"};

	(void) state;
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
	{
		const char *const keys[] = {cases[c]};
		int			lens[1] = {(int) strlen(cases[c])};
		int			slot[1] = {-1};
		BindMask	m;
		int			bad = -42;

		if (bind_by_name(&sig, 1, keys, lens, slot, &m, &bad) !=
			BIND_UNKNOWN_NAME)
			fail_msg("key \"%s\" matched parameter %d", cases[c], slot[0]);
		assert_int_equal(bad, 0);
	}
}

/* A shorter name that is a prefix of a longer one binds only itself. */
static void
test_name_prefix_names(void **state)
{
	static const char *const names[] = {"ident", "id"};
	BindSignature sig = {2, names, 2};
	const char *const keys[] = {"id"};
	int			lens[1] = {2};
	int			slot[1] = {-1};
	BindMask	m;
	BindMask	want = mask_of(1, -1);
	int			bad = -42;

	(void) state;
	assert_int_equal(bind_by_name(&sig, 1, keys, lens, slot, &m, &bad),
					 BIND_OK);
	assert_int_equal(slot[0], 1);
	assert_mask(&m, &want);
}

/*
 * Keys come with their lengths and are not NUL-terminated: they point into
 * the JSON text.  The buffer is malloc'd to its exact size so that
 * AddressSanitizer and valgrind catch any read past a key.
 */
static void
test_name_keys_not_terminated(void **state)
{
	static const char *const names[] = {"alpha", "beta", "gamma"};
	BindSignature sig = {3, names, 1};
	static const char text[] = "betagammaalphaxx";	/* copied without NUL */
	size_t		size = sizeof(text) - 1;
	char	   *buf = malloc(size);
	const char *keys[3];
	int			lens[3] = {4, 5, 5};
	int			slot[3] = {-1, -1, -1};
	BindMask	m;
	BindMask	want = mask_of(0, 1, 2, -1);
	int			bad = -42;

	(void) state;
	assert_non_null(buf);
	memcpy(buf, text, size);
	keys[0] = buf;				/* "beta" */
	keys[1] = buf + 4;			/* "gamma" */
	keys[2] = buf + 9;			/* "alpha", followed by "xx" */

	assert_int_equal(bind_by_name(&sig, 3, keys, lens, slot, &m, &bad),
					 BIND_OK);
	assert_int_equal(slot[0], 1);
	assert_int_equal(slot[1], 2);
	assert_int_equal(slot[2], 0);
	assert_mask(&m, &want);

	/* the last key runs to the very end of the buffer: "alphaxx" */
	lens[2] = 7;
	assert_int_equal(bind_by_name(&sig, 3, keys, lens, slot, &m, &bad),
					 BIND_UNKNOWN_NAME);
	assert_int_equal(bad, 2);

	/* a length shorter than the name does not match a prefix of the text */
	lens[2] = 4;				/* "alph" */
	assert_int_equal(bind_by_name(&sig, 3, keys, lens, slot, &m, &bad),
					 BIND_UNKNOWN_NAME);
	assert_int_equal(bad, 2);

	free(buf);
}

/* Unnamed parameters (NULL or "") can never be bound by name. */
static void
test_name_unnamed_never_match(void **state)
{
	static const char *const names[] = {NULL, "", "x"};
	BindSignature sig = {3, names, 3};
	static const char nothing[] = "x";	/* zero bytes of it are the key */
	const char *const keys[] = {nothing};
	int			lens[1] = {0};
	int			slot[1] = {-1};
	BindMask	m;
	int			bad = -42;

	(void) state;
	/* the empty key names neither the NULL nor the "" parameter */
	assert_int_equal(bind_by_name(&sig, 1, keys, lens, slot, &m, &bad),
					 BIND_UNKNOWN_NAME);
	assert_int_equal(bad, 0);

	/* "x" still finds the named one, past the unnamed ones */
	lens[0] = 1;
	assert_int_equal(bind_by_name(&sig, 1, keys, lens, slot, &m, &bad),
					 BIND_OK);
	assert_int_equal(slot[0], 2);
}

/* A function whose parameters are all unnamed (names == NULL). */
static void
test_name_no_names_array(void **state)
{
	BindSignature sig = {2, NULL, 0};
	BindSignature none = {2, NULL, 2};
	const char *const keys[] = {"a"};
	int			lens[1] = {1};
	int			slot[1] = {-1};
	BindMask	m;
	BindMask	empty = mask_of(-1);
	int			bad = -42;

	(void) state;
	assert_int_equal(bind_by_name(&sig, 1, keys, lens, slot, &m, &bad),
					 BIND_UNKNOWN_NAME);
	assert_int_equal(bad, 0);

	/* {} with all defaults is fine, even without names */
	assert_int_equal(bind_by_name(&none, 0, NULL, NULL, NULL, &m, &bad),
					 BIND_OK);
	assert_mask(&m, &empty);
}

/* An unnamed required parameter makes a call by name impossible. */
static void
test_name_unnamed_required_is_missing(void **state)
{
	static const char *const names[] = {"", "b"};
	BindSignature sig = {2, names, 0};
	const char *const keys[] = {"b"};
	int			lens[1] = {1};
	int			slot[1] = {-1};
	BindMask	m;
	int			bad = -42;

	(void) state;
	assert_int_equal(bind_by_name(&sig, 1, keys, lens, slot, &m, &bad),
					 BIND_MISSING);
	assert_int_equal(bad, 0);
}

static void
test_name_missing_first_required(void **state)
{
	static const char *const names[] = {"a", "b", "c", "d"};
	BindSignature sig = {4, names, 1};	/* a, b, c required */
	int			slot[4];
	BindMask	m;
	int			bad = -42;

	(void) state;
	/* only c: a is the first missing one */
	{
		const char *const keys[] = {"c"};
		int			lens[1] = {1};

		assert_int_equal(bind_by_name(&sig, 1, keys, lens, slot, &m, &bad),
						 BIND_MISSING);
		assert_int_equal(bad, 0);
	}
	/* a and d: b is the first missing one (c is missing too) */
	{
		const char *const keys[] = {"a", "d"};
		int			lens[2] = {1, 1};

		assert_int_equal(bind_by_name(&sig, 2, keys, lens, slot, &m, &bad),
						 BIND_MISSING);
		assert_int_equal(bad, 1);
	}
	/* a, b, d: c is missing */
	{
		const char *const keys[] = {"d", "b", "a"};
		int			lens[3] = {1, 1, 1};

		assert_int_equal(bind_by_name(&sig, 3, keys, lens, slot, &m, &bad),
						 BIND_MISSING);
		assert_int_equal(bad, 2);
	}
	/* the empty object */
	assert_int_equal(bind_by_name(&sig, 0, NULL, NULL, slot, &m, &bad),
					 BIND_MISSING);
	assert_int_equal(bad, 0);
}

/* A function without parameters takes the empty object. */
static void
test_name_no_params(void **state)
{
	BindSignature sig = {0, NULL, 0};
	BindMask	m;
	BindMask	empty = mask_of(-1);
	int			bad = -42;
	const char *const keys[] = {"a"};
	int			lens[1] = {1};
	int			slot[1] = {-1};

	(void) state;
	memset(&m, 0xff, sizeof(m));
	assert_int_equal(bind_by_name(&sig, 0, NULL, NULL, NULL, &m, &bad),
					 BIND_OK);
	assert_mask(&m, &empty);	/* cleared, not left as it was */

	assert_int_equal(bind_by_name(&sig, 1, keys, lens, slot, &m, &bad),
					 BIND_UNKNOWN_NAME);
	assert_int_equal(bad, 0);
}

/* Parameters past the first word are bound into the second. */
static void
test_name_high_params(void **state)
{
	static char namebuf[100][16];
	static const char *names[100];
	BindSignature sig = {100, names, 37};	/* 0..62 required */
	const char *keys[65];
	int			lens[65];
	int			slot[65];
	BindMask	m;
	BindMask	want;
	int			bad = -42;

	(void) state;
	for (int i = 0; i < 100; i++)
	{
		snprintf(namebuf[i], sizeof(namebuf[i]), "p%d", i);
		names[i] = namebuf[i];
	}
	bind_mask_clear(&want);
	for (int k = 0; k < 63; k++)
	{
		keys[k] = names[k];
		bind_mask_set(&want, k);
	}
	keys[63] = names[99];
	keys[64] = names[64];
	bind_mask_set(&want, 99);
	bind_mask_set(&want, 64);
	lens_of(65, keys, lens);

	assert_int_equal(bind_by_name(&sig, 65, keys, lens, slot, &m, &bad),
					 BIND_OK);
	assert_int_equal(slot[62], 62);
	assert_int_equal(slot[63], 99);
	assert_int_equal(slot[64], 64);
	assert_mask(&m, &want);
	assert_false(bind_mask_test(&m, 63));

	/* leave out p62, the last required one */
	keys[62] = names[63];
	lens[62] = 3;
	assert_int_equal(bind_by_name(&sig, 65, keys, lens, slot, &m, &bad),
					 BIND_MISSING);
	assert_int_equal(bad, 62);
}

/* --------------------------------------------------- bind_by_position */

static void
test_position_exact(void **state)
{
	BindMask	m;
	BindMask	want = mask_of(0, 1, 2, 3, -1);
	int			bad = -42;

	(void) state;
	assert_int_equal(bind_by_position(&abcd, 4, &m, &bad), BIND_OK);
	assert_mask(&m, &want);
	assert_int_equal(bad, -42);
}

static void
test_position_with_defaults(void **state)
{
	BindMask	m;
	BindMask	two = mask_of(0, 1, -1);
	BindMask	three = mask_of(0, 1, 2, -1);
	int			bad = -42;
	int			n = -1;

	(void) state;
	assert_int_equal(bind_by_position(&abcd, 2, &m, &bad), BIND_OK);
	assert_mask(&m, &two);
	assert_true(bind_mask_is_prefix(&m, &n));
	assert_int_equal(n, 2);

	assert_int_equal(bind_by_position(&abcd, 3, &m, &bad), BIND_OK);
	assert_mask(&m, &three);
}

static void
test_position_too_many(void **state)
{
	BindMask	m;
	int			bad = -42;

	(void) state;
	assert_int_equal(bind_by_position(&abcd, 5, &m, &bad), BIND_TOO_MANY);
	assert_int_equal(bad, 4);	/* index of the first surplus element */
	assert_int_equal(bind_by_position(&abcd, 100, &m, &bad), BIND_TOO_MANY);
	assert_int_equal(bad, 4);
}

static void
test_position_missing(void **state)
{
	BindMask	m;
	int			bad = -42;

	(void) state;
	assert_int_equal(bind_by_position(&abcd, 1, &m, &bad), BIND_MISSING);
	assert_int_equal(bad, 1);
	assert_int_equal(bind_by_position(&abcd, 0, &m, &bad), BIND_MISSING);
	assert_int_equal(bad, 0);
}

static void
test_position_no_params(void **state)
{
	BindSignature sig = {0, NULL, 0};
	BindMask	m;
	BindMask	empty = mask_of(-1);
	int			bad = -42;

	(void) state;
	memset(&m, 0xff, sizeof(m));
	assert_int_equal(bind_by_position(&sig, 0, &m, &bad), BIND_OK);
	assert_mask(&m, &empty);
	assert_int_equal(bind_by_position(&sig, 1, &m, &bad), BIND_TOO_MANY);
	assert_int_equal(bad, 0);
}

/* Positional binding does not care whether parameters have names. */
static void
test_position_unnamed(void **state)
{
	static const char *const names[] = {NULL, ""};
	BindSignature sig = {2, names, 0};
	BindMask	m;
	BindMask	want = mask_of(0, 1, -1);
	int			bad = -42;

	(void) state;
	assert_int_equal(bind_by_position(&sig, 2, &m, &bad), BIND_OK);
	assert_mask(&m, &want);
}

static void
test_position_all_defaults(void **state)
{
	BindSignature sig = {3, NULL, 3};
	BindMask	m;
	BindMask	empty = mask_of(-1);
	BindMask	one = mask_of(0, -1);
	int			bad = -42;

	(void) state;
	assert_int_equal(bind_by_position(&sig, 0, &m, &bad), BIND_OK);
	assert_mask(&m, &empty);
	assert_int_equal(bind_by_position(&sig, 1, &m, &bad), BIND_OK);
	assert_mask(&m, &one);
}

/* FUNC_MAX_ARGS parameters: the mask runs into the second word. */
static void
test_position_hundred(void **state)
{
	BindSignature sig = {100, NULL, 30};
	BindMask	m;
	int			bad = -42;
	int			n = -1;

	(void) state;
	assert_int_equal(bind_by_position(&sig, 100, &m, &bad), BIND_OK);
	assert_true(bind_mask_is_prefix(&m, &n));
	assert_int_equal(n, 100);

	assert_int_equal(bind_by_position(&sig, 70, &m, &bad), BIND_OK);
	assert_true(bind_mask_test(&m, 69));
	assert_false(bind_mask_test(&m, 70));

	assert_int_equal(bind_by_position(&sig, 69, &m, &bad), BIND_MISSING);
	assert_int_equal(bad, 69);

	assert_int_equal(bind_by_position(&sig, 101, &m, &bad), BIND_TOO_MANY);
	assert_int_equal(bad, 100);
}

/* -------------------------------------------------------- bind_scalar */

static void
test_scalar_one_param(void **state)
{
	static const char *const names[] = {"x"};
	BindSignature sig = {1, names, 0};
	BindMask	m;
	BindMask	want = mask_of(0, -1);
	int			bad = -42;

	(void) state;
	memset(&m, 0xff, sizeof(m));
	assert_int_equal(bind_scalar(&sig, &m, &bad), BIND_OK);
	assert_mask(&m, &want);
	assert_int_equal(bad, -42);
}

static void
test_scalar_one_required_plus_defaults(void **state)
{
	BindMask	m;
	BindMask	want = mask_of(0, -1);
	int			bad = -42;
	BindSignature sig = {3, NULL, 2};

	(void) state;
	assert_int_equal(bind_scalar(&sig, &m, &bad), BIND_OK);
	assert_mask(&m, &want);

	/* f(a, b, c DEFAULT, d DEFAULT) has two required: ambiguous */
	assert_int_equal(bind_scalar(&abcd, &m, &bad), BIND_SCALAR_AMBIGUOUS);
	assert_int_equal(bad, 0);
}

/* One parameter that has a default still takes the scalar. */
static void
test_scalar_one_defaulted(void **state)
{
	BindSignature sig = {1, NULL, 1};
	BindMask	m;
	BindMask	want = mask_of(0, -1);
	int			bad = -42;

	(void) state;
	assert_int_equal(bind_scalar(&sig, &m, &bad), BIND_OK);
	assert_mask(&m, &want);
}

static void
test_scalar_zero_params(void **state)
{
	BindSignature sig = {0, NULL, 0};
	BindMask	m;
	BindMask	empty = mask_of(-1);
	int			bad = -42;

	(void) state;
	memset(&m, 0xff, sizeof(m));
	assert_int_equal(bind_scalar(&sig, &m, &bad), BIND_SCALAR_AMBIGUOUS);
	assert_int_equal(bad, 0);
	assert_mask(&m, &empty);
}

static void
test_scalar_two_required(void **state)
{
	BindSignature sig = {2, NULL, 0};
	BindSignature sig3 = {3, NULL, 1};
	BindMask	m;
	int			bad = -42;

	(void) state;
	assert_int_equal(bind_scalar(&sig, &m, &bad), BIND_SCALAR_AMBIGUOUS);
	assert_int_equal(bad, 0);
	bad = -42;
	assert_int_equal(bind_scalar(&sig3, &m, &bad), BIND_SCALAR_AMBIGUOUS);
	assert_int_equal(bad, 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mask_clear_is_empty),
		cmocka_unit_test(test_mask_set_test_word_boundary),
		cmocka_unit_test(test_mask_words),
		cmocka_unit_test(test_mask_set_is_idempotent),
		cmocka_unit_test(test_mask_equal),
		cmocka_unit_test(test_mask_is_prefix_empty),
		cmocka_unit_test(test_mask_is_prefix_true),
		cmocka_unit_test(test_mask_is_prefix_false),
		cmocka_unit_test(test_name_all_given_any_order),
		cmocka_unit_test(test_name_required_only),
		cmocka_unit_test(test_name_skip_a_default),
		cmocka_unit_test(test_name_unknown_key),
		cmocka_unit_test(test_name_unknown_before_missing),
		cmocka_unit_test(test_name_exact_match_only),
		cmocka_unit_test(test_name_prefix_names),
		cmocka_unit_test(test_name_keys_not_terminated),
		cmocka_unit_test(test_name_unnamed_never_match),
		cmocka_unit_test(test_name_no_names_array),
		cmocka_unit_test(test_name_unnamed_required_is_missing),
		cmocka_unit_test(test_name_missing_first_required),
		cmocka_unit_test(test_name_no_params),
		cmocka_unit_test(test_name_high_params),
		cmocka_unit_test(test_position_exact),
		cmocka_unit_test(test_position_with_defaults),
		cmocka_unit_test(test_position_too_many),
		cmocka_unit_test(test_position_missing),
		cmocka_unit_test(test_position_no_params),
		cmocka_unit_test(test_position_unnamed),
		cmocka_unit_test(test_position_all_defaults),
		cmocka_unit_test(test_position_hundred),
		cmocka_unit_test(test_scalar_one_param),
		cmocka_unit_test(test_scalar_one_required_plus_defaults),
		cmocka_unit_test(test_scalar_one_defaulted),
		cmocka_unit_test(test_scalar_zero_params),
		cmocka_unit_test(test_scalar_two_required),
	};

	return cmocka_run_group_tests_name("bindrules", tests, NULL, NULL);
}
