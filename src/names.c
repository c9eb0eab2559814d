/*-------------------------------------------------------------------------
 *
 * names.c
 *	  Edit distance between names, for the hints of "does not exist" errors
 *	  (as core's "Perhaps you meant to reference the column ...").
 *
 * Pure C with no allocation: the unit tests compile it as it is.
 *
 *-------------------------------------------------------------------------
 */
#include <string.h>

#include "names.h"

static int
fold(char c)
{
	return (c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : (unsigned char) c;
}

int
names_distance(const char *a, size_t alen, const char *b, size_t blen,
			   int max)
{
	int			row[NAMES_MAX_LEN + 1];

	if (alen > NAMES_MAX_LEN || blen > NAMES_MAX_LEN)
		return max + 1;
	if ((alen > blen ? alen - blen : blen - alen) > (size_t) max)
		return max + 1;

	for (size_t j = 0; j <= blen; j++)
		row[j] = (int) j;
	for (size_t i = 1; i <= alen; i++)
	{
		int			diag = row[0];
		int			best = (int) i;

		row[0] = (int) i;
		for (size_t j = 1; j <= blen; j++)
		{
			int			up = row[j];
			int			cost = fold(a[i - 1]) == fold(b[j - 1]) ? 0 : 1;
			int			d = diag + cost;

			if (up + 1 < d)
				d = up + 1;
			if (row[j - 1] + 1 < d)
				d = row[j - 1] + 1;
			row[j] = d;
			diag = up;
			if (d < best)
				best = d;
		}
		if (best > max)
			return max + 1;
	}
	return row[blen] > max ? max + 1 : row[blen];
}

int
names_threshold(size_t target_len)
{
	if (target_len <= 3)
		return 1;
	if (target_len <= 7)
		return 2;
	return 3;
}

int
names_nearest(const char *target, size_t target_len,
			  const char *const *candidates, int ncandidates,
			  int *out, int maxout)
{
	int			max = names_threshold(target_len);
	int			n = 0;

	/* Collect by increasing distance: few candidates, few distances. */
	for (int d = 0; d <= max && n < maxout; d++)
	{
		for (int c = 0; c < ncandidates && n < maxout; c++)
		{
			const char *cand = candidates[c];

			if (cand != NULL &&
				names_distance(target, target_len, cand, strlen(cand), max) == d)
				out[n++] = c;
		}
	}
	return n;
}

bool
names_has_control(const char *name, bool utf8)
{
	for (const unsigned char *c = (const unsigned char *) name; *c != '\0'; c++)
	{
		if (*c < 0x20 || *c == 0x7f)
			return true;
		/* U+0080 to U+009F are 0xC2 0x80 to 0xC2 0x9F in UTF-8 */
		if (utf8 && c[0] == 0xc2 && c[1] >= 0x80 && c[1] <= 0x9f)
			return true;
	}
	return false;
}
