/*-------------------------------------------------------------------------
 *
 * fuzz_bind.c
 *	  libFuzzer target over the pure C parts of argument binding:
 *	  src/bindrules.c (which JSON value binds which parameter) and
 *	  src/names.c (the "Perhaps you meant ..." suggestions).
 *
 * The fuzzer's bytes are decoded into a function signature and into the
 * shapes bind.c hands over once it has parsed the JSON arguments: the keys
 * of an object, the length of an array, a lone scalar.  Every entry point is
 * called, and every result is compared with a model written here from the
 * contracts in bindrules.h and names.h (a plain, unoptimized Levenshtein
 * distance; the binding rules spelled out key by key).  A difference, or a
 * result out of range, aborts with a message, which libFuzzer records as a
 * crash with its reproducer.  AddressSanitizer catches reads out of bounds:
 * every name, key and output array has its own heap block of the exact
 * size, and keys are not NUL-terminated, as in a jsonb value.
 *
 * Input layout.  Every input decodes: a read past the end yields zero.
 *
 *   nargs      1 byte, modulo BIND_MAX_PARAMS + 1
 *   ndefaults  1 byte, modulo nargs + 1
 *   flags      1 byte: bit 0 passes a NULL names array when no parameter
 *              is named; bits 1-2 are the maxout of names_nearest (0-3);
 *              bits 3-5 the max of the names_distance calls (0-7)
 *   names      per parameter, 1 byte: 0 = NULL, 1 = "", else named: 1
 *              length byte and that many bytes, cut at the first NUL
 *   nvalues    1 byte: the length of the array (0-255)
 *   nkeys      1 byte: the keys of the object (0-255), then per key 1 byte
 *              c: if c is even and a parameter is named, the name of a
 *              named parameter (the next byte picks which) with the edit
 *              (c >> 1) & 3 (none, replace, delete, insert: a position
 *              byte, and a byte for replace and insert) and, if c & 8, its
 *              ASCII case swapped; else 1 length byte and raw bytes (NULs
 *              included)
 *   mask       the rest: 1 byte, odd for a mask that starts with a prefix
 *              {0, ..., next byte % 129 - 1}; then one index per byte,
 *              modulo BIND_MAX_PARAMS
 *
 * Preconditions, as PostgreSQL and the JSON parser guarantee them to
 * bind.c: names of input parameters are unique (CREATE FUNCTION rejects a
 * name used twice, so a repeated name is made unnamed here), and the keys
 * of an object are unique (jsonb keeps one of duplicate keys; repeats are
 * dropped here).
 *
 * Build and run: see the Makefile here and test/scripts/fuzz.sh.
 *
 *-------------------------------------------------------------------------
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindrules.h"
#include "names.h"

/* Names may be longer than NAMES_MAX_LEN, to reach the cut-off. */
#define MAX_NAME_LEN 255
#define MAX_KEYS 255

/* ---------------------------------------------------------- reporting */

static void violated(const char *file, int line, const char *cond,
					 const char *fmt,...)
			__attribute__((noreturn, format(printf, 4, 5)));

static void
violated(const char *file, int line, const char *cond, const char *fmt,...)
{
	va_list		ap;

	fprintf(stderr, "\ninvariant violated at %s:%d: %s\n  ", file, line, cond);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	abort();
}

#define CHECK(cond, ...) \
	((cond) ? (void) 0 : violated(__FILE__, __LINE__, #cond, __VA_ARGS__))

/* ----------------------------------------------------------- decoding */

typedef struct Reader
{
	const uint8_t *p;
	size_t		left;
} Reader;

static uint8_t
next_byte(Reader *r)
{
	if (r->left == 0)
		return 0;
	r->left--;
	return *r->p++;
}

/* Up to n bytes into dst; returns how many there were. */
static size_t
next_bytes(Reader *r, uint8_t *dst, size_t n)
{
	if (n > r->left)
		n = r->left;
	memcpy(dst, r->p, n);
	r->p += n;
	r->left -= n;
	return n;
}

/*
 * A heap block holding exactly len bytes.  Under AddressSanitizer even
 * malloc(0) returns a block of its own, and any read of it is reported: the
 * blocks of this file are all of the exact size, empty ones included.
 */
static char *
copy_exact(const void *src, size_t len)
{
	char	   *p = malloc(len);

	if (p == NULL && len > 0)
		abort();
	memcpy(p, src, len);
	return p;
}

static char *
copy_string(const char *s, size_t len)
{
	char	   *p = malloc(len + 1);

	if (p == NULL)
		abort();
	memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

typedef struct Input
{
	int			nargs;
	int			ndefaults;
	bool		null_names;		/* pass names = NULL to bind_by_name */
	int			maxout;			/* for names_nearest */
	int			max;			/* for names_distance */
	char	  **names;			/* nargs entries, exactly */
	int			nnamed;
	int		   *named;			/* indexes of the named parameters */
	int			nvalues;
	int			nkeys;
	char	  **keys;			/* nkeys blocks of keylens[k] bytes */
	int		   *keylens;
	bool		maskbits[BIND_MAX_PARAMS];
} Input;

static bool
name_taken(const Input *in, int upto, const char *name)
{
	for (int i = 0; i < upto; i++)
		if (in->names[i] != NULL && strcmp(in->names[i], name) == 0)
			return true;
	return false;
}

static void
decode_names(Reader *r, Input *in)
{
	in->names = malloc(in->nargs * sizeof(char *));
	in->named = malloc(in->nargs * sizeof(int));
	in->nnamed = 0;
	for (int i = 0; i < in->nargs; i++)
	{
		uint8_t		kind = next_byte(r);
		uint8_t		buf[MAX_NAME_LEN];
		size_t		len;

		in->names[i] = NULL;
		if (kind == 0)
			continue;
		if (kind == 1)
		{
			in->names[i] = copy_string("", 0);
			continue;
		}
		len = next_bytes(r, buf, next_byte(r));
		len = strnlen((const char *) buf, len);
		in->names[i] = copy_string((const char *) buf, len);
		if (len == 0)
			continue;
		if (name_taken(in, i, in->names[i]))
		{
			/* a name used twice: CREATE FUNCTION would refuse it */
			free(in->names[i]);
			in->names[i] = NULL;
			continue;
		}
		in->named[in->nnamed++] = i;
	}
}

static char
swap_case(char c)
{
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 'A';
	if (c >= 'A' && c <= 'Z')
		return c - 'A' + 'a';
	return c;
}

/* One key, near a parameter's name or made of raw bytes, into buf. */
static size_t
decode_key(Reader *r, const Input *in, char *buf)
{
	uint8_t		c = next_byte(r);
	size_t		len;

	if ((c & 1) == 0 && in->nnamed > 0)
	{
		const char *name = in->names[in->named[next_byte(r) % in->nnamed]];
		size_t		pos;

		len = strlen(name);
		memcpy(buf, name, len);
		switch ((c >> 1) & 3)
		{
			case 0:
				break;
			case 1:				/* replace */
				pos = next_byte(r) % len;
				buf[pos] = (char) next_byte(r);
				break;
			case 2:				/* delete */
				pos = next_byte(r) % len;
				memmove(buf + pos, buf + pos + 1, len - pos - 1);
				len--;
				break;
			case 3:				/* insert */
				pos = next_byte(r) % (len + 1);
				memmove(buf + pos + 1, buf + pos, len - pos);
				buf[pos] = (char) next_byte(r);
				len++;
				break;
		}
		if (c & 8)
			for (size_t i = 0; i < len; i++)
				buf[i] = swap_case(buf[i]);
		return len;
	}
	return next_bytes(r, (uint8_t *) buf, next_byte(r));
}

static void
decode_keys(Reader *r, Input *in)
{
	int			want = next_byte(r);

	in->keys = malloc(want * sizeof(char *));
	in->keylens = malloc(want * sizeof(int));
	in->nkeys = 0;
	for (int k = 0; k < want; k++)
	{
		char		buf[MAX_NAME_LEN + 2];
		size_t		len = decode_key(r, in, buf);
		bool		repeat = false;

		for (int j = 0; j < in->nkeys && !repeat; j++)
			repeat = (size_t) in->keylens[j] == len &&
				memcmp(in->keys[j], buf, len) == 0;
		if (repeat)
			continue;
		in->keys[in->nkeys] = copy_exact(buf, len);
		in->keylens[in->nkeys] = (int) len;
		in->nkeys++;
	}
}

static void
decode_mask(Reader *r, Input *in)
{
	memset(in->maskbits, 0, sizeof(in->maskbits));
	if (next_byte(r) & 1)
	{
		int			n = next_byte(r) % (BIND_MAX_PARAMS + 1);

		for (int i = 0; i < n; i++)
			in->maskbits[i] = true;
	}
	while (r->left > 0)
		in->maskbits[next_byte(r) % BIND_MAX_PARAMS] = true;
}

static void
decode(const uint8_t *data, size_t size, Input *in)
{
	Reader		r = {data, size};
	uint8_t		flags;

	in->nargs = next_byte(&r) % (BIND_MAX_PARAMS + 1);
	in->ndefaults = next_byte(&r) % (in->nargs + 1);
	flags = next_byte(&r);
	in->null_names = flags & 1;
	in->maxout = (flags >> 1) & 3;
	in->max = (flags >> 3) & 7;
	decode_names(&r, in);
	in->nvalues = next_byte(&r);
	decode_keys(&r, in);
	decode_mask(&r, in);
}

static void
free_input(Input *in)
{
	for (int i = 0; i < in->nargs; i++)
		free(in->names[i]);
	for (int k = 0; k < in->nkeys; k++)
		free(in->keys[k]);
	free(in->names);
	free(in->named);
	free(in->keys);
	free(in->keylens);
}

/* ------------------------------------------------------------- models */

static inline int
fold(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c;
}

/*
 * Levenshtein distance ignoring ASCII case, with no limit on lengths.  Not
 * instrumented for coverage: the fuzzer learns nothing from the model, and
 * tracing its comparisons would take most of the time.
 */
__attribute__((noinline, no_sanitize("coverage")))
static int
ref_distance(const char *a, size_t alen, const char *b, size_t blen)
{
	int		   *prev = malloc((blen + 1) * sizeof(int));
	int		   *cur = malloc((blen + 1) * sizeof(int));
	int			d;

	for (size_t j = 0; j <= blen; j++)
		prev[j] = (int) j;
	for (size_t i = 1; i <= alen; i++)
	{
		int		   *t;

		cur[0] = (int) i;
		for (size_t j = 1; j <= blen; j++)
		{
			int			sub = prev[j - 1] +
				(fold((uint8_t) a[i - 1]) != fold((uint8_t) b[j - 1]));
			int			del = prev[j] + 1;
			int			ins = cur[j - 1] + 1;

			cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
		}
		t = prev;
		prev = cur;
		cur = t;
	}
	d = prev[blen];
	free(prev);
	free(cur);
	return d;
}

/* What names_distance must return, from its comment in names.h. */
static int
model_distance(const char *a, size_t alen, const char *b, size_t blen, int max)
{
	int			d;

	if (alen > NAMES_MAX_LEN || blen > NAMES_MAX_LEN)
		return max + 1;
	d = ref_distance(a, alen, b, blen);
	return d > max ? max + 1 : d;
}

static int
model_threshold(size_t len)
{
	return len <= 3 ? 1 : len <= 7 ? 2 : 3;
}

/* Does key k name parameter p exactly? */
static bool
key_names(const Input *in, int k, int p)
{
	const char *name = in->names[p];

	return name != NULL && name[0] != '\0' &&
		strlen(name) == (size_t) in->keylens[k] &&
		memcmp(name, in->keys[k], in->keylens[k]) == 0;
}

/* -------------------------------------------------------------- checks */

static void
check_distance(const char *a, size_t alen, const char *b, size_t blen, int max)
{
	int			want = model_distance(a, alen, b, blen, max);
	int			got = names_distance(a, alen, b, blen, max);
	int			back = names_distance(b, blen, a, alen, max);

	CHECK(got == want, "names_distance(%zu bytes, %zu bytes, max %d) = %d, "
		  "expected %d", alen, blen, max, got, want);
	CHECK(back == got, "names_distance is not symmetric: %d one way, %d the "
		  "other", got, back);
}

/*
 * names_nearest as bind.c calls it for an unknown key, with the signature's
 * names as candidates: best first, ties in candidate order, only within the
 * threshold, at most maxout, never a NULL candidate.
 */
static void
check_nearest(const Input *in, const char *target, size_t tlen)
{
	int			maxout = in->maxout;
	int		   *out = malloc(maxout * sizeof(int));
	int			want[3];
	int			nwant = 0;
	int			max = model_threshold(tlen);
	int			got;
	int		   *dist = malloc(in->nargs * sizeof(int));

	CHECK(names_threshold(tlen) == max, "names_threshold(%zu) = %d, "
		  "expected %d", tlen, names_threshold(tlen), max);

	for (int c = 0; c < in->nargs; c++)
		dist[c] = in->names[c] == NULL ? max + 1 :
			model_distance(target, tlen, in->names[c], strlen(in->names[c]),
						   max);
	for (int d = 0; d <= max; d++)
		for (int c = 0; c < in->nargs && nwant < maxout; c++)
			if (dist[c] == d)
				want[nwant++] = c;

	got = names_nearest(target, tlen, (const char *const *) in->names,
						in->nargs, out, maxout);
	CHECK(got >= 0 && got <= maxout, "names_nearest returned %d for maxout "
		  "%d", got, maxout);
	for (int i = 0; i < got; i++)
	{
		CHECK(out[i] >= 0 && out[i] < in->nargs, "suggestion %d is index %d "
			  "of %d candidates", i, out[i], in->nargs);
		CHECK(in->names[out[i]] != NULL, "suggested the NULL candidate %d",
			  out[i]);
		CHECK(dist[out[i]] <= max, "suggested candidate %d at distance %d, "
			  "beyond the threshold %d for a %zu-byte name", out[i],
			  dist[out[i]], max, tlen);
		CHECK(i == 0 || dist[out[i - 1]] < dist[out[i]] ||
			  (dist[out[i - 1]] == dist[out[i]] && out[i - 1] < out[i]),
			  "suggestions %d and %d are out of order", out[i - 1], out[i]);
	}
	CHECK(got == nwant, "names_nearest found %d candidates, expected %d",
		  got, nwant);
	for (int i = 0; i < got; i++)
		CHECK(out[i] == want[i], "suggestion %d is candidate %d, expected %d",
			  i, out[i], want[i]);
	free(dist);
	free(out);
}

static void
check_by_name(const Input *in)
{
	BindSignature sig = {in->nargs,
		(in->null_names && in->nnamed == 0) ? NULL :
		(const char *const *) in->names, in->ndefaults};
	int			required = in->nargs - in->ndefaults;
	int		   *slot = malloc(in->nkeys * sizeof(int));
	bool		bound[BIND_MAX_PARAMS] = {false};
	BindError	want = BIND_OK;
	int			want_bad = -1;
	BindMask	mask;
	BindError	err;
	int			bad = -1;

	/* the model: the first key that names no parameter, else ... */
	for (int k = 0; k < in->nkeys && want == BIND_OK; k++)
	{
		int			p;

		for (p = 0; p < in->nargs && !key_names(in, k, p); p++)
			;
		if (p == in->nargs)
		{
			want = BIND_UNKNOWN_NAME;
			want_bad = k;
		}
		else
			bound[p] = true;
	}
	/* ... the first required parameter that got no value */
	for (int i = 0; i < required && want == BIND_OK; i++)
		if (!bound[i])
		{
			want = BIND_MISSING;
			want_bad = i;
		}

	for (int k = 0; k < in->nkeys; k++)
		slot[k] = -1;
	err = bind_by_name(&sig, in->nkeys, (const char *const *) in->keys,
					   in->keylens, slot, &mask, &bad);
	CHECK(err == want, "bind_by_name returned %d, expected %d (%d keys, %d "
		  "parameters, %d defaults)", err, want, in->nkeys, in->nargs,
		  in->ndefaults);
	if (err == BIND_UNKNOWN_NAME)
		CHECK(bad == want_bad && bad >= 0 && bad < in->nkeys,
			  "unknown key reported as %d of %d, expected %d", bad,
			  in->nkeys, want_bad);
	if (err == BIND_MISSING)
		CHECK(bad == want_bad && bad >= 0 && bad < required &&
			  !bind_mask_test(&mask, bad),
			  "missing parameter reported as %d of %d required, expected %d",
			  bad, required, want_bad);

	if (err == BIND_OK)
	{
		bool		seen[BIND_MAX_PARAMS] = {false};
		int			n;

		/* each key binds the parameter it names, and no two keys the same */
		for (int k = 0; k < in->nkeys; k++)
		{
			CHECK(slot[k] >= 0 && slot[k] < in->nargs, "key %d bound to "
				  "parameter %d of %d", k, slot[k], in->nargs);
			CHECK(key_names(in, k, slot[k]), "key %d bound to parameter %d, "
				  "which it does not name", k, slot[k]);
			CHECK(!seen[slot[k]], "parameter %d bound twice", slot[k]);
			seen[slot[k]] = true;
		}
		/* the mask holds exactly the bound parameters */
		for (int i = 0; i < BIND_MAX_PARAMS; i++)
			CHECK(bind_mask_test(&mask, i) == seen[i], "mask has parameter "
				  "%d: %d, bound: %d", i, bind_mask_test(&mask, i), seen[i]);
		for (int i = 0; i < required; i++)
			CHECK(seen[i], "required parameter %d left without a value", i);
		/* a prefix mask is exactly keys naming parameters 0..n-1 */
		if (bind_mask_is_prefix(&mask, &n))
			CHECK(n == in->nkeys, "prefix mask of %d for %d keys", n,
				  in->nkeys);
		else
			CHECK(in->nkeys > 0, "mask of no key is not a prefix");
	}

	/* the hint for an unknown key, and a few other keys as targets */
	if (err == BIND_UNKNOWN_NAME)
		check_nearest(in, in->keys[bad], in->keylens[bad]);
	for (int k = 0; k < in->nkeys && k < 2; k++)
		check_nearest(in, in->keys[k], in->keylens[k]);
	free(slot);
}

static void
check_by_position(const Input *in)
{
	int			required = in->nargs - in->ndefaults;
	BindMask	mask;
	BindError	err;
	int			bad = -1;
	int			n = -1;

	err = bind_by_position(&(BindSignature)
						   {in->nargs, (const char *const *) in->names,
							in->ndefaults}, in->nvalues, &mask, &bad);
	if (in->nvalues > in->nargs)
	{
		CHECK(err == BIND_TOO_MANY, "%d values for %d parameters gave %d",
			  in->nvalues, in->nargs, err);
		/* the first value without a parameter */
		CHECK(bad == in->nargs, "too many values reported at %d, for %d "
			  "parameters", bad, in->nargs);
		return;
	}
	for (int i = 0; i < BIND_MAX_PARAMS; i++)
		CHECK(bind_mask_test(&mask, i) == (i < in->nvalues), "mask of %d "
			  "values has parameter %d: %d", in->nvalues, i,
			  bind_mask_test(&mask, i));
	CHECK(bind_mask_is_prefix(&mask, &n) && n == in->nvalues,
		  "mask of %d values is not that prefix (n = %d)", in->nvalues, n);
	if (in->nvalues < required)
		CHECK(err == BIND_MISSING && bad == in->nvalues, "%d values for %d "
			  "required parameters gave %d, bad %d", in->nvalues, required,
			  err, bad);
	else
		CHECK(err == BIND_OK, "%d values for %d parameters, %d required, "
			  "gave %d", in->nvalues, in->nargs, required, err);
}

static void
check_scalar(const Input *in)
{
	BindSignature sig = {in->nargs, (const char *const *) in->names,
	in->ndefaults};
	BindMask	mask;
	BindError	err;
	int			bad = -1;

	err = bind_scalar(&sig, &mask, &bad);
	if (in->nargs >= 1 && in->nargs - in->ndefaults <= 1)
	{
		CHECK(err == BIND_OK, "scalar for %d parameters, %d defaults, "
			  "gave %d", in->nargs, in->ndefaults, err);
		for (int i = 0; i < BIND_MAX_PARAMS; i++)
			CHECK(bind_mask_test(&mask, i) == (i == 0), "scalar mask has "
				  "parameter %d: %d", i, bind_mask_test(&mask, i));
	}
	else
		CHECK(err == BIND_SCALAR_AMBIGUOUS && bad == 0, "scalar for %d "
			  "parameters, %d defaults, gave %d, bad %d", in->nargs,
			  in->ndefaults, err, bad);
}

static void
check_masks(const Input *in)
{
	BindMask	m;
	BindMask	copy;
	BindMask	empty;
	int			prefix = 0;
	bool		is_prefix = true;
	int			n = -1;

	bind_mask_clear(&m);
	bind_mask_clear(&empty);
	for (int i = 0; i < BIND_MAX_PARAMS; i++)
		CHECK(!bind_mask_test(&m, i), "cleared mask has %d", i);
	for (int i = 0; i < BIND_MAX_PARAMS; i++)
		if (in->maskbits[i])
			bind_mask_set(&m, i);
	for (int i = 0; i < BIND_MAX_PARAMS; i++)
		CHECK(bind_mask_test(&m, i) == in->maskbits[i], "mask has %d: %d, "
			  "set: %d", i, bind_mask_test(&m, i), in->maskbits[i]);

	while (prefix < BIND_MAX_PARAMS && in->maskbits[prefix])
		prefix++;
	for (int i = prefix; i < BIND_MAX_PARAMS; i++)
		if (in->maskbits[i])
			is_prefix = false;
	CHECK(bind_mask_is_prefix(&m, &n) == is_prefix, "is_prefix says %d, "
		  "expected %d", !is_prefix, is_prefix);
	if (is_prefix)
		CHECK(n == prefix, "prefix of %d reported as %d", prefix, n);

	/* equal: to itself, to a copy, and not after any one bit changes */
	copy = m;
	CHECK(bind_mask_equal(&m, &m) && bind_mask_equal(&m, &copy),
		  "mask not equal to its copy");
	for (int i = 0; i < BIND_MAX_PARAMS; i++)
	{
		BindMask	other;

		if (in->maskbits[i])
			continue;
		other = m;
		bind_mask_set(&other, i);
		CHECK(!bind_mask_equal(&m, &other) && !bind_mask_equal(&other, &m),
			  "masks differing in %d compare equal", i);
		CHECK(bind_mask_test(&other, i), "set %d did not stick", i);
		break;
	}
	bind_mask_clear(&copy);
	CHECK(bind_mask_equal(&copy, &empty), "cleared mask not empty");
}

/* Distances between the keys and the names, at the decoded max. */
static void
check_distances(const Input *in)
{
	for (int k = 0; k < in->nkeys && k < 2; k++)
	{
		check_distance(in->keys[k], in->keylens[k], in->keys[k],
					   in->keylens[k], in->max);
		for (int p = 0; p < in->nargs && p < 8; p++)
			if (in->names[p] != NULL)
				check_distance(in->keys[k], in->keylens[k], in->names[p],
							   strlen(in->names[p]), in->max);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Input		in;

	decode(data, size, &in);
	check_by_name(&in);
	check_by_position(&in);
	check_scalar(&in);
	check_masks(&in);
	check_distances(&in);
	free_input(&in);
	return 0;
}
