/*-------------------------------------------------------------------------
 *
 * journal.h
 *	  The journal tables in schema apiary, written by apiary's C code as
 *	  their owner.
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_JOURNAL_H
#define APIARY_JOURNAL_H

#include "access/htup.h"
#include "executor/spi.h"
#include "storage/lock.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"
#include "utils/timestamp.h"

extern Oid	journal_namespace(void);

/*
 * Run one statement on the journal as its owner: sql with SPI's
 * execute_with_args, or a prepared plan when plan is not NULL.  Requires an
 * SPI connection; returns SPI's result code after checking it is expected.
 */
extern SPIPlanPtr journal_prepare(const char *sql, int nargs, Oid *argtypes);
extern int	journal_execute(const char *sql, SPIPlanPtr plan, int nargs,
							Oid *argtypes, Datum *values, const char *nulls,
							int expected);
/* The same with a snapshot taken now, whatever the isolation level. */
extern int	journal_execute_latest(const char *sql, int nargs, Oid *argtypes,
								   Datum *values, const char *nulls,
								   int expected);

/*
 * Lock (role, key) until the end of the (sub)transaction, or with to_commit
 * of the top transaction; marker tells apiary's uses of such locks apart.
 * The _to_commit functions take and release any lock so.
 */
extern void journal_lock(uint16 marker, Oid role, text *key, LOCKMODE mode,
						 bool to_commit);
extern bool journal_lock_to_commit(const LOCKTAG *tag, LOCKMODE mode, bool dont_wait);
extern void journal_unlock_to_commit(const LOCKTAG *tag, LOCKMODE mode);

/*
 * Keyed invocations.
 *
 * journal_claim locks (role, key) for the rest of the (sub)transaction,
 * waiting for any other transaction that holds it, and returns true when
 * the key is new: the caller runs the function and then calls
 * journal_record, in the same (sub)transaction.  When the key was already
 * used it returns false and sets *output to the recorded output, copied
 * into resultcxt.
 */
extern bool journal_claim(Oid role, text *key, const char *function,
						  Jsonb *args, MemoryContext resultcxt,
						  Datum *output, bool *output_isnull);
extern void journal_record(Oid role, text *key, const char *function,
						   Jsonb *args, text *parent_key,
						   TimestampTz started_at,
						   Datum output, bool output_isnull);

/*
 * apiary writes its tables directly, by column number: these check that a
 * table's columns are as it writes them, report how they differ, and form
 * a row of the first natts columns (NULL in dropped ones after them).
 */
extern int	journal_columns_differ(Oid relid, int natts);
extern void journal_report_columns(int elevel, Oid relid, int natts, int differ);
extern void journal_check_columns(Relation rel, int natts);
extern HeapTuple journal_form_tuple(Relation rel, int natts, Datum *values,
									bool *nulls);

#endif							/* APIARY_JOURNAL_H */
