/*-------------------------------------------------------------------------
 *
 * names.h
 *	  Edit distance between names, for "did you mean" hints.  Pure C.
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_NAMES_H
#define APIARY_NAMES_H

#include <stdbool.h>
#include <stddef.h>

/* Names longer than this are never suggested nor compared. */
#define NAMES_MAX_LEN 127

/*
 * Levenshtein distance between a and b, ignoring ASCII case; any result
 * greater than max is reported as max + 1.
 */
extern int	names_distance(const char *a, size_t alen,
						   const char *b, size_t blen, int max);

/* How far a candidate may be from target to be worth suggesting. */
extern int	names_threshold(size_t target_len);

/*
 * Indexes of the candidates nearest to target (within names_threshold),
 * best first, ties in candidate order; returns how many were written to out
 * (at most maxout).
 */
extern int	names_nearest(const char *target, size_t target_len,
						  const char *const *candidates, int ncandidates,
						  int *out, int maxout);

/*
 * Whether name holds a control character: C0 or DEL, and, in UTF-8 text,
 * C1 (U+0080 to U+009F).
 */
extern bool names_has_control(const char *name, bool utf8);

#endif							/* APIARY_NAMES_H */
