/*-------------------------------------------------------------------------
 *
 * bindrules.h
 *	  Which JSON value binds which parameter: the rules of apiary's calling
 *	  convention, free of any PostgreSQL dependency so they can be unit
 *	  tested on their own.
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_BINDRULES_H
#define APIARY_BINDRULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* PostgreSQL's FUNC_MAX_ARGS is 100: two words hold a set of parameters. */
#define BIND_MAX_PARAMS 128

typedef struct BindMask
{
	uint64_t	bits[BIND_MAX_PARAMS / 64];
} BindMask;

/* The input parameters of a function, as the binding rules see them. */
typedef struct BindSignature
{
	int			nargs;			/* number of input parameters */
	const char *const *names;	/* nargs names; NULL or "" when unnamed */
	int			ndefaults;		/* how many trailing parameters have defaults */
} BindSignature;

typedef enum BindError
{
	BIND_OK = 0,
	BIND_UNKNOWN_NAME,			/* a key names no parameter; *bad = key index */
	BIND_MISSING,				/* a parameter without default got no value;
								 * *bad = parameter index */
	BIND_TOO_MANY,				/* an array has more elements than parameters */
	BIND_SCALAR_AMBIGUOUS,		/* a scalar, but not exactly one parameter to
								 * bind it to */
} BindError;

extern void bind_mask_clear(BindMask *mask);
extern void bind_mask_set(BindMask *mask, int i);
extern bool bind_mask_test(const BindMask *mask, int i);
extern bool bind_mask_equal(const BindMask *a, const BindMask *b);
extern bool bind_mask_is_prefix(const BindMask *mask, int *n);

/*
 * Bind the keys of a JSON object by parameter name.  slot[i] receives the
 * parameter index that keys[i] (keylens[i] bytes, not terminated) binds.
 */
extern BindError bind_by_name(const BindSignature *sig, int nkeys,
							  const char *const *keys, const int *keylens,
							  int *slot, BindMask *mask, int *bad);

/* Bind the first nvalues parameters by position (a JSON array). */
extern BindError bind_by_position(const BindSignature *sig, int nvalues,
								  BindMask *mask, int *bad);

/* Bind a lone scalar to the function's only (required) parameter. */
extern BindError bind_scalar(const BindSignature *sig, BindMask *mask,
							 int *bad);

#endif							/* APIARY_BINDRULES_H */
