/*-------------------------------------------------------------------------
 *
 * bindrules.c
 *	  apiary's calling convention, as pure logic.
 *
 * A JSON object binds parameters by name, a JSON array by position, and any
 * other JSON value binds a function that takes a single parameter.  Target
 * function defaults apply to whatever is left out; a parameter without a
 * default that gets no value is an error, and so is a key that names no
 * parameter or an array longer than the parameter list.
 *
 * The result is a mask of the parameters that received a value: bind.c
 * builds (and caches) one call statement per distinct mask, so that the
 * function's own defaults are filled in by the planner.
 *
 * This file must not call palloc or ereport: it is compiled into the cmocka
 * unit tests as it is.
 *
 *-------------------------------------------------------------------------
 */
#include <string.h>

#include "bindrules.h"

void
bind_mask_clear(BindMask *mask)
{
	memset(mask, 0, sizeof(*mask));
}

void
bind_mask_set(BindMask *mask, int i)
{
	mask->bits[i / 64] |= UINT64_C(1) << (i % 64);
}

bool
bind_mask_test(const BindMask *mask, int i)
{
	return (mask->bits[i / 64] & (UINT64_C(1) << (i % 64))) != 0;
}

bool
bind_mask_equal(const BindMask *a, const BindMask *b)
{
	return memcmp(a, b, sizeof(*a)) == 0;
}

/*
 * Is the mask {0, ..., n-1} for some n?  Such a call can be written in
 * positional notation, which works for unnamed parameters too.
 */
bool
bind_mask_is_prefix(const BindMask *mask, int *n)
{
	int			count = 0;

	while (count < BIND_MAX_PARAMS && bind_mask_test(mask, count))
		count++;
	for (int i = count; i < BIND_MAX_PARAMS; i++)
		if (bind_mask_test(mask, i))
			return false;
	*n = count;
	return true;
}

/* Every parameter without a default must have been given a value. */
static BindError
check_missing(const BindSignature *sig, const BindMask *mask, int *bad)
{
	int			required = sig->nargs - sig->ndefaults;

	for (int i = 0; i < required; i++)
	{
		if (!bind_mask_test(mask, i))
		{
			*bad = i;
			return BIND_MISSING;
		}
	}
	return BIND_OK;
}

BindError
bind_by_name(const BindSignature *sig, int nkeys, const char *const *keys,
			 const int *keylens, int *slot, BindMask *mask, int *bad)
{
	bind_mask_clear(mask);
	for (int k = 0; k < nkeys; k++)
	{
		int			found = -1;

		for (int p = 0; p < sig->nargs; p++)
		{
			const char *name = sig->names ? sig->names[p] : NULL;

			if (name && name[0] != '\0' &&
				strlen(name) == (size_t) keylens[k] &&
				memcmp(name, keys[k], keylens[k]) == 0)
			{
				found = p;
				break;
			}
		}
		/* JSON objects have unique keys, so a parameter binds at most once */
		if (found < 0)
		{
			*bad = k;
			return BIND_UNKNOWN_NAME;
		}
		slot[k] = found;
		bind_mask_set(mask, found);
	}
	return check_missing(sig, mask, bad);
}

BindError
bind_by_position(const BindSignature *sig, int nvalues, BindMask *mask,
				 int *bad)
{
	bind_mask_clear(mask);
	if (nvalues > sig->nargs)
	{
		*bad = sig->nargs;
		return BIND_TOO_MANY;
	}
	for (int i = 0; i < nvalues; i++)
		bind_mask_set(mask, i);
	return check_missing(sig, mask, bad);
}

BindError
bind_scalar(const BindSignature *sig, BindMask *mask, int *bad)
{
	bind_mask_clear(mask);

	/*
	 * One parameter, or one required parameter followed by defaults: the
	 * value can only mean the first.
	 */
	if (sig->nargs < 1 || sig->nargs - sig->ndefaults > 1)
	{
		*bad = 0;
		return BIND_SCALAR_AMBIGUOUS;
	}
	bind_mask_set(mask, 0);
	return BIND_OK;
}
