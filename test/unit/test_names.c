/*-------------------------------------------------------------------------
 *
 * test_names.c
 *	  cmocka unit tests for src/names.c: the edit distance behind the
 *	  "Perhaps you meant ..." hints, its threshold, and the choice of the
 *	  nearest candidates.
 *
 * names.c includes no PostgreSQL header, so it is compiled in here as it is
 * (see the Makefile).
 *
 *-------------------------------------------------------------------------
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include "names.h"

/* Distance between two NUL-terminated strings. */
static int
dist(const char *a, const char *b, int max)
{
	return names_distance(a, strlen(a), b, strlen(b), max);
}

/* The distance is symmetric: check it both ways. */
#define assert_dist(a, b, max, want) \
	do { \
		assert_int_equal(dist((a), (b), (max)), (want)); \
		assert_int_equal(dist((b), (a), (max)), (want)); \
	} while (0)

#define lengthof(array) ((int) (sizeof(array) / sizeof((array)[0])))

/* ------------------------------------------------------ names_distance */

static void
test_distance_identical(void **state)
{
	(void) state;
	assert_dist("kitten", "kitten", 3, 0);
	assert_dist("x", "x", 0, 0);
	assert_dist("a_long_parameter_name", "a_long_parameter_name", 1, 0);
}

static void
test_distance_ignores_ascii_case(void **state)
{
	(void) state;
	assert_dist("Kitten", "kITTEN", 3, 0);
	assert_dist("ABCXYZ", "abcxyz", 0, 0);
	assert_dist("p_Id", "P_iD", 0, 0);
	/* folding does not make unlike characters equal */
	assert_dist("Kitten", "Mitten", 3, 1);
	/* '@' and '`' sit next to 'A' and 'a' and 'Z'+1 = '[', 'z'+1 = '{' */
	assert_dist("@", "`", 3, 1);
	assert_dist("[", "{", 3, 1);
	assert_dist("@[", "A[", 3, 1);
}

/* Only ASCII is folded: UTF-8 bytes are compared as they are. */
static void
test_distance_non_ascii(void **state)
{
	(void) state;
	/* "É" and "é" in UTF-8 differ in their second byte */
	assert_dist("\xc3\x89t\xc3\xa9", "\xc3\xa9t\xc3\xa9", 3, 1);
	assert_dist("\xc3\xa9t\xc3\xa9", "\xc3\xa9t\xc3\xa9", 0, 0);
	/* a high byte is neither an upper nor a lower case letter */
	assert_dist("\xc1", "\xe1", 3, 1);
	assert_dist("\xff", "\xff", 0, 0);
}

static void
test_distance_single_edits(void **state)
{
	(void) state;
	/* insert */
	assert_int_equal(dist("cat", "cats", 3), 1);
	assert_int_equal(dist("cat", "scat", 3), 1);
	assert_int_equal(dist("cat", "coat", 3), 1);
	/* delete */
	assert_int_equal(dist("cats", "cat", 3), 1);
	assert_int_equal(dist("scat", "cat", 3), 1);
	assert_int_equal(dist("coat", "cat", 3), 1);
	/* substitute */
	assert_int_equal(dist("cat", "cut", 3), 1);
	assert_int_equal(dist("cat", "bat", 3), 1);
	assert_int_equal(dist("cat", "car", 3), 1);
	/* with max = 1 exactly */
	assert_dist("cat", "cats", 1, 1);
	assert_dist("cat", "cut", 1, 1);
}

static void
test_distance_known_values(void **state)
{
	(void) state;
	assert_dist("kitten", "sitting", 3, 3);
	assert_dist("flaw", "lawn", 3, 2);
	assert_dist("saturday", "sunday", 3, 3);
	/* Levenshtein, not Damerau: a transposition costs two */
	assert_dist("ab", "ba", 3, 2);
	assert_dist("user_id", "user_di", 3, 2);
	/* all different, same length */
	assert_dist("abc", "xyz", 3, 3);
}

/* Anything above max is reported as max + 1, never the true distance. */
static void
test_distance_cut_off(void **state)
{
	(void) state;
	assert_dist("kitten", "sitting", 2, 3);
	assert_dist("kitten", "sitting", 1, 2);
	assert_dist("kitten", "sitting", 0, 1);
	/* true distance 6, same lengths: the row minimum passes max early */
	assert_dist("abcdef", "uvwxyz", 2, 3);
	assert_dist("abcdef", "uvwxyz", 0, 1);
	/* differ only at the end: the cut-off comes from the final cell */
	assert_dist("abcdefxyz", "abcdefuvw", 2, 3);
	/* and a long unrelated pair */
	assert_dist("parameter_one", "zzzzzzzzzzzzz", 3, 4);

	/*
	 * Every row keeps a cell within max ("xab" vs "ab" is 1), so only the
	 * last cell (true distance 3) is above it: it must still be clamped.
	 */
	assert_int_equal(dist("xab", "abyy", 1), 2);
	assert_int_equal(dist("abyy", "xab", 1), 2);
	assert_int_equal(dist("xab", "abyy", 3), 3);
}

/*
 * The cut-off stops as soon as a whole row is above max: the rest of a is
 * never read.  a is put just before a page that cannot be read, with a
 * length that runs into it, so reading one row too far crashes the test.
 */
static void
test_distance_cut_off_stops_reading(void **state)
{
	long		page = sysconf(_SC_PAGESIZE);
	char	   *map;
	char	   *a;

	(void) state;
	assert_true(page > 0);
	map = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(map != MAP_FAILED);
	assert_int_equal(mprotect(map + page, page, PROT_NONE), 0);

	/* "xx" then the guard page; claimed length 6 */
	a = map + page - 2;
	a[0] = 'x';
	a[1] = 'x';
	/* row 1 still has a cell at 1; row 2 has none: stop after a[1] */
	assert_int_equal(names_distance(a, 6, "abcdef", 6, 1), 2);
	/* with max 0, row 1 is already above it: stop after a[0] */
	a = map + page - 1;
	a[0] = 'x';
	assert_int_equal(names_distance(a, 6, "abcdef", 6, 0), 1);

	assert_int_equal(munmap(map, 2 * page), 0);
}

/*
 * Lengths that differ by more than max settle the answer before any
 * character is read: b is NULL here, so reading it would crash.
 */
static void
test_distance_length_difference(void **state)
{
	(void) state;
	assert_int_equal(names_distance("x", 1, NULL, 5, 2), 3);
	assert_int_equal(names_distance(NULL, 5, "x", 1, 2), 3);
	assert_int_equal(names_distance(NULL, 10, NULL, 0, 3), 4);
	assert_int_equal(names_distance(NULL, 0, NULL, 2, 1), 2);
	/* a difference of max + 1 is already enough */
	assert_int_equal(names_distance("x", 1, NULL, 4, 2), 3);
	assert_int_equal(names_distance("ab", 2, NULL, 4, 1), 2);
	assert_int_equal(names_distance(NULL, 4, "ab", 2, 1), 2);
	/* a difference of exactly max is computed */
	assert_dist("a", "abc", 2, 2);
	assert_dist("a", "xyz", 2, 3);
	assert_dist("abc", "abcdef", 3, 3);
	assert_dist("abc", "abcdefg", 3, 4);
}

/* Lengths are honoured: the strings need not be NUL-terminated. */
static void
test_distance_uses_lengths(void **state)
{
	static const char text[] = "columnXYZ";
	size_t		size = sizeof(text) - 1;
	char	   *buf = malloc(size);	/* exact size, no NUL */

	(void) state;
	assert_non_null(buf);
	memcpy(buf, text, size);
	assert_int_equal(names_distance(buf, 6, "column", 6, 3), 0);
	assert_int_equal(names_distance(buf, 7, "column", 6, 3), 1);
	assert_int_equal(names_distance(buf, size, "columnxyz", 9, 0), 0);
	assert_int_equal(names_distance(buf + 6, 3, "xyz", 3, 0), 0);
	free(buf);
}

static void
test_distance_empty(void **state)
{
	(void) state;
	assert_dist("", "", 0, 0);
	assert_dist("", "", 3, 0);
	assert_dist("", "a", 1, 1);
	assert_dist("", "a", 0, 1);
	assert_dist("", "ab", 2, 2);
	assert_dist("", "abc", 2, 3);
}

/* Strings longer than NAMES_MAX_LEN are never compared. */
static void
test_distance_too_long(void **state)
{
	char		a[NAMES_MAX_LEN + 2];
	char		b[NAMES_MAX_LEN + 2];

	(void) state;
	memset(a, 'q', sizeof(a));
	memset(b, 'q', sizeof(b));
	a[sizeof(a) - 1] = '\0';
	b[sizeof(b) - 1] = '\0';
	assert_int_equal(strlen(a), NAMES_MAX_LEN + 1);

	/* NAMES_MAX_LEN itself is still compared, on either side */
	assert_int_equal(names_distance(a, NAMES_MAX_LEN, b, NAMES_MAX_LEN, 3), 0);
	b[NAMES_MAX_LEN - 1] = 'r';
	assert_int_equal(names_distance(a, NAMES_MAX_LEN, b, NAMES_MAX_LEN, 3), 1);
	assert_int_equal(names_distance(a, NAMES_MAX_LEN - 1, b, NAMES_MAX_LEN, 3),
					 1);
	b[NAMES_MAX_LEN - 1] = 'q';

	/* one byte more, and even equal strings are "too far" */
	assert_int_equal(names_distance(a, NAMES_MAX_LEN + 1,
									b, NAMES_MAX_LEN + 1, 3), 4);
	assert_int_equal(names_distance(a, NAMES_MAX_LEN + 1,
									b, NAMES_MAX_LEN, 3), 4);
	assert_int_equal(names_distance(a, NAMES_MAX_LEN,
									b, NAMES_MAX_LEN + 1, 3), 4);
	assert_int_equal(names_distance(a, NAMES_MAX_LEN + 1,
									b, NAMES_MAX_LEN + 1, 0), 1);
	/* the check comes first: neither side is read */
	assert_int_equal(names_distance(NULL, 100000, NULL, 100000, 3), 4);
}

/* ----------------------------------------------------- names_threshold */

static void
test_threshold(void **state)
{
	(void) state;
	assert_int_equal(names_threshold(0), 1);
	assert_int_equal(names_threshold(1), 1);
	assert_int_equal(names_threshold(3), 1);
	assert_int_equal(names_threshold(4), 2);
	assert_int_equal(names_threshold(7), 2);
	assert_int_equal(names_threshold(8), 3);
	assert_int_equal(names_threshold(NAMES_MAX_LEN), 3);
	assert_int_equal(names_threshold(NAMES_MAX_LEN + 1), 3);
	assert_int_equal(names_threshold((size_t) -1), 3);
}

/* ------------------------------------------------------- names_nearest */

static int
nearest(const char *target, const char *const *cands, int n,
		int *out, int maxout)
{
	return names_nearest(target, strlen(target), cands, n, out, maxout);
}

static void
test_nearest_best_first(void **state)
{
	/* target "amount": length 6, threshold 2 */
	static const char *const cands[] = {
		"count",				/* 2 */
		"mount",				/* 1 */
		"total",				/* far */
		"AMOUNT",				/* 0 */
		"amounts",				/* 1 */
		"amnt",					/* 2 */
	};
	int			out[8];
	int			n;

	(void) state;
	memset(out, -1, sizeof(out));
	n = nearest("amount", cands, lengthof(cands), out, lengthof(out));
	assert_int_equal(n, 5);
	assert_int_equal(out[0], 3);
	assert_int_equal(out[1], 1);
	assert_int_equal(out[2], 4);
	assert_int_equal(out[3], 0);
	assert_int_equal(out[4], 5);
	assert_int_equal(out[5], -1);	/* nothing written past n */
}

static void
test_nearest_ties_in_candidate_order(void **state)
{
	static const char *const cands[] = {"nama", "nome", "xxxx", "name_",
	"nam"};
	int			out[8];
	int			n;

	(void) state;
	/* target "name": threshold 2; every candidate but "xxxx" is at 1 */
	n = nearest("name", cands, lengthof(cands), out, lengthof(out));
	assert_int_equal(n, 4);
	assert_int_equal(out[0], 0);
	assert_int_equal(out[1], 1);
	assert_int_equal(out[2], 3);
	assert_int_equal(out[3], 4);
}

static void
test_nearest_skips_null(void **state)
{
	static const char *const cands[] = {NULL, "user", NULL, "users", NULL};
	int			out[8];
	int			n;

	(void) state;
	n = nearest("usr", cands, lengthof(cands), out, lengthof(out));
	assert_int_equal(n, 1);		/* "users" is 2 away, threshold 1 */
	assert_int_equal(out[0], 1);

	n = nearest("user", cands, lengthof(cands), out, lengthof(out));
	assert_int_equal(n, 2);
	assert_int_equal(out[0], 1);
	assert_int_equal(out[1], 3);
}

static void
test_nearest_all_null(void **state)
{
	static const char *const cands[] = {NULL, NULL};
	int			out[2] = {-1, -1};

	(void) state;
	assert_int_equal(nearest("a", cands, 2, out, 2), 0);
	assert_int_equal(out[0], -1);
}

static void
test_nearest_maxout(void **state)
{
	static const char *const cands[] = {"ab", "ac", "ad", "ae", "abc"};
	int			out[8];

	(void) state;
	memset(out, -1, sizeof(out));
	/* "abc" is nearest (0), then the ties in order */
	assert_int_equal(nearest("abc", cands, lengthof(cands), out, 2), 2);
	assert_int_equal(out[0], 4);
	assert_int_equal(out[1], 0);
	assert_int_equal(out[2], -1);

	memset(out, -1, sizeof(out));
	assert_int_equal(nearest("abc", cands, lengthof(cands), out, 1), 1);
	assert_int_equal(out[0], 4);
	assert_int_equal(out[1], -1);

	/* maxout 0 writes nothing, even with a perfect match */
	memset(out, -1, sizeof(out));
	assert_int_equal(nearest("abc", cands, lengthof(cands), out, 0), 0);
	assert_int_equal(out[0], -1);

	/* room for more than there are */
	assert_int_equal(nearest("abc", cands, lengthof(cands), out, 8), 3);
	assert_int_equal(out[0], 4);
	assert_int_equal(out[1], 0);
	assert_int_equal(out[2], 1);
}

/* An out array of exactly maxout entries is not overrun (ASan checks). */
static void
test_nearest_exact_out_array(void **state)
{
	static const char *const cands[] = {"x", "y", "z", "w"};
	int		   *out = malloc(2 * sizeof(int));

	(void) state;
	assert_non_null(out);
	assert_int_equal(nearest("v", cands, lengthof(cands), out, 2), 2);
	assert_int_equal(out[0], 0);
	assert_int_equal(out[1], 1);
	free(out);
}

static void
test_nearest_none_within_threshold(void **state)
{
	static const char *const cands[] = {"alpha", "beta", "gamma"};
	int			out[4] = {-1, -1, -1, -1};

	(void) state;
	assert_int_equal(nearest("zzz", cands, lengthof(cands), out, 4), 0);
	assert_int_equal(out[0], -1);
	/* no candidates at all */
	assert_int_equal(nearest("alpha", cands, 0, out, 4), 0);
	assert_int_equal(out[0], -1);
}

/* The threshold follows the target's length. */
static void
test_nearest_threshold_by_target_length(void **state)
{
	static const char *const cands[] = {"abcd"};
	static const char *const cands8[] = {"abcdefghijk", "abcdefghijkl"};
	int			out[2] = {-1, -1};

	(void) state;
	/* "ab" (threshold 1): "abcd" is 2 away */
	assert_int_equal(nearest("ab", cands, 1, out, 2), 0);
	/* "abcdef" (threshold 2): "abcd" is 2 away */
	assert_int_equal(nearest("abcdef", cands, 1, out, 2), 1);
	assert_int_equal(out[0], 0);
	/* "abcdefgh" (threshold 3): 3 away yes, 4 away no */
	out[0] = -1;
	assert_int_equal(nearest("abcdefgh", cands8, 2, out, 2), 1);
	assert_int_equal(out[0], 0);
}

/* An exact (case-folded) match is its own nearest candidate. */
static void
test_nearest_exact_match(void **state)
{
	static const char *const cands[] = {"Foo", "foo", "fo"};
	int			out[3];

	(void) state;
	assert_int_equal(nearest("FOO", cands, 3, out, 3), 3);
	assert_int_equal(out[0], 0);
	assert_int_equal(out[1], 1);
	assert_int_equal(out[2], 2);
}

/* An empty target still has a threshold of 1. */
static void
test_nearest_empty_target(void **state)
{
	static const char *const cands[] = {"ab", "a", "", "b"};
	int			out[4];

	(void) state;
	assert_int_equal(nearest("", cands, 4, out, 4), 3);
	assert_int_equal(out[0], 2);
	assert_int_equal(out[1], 1);
	assert_int_equal(out[2], 3);
}

/* The target comes with its length: it need not be NUL-terminated. */
static void
test_nearest_target_not_terminated(void **state)
{
	static const char *const cands[] = {"order_id", "order", "orders"};
	char	   *buf = malloc(9);
	int			out[3];

	(void) state;
	assert_non_null(buf);
	memcpy(buf, "order_idx", 9);	/* no NUL */
	assert_int_equal(names_nearest(buf, 5, cands, 3, out, 3), 2);
	assert_int_equal(out[0], 1);	/* "order", 0 */
	assert_int_equal(out[1], 2);	/* "orders", 1 */
	/* "order_idx" (threshold 3): "orders" and "order" are both 4 away */
	assert_int_equal(names_nearest(buf, 9, cands, 3, out, 3), 1);
	assert_int_equal(out[0], 0);	/* "order_id", 1 */
	free(buf);
}

/* Over-long names on either side are never suggested. */
static void
test_nearest_too_long(void **state)
{
	char		longname[NAMES_MAX_LEN + 2];
	const char *cands[2];
	int			out[2] = {-1, -1};

	(void) state;
	memset(longname, 'n', sizeof(longname));
	longname[sizeof(longname) - 1] = '\0';
	cands[0] = longname;		/* NAMES_MAX_LEN + 1 */
	cands[1] = longname + 1;	/* NAMES_MAX_LEN */

	/* the candidate one byte too long is left out */
	assert_int_equal(names_nearest(longname + 1, NAMES_MAX_LEN, cands, 2,
								   out, 2), 1);
	assert_int_equal(out[0], 1);
	/* and so is everything for a target that is too long */
	out[0] = -1;
	assert_int_equal(names_nearest(longname, NAMES_MAX_LEN + 1, cands, 2,
								   out, 2), 0);
	assert_int_equal(out[0], -1);
}

/* C0 controls and DEL always count; C1 controls only in UTF-8 text. */
static void
test_has_control(void **state)
{
	(void) state;
	assert_false(names_has_control("reserve_item", true));
	assert_false(names_has_control("", true));
	assert_true(names_has_control("a\nb", false));
	assert_true(names_has_control("\x01", true));
	assert_true(names_has_control("ab\x1f", true));
	assert_true(names_has_control("a\x7f", false));
	/* U+0085 NEXT LINE and U+009F, the first and last C1 in UTF-8 */
	assert_true(names_has_control("next\xc2\x85line", true));
	assert_true(names_has_control("x\xc2\x80", true));
	assert_true(names_has_control("x\xc2\x9f", true));
	/* the same bytes are other characters in another encoding */
	assert_false(names_has_control("next\xc2\x85line", false));
	/* U+00A0 and U+00E9 are not controls, nor is a 0x85 continuation byte */
	assert_false(names_has_control("no\xc2\xa0" "break", true));
	assert_false(names_has_control("caf\xc3\xa9", true));
	assert_false(names_has_control("\xe2\x80\x85", true));
	/* a lone 0xC2 at the end is not read past */
	assert_false(names_has_control("x\xc2", true));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_distance_identical),
		cmocka_unit_test(test_distance_ignores_ascii_case),
		cmocka_unit_test(test_distance_non_ascii),
		cmocka_unit_test(test_distance_single_edits),
		cmocka_unit_test(test_distance_known_values),
		cmocka_unit_test(test_distance_cut_off),
		cmocka_unit_test(test_distance_cut_off_stops_reading),
		cmocka_unit_test(test_distance_length_difference),
		cmocka_unit_test(test_distance_uses_lengths),
		cmocka_unit_test(test_distance_empty),
		cmocka_unit_test(test_distance_too_long),
		cmocka_unit_test(test_threshold),
		cmocka_unit_test(test_nearest_best_first),
		cmocka_unit_test(test_nearest_ties_in_candidate_order),
		cmocka_unit_test(test_nearest_skips_null),
		cmocka_unit_test(test_nearest_all_null),
		cmocka_unit_test(test_nearest_maxout),
		cmocka_unit_test(test_nearest_exact_out_array),
		cmocka_unit_test(test_nearest_none_within_threshold),
		cmocka_unit_test(test_nearest_threshold_by_target_length),
		cmocka_unit_test(test_nearest_exact_match),
		cmocka_unit_test(test_nearest_empty_target),
		cmocka_unit_test(test_nearest_target_not_terminated),
		cmocka_unit_test(test_has_control),
		cmocka_unit_test(test_nearest_too_long),
	};

	return cmocka_run_group_tests_name("names", tests, NULL, NULL);
}
