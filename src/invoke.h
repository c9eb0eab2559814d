/*-------------------------------------------------------------------------
 *
 * invoke.h
 *	  Synchronous invocation of registered functions.
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_INVOKE_H
#define APIARY_INVOKE_H

#include "utils/jsonb.h"

/*
 * Run the function registered as name with args, in the current
 * transaction; with a key, at most once per key.  Returns the output as
 * jsonb, or (Datum) 0 with *isnull set.
 */
struct ApiaryFunction;
extern Datum apiary_call(struct ApiaryFunction *f, Jsonb *args, bool direct,
						 MemoryContext resultcxt, bool *isnull);
extern Datum apiary_invoke_internal(const char *name, Jsonb *args, text *key,
									bool own_subxact, bool *isnull);

/*
 * Whether the transaction itself is read-only (a read-only transaction, a
 * standby's), not the XactReadOnly a readonly function runs with.
 */
extern bool apiary_xact_read_only(void);
extern int	apiary_invoke_ordinal(void);

#endif							/* APIARY_INVOKE_H */
