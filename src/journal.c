/*-------------------------------------------------------------------------
 *
 * journal.c
 *	  Writing apiary's journal: keyed invocations, exactly once per key.
 *
 * Exactly once per key rests on a lock and the primary key of
 * apiary.invocations.  A keyed call first takes a transaction-scoped lock on
 * (role, key) — an advisory lock on a hash of the two, so unrelated keys
 * rarely meet — and then looks the key up:
 *
 *	- not found: the key is ours; run the function, then insert the row with
 *	  its output.  The row commits or rolls back with the function's effects,
 *	  and the lock is held until then.
 *	- another transaction holds the key: taking the lock waits for it to
 *	  end; the lookup that follows, on a fresh snapshot, then finds its
 *	  committed row or, if it rolled back, nothing, and we run the function.
 *	- found: return the recorded output, without running anything.  A key
 *	  recorded for another function or with other arguments is an error.
 *
 * Under REPEATABLE READ or SERIALIZABLE the snapshot cannot see a key
 * committed after it was taken; the insert then meets the committed row and
 * fails with a serialization failure, rolling back the second execution
 * with the rest of the transaction, which is what such a client retries
 * anyway.  The primary key stays the final arbiter either way.
 *
 * Inserting once, after the function, rather than claiming with an insert
 * and filling in the output with an update, halves the journal's writes.
 *
 * Users have no privileges on the journal tables; this file's statements
 * run as the owner of schema apiary (the extension's owner), with fixed SQL
 * text and the user's values passed only as parameters.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/syscache.h"
#include "utils/xid8.h"

#include "journal.h"

static SPIPlanPtr lookup_plan = NULL;
static SPIPlanPtr record_plan = NULL;

/* Marks apiary's advisory locks in pg_locks (objsubid); core uses 1 and 2. */
#define KEY_LOCK_MARKER 0x4150


Oid
journal_namespace(void)
{
	Oid			nsp = get_namespace_oid("apiary", true);

	if (!OidIsValid(nsp))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("schema \"apiary\" does not exist"),
				 errhint("Run CREATE EXTENSION apiary in this database.")));
	return nsp;
}

/*
 * Switch to the journal's owner for statements on the journal.  The switch
 * is undone by journal_restore_user, and by (sub)transaction abort should an
 * error come first.
 */
void
journal_become_owner(JournalUser *save)
{
	Oid			nsp = journal_namespace();
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for namespace %u", nsp);
	owner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
	ReleaseSysCache(tup);

	GetUserIdAndSecContext(&save->saved_user, &save->saved_sec_context);
	SetUserIdAndSecContext(owner,
						   save->saved_sec_context | SECURITY_LOCAL_USERID_CHANGE);
}

void
journal_restore_user(const JournalUser *save)
{
	SetUserIdAndSecContext(save->saved_user, save->saved_sec_context);
}

int
journal_execute(const char *sql, SPIPlanPtr plan, int nargs, Oid *argtypes,
				Datum *values, const char *nulls, int expected)
{
	JournalUser save;
	int			rc;

	journal_become_owner(&save);
	PG_TRY();
	{
		if (plan != NULL)
			rc = SPI_execute_plan(plan, values, nulls, false, 0);
		else
			rc = SPI_execute_with_args(sql, nargs, argtypes, values, nulls,
									   false, 0);
	}
	PG_FINALLY();
	{
		journal_restore_user(&save);
	}
	PG_END_TRY();

	if (rc != expected)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(rc));
	return rc;
}

static SPIPlanPtr
prepare_kept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

static void
prepare_plans(void)
{
	if (lookup_plan == NULL)
	{
		Oid			types[2] = {OIDOID, TEXTOID};

		lookup_plan = prepare_kept(
								   "SELECT function, args, output"
								   " FROM apiary.invocations"
								   " WHERE role OPERATOR(pg_catalog.=) $1::pg_catalog.regrole"
								   " AND key OPERATOR(pg_catalog.=) $2",
								   2, types);
	}
	if (record_plan == NULL)
	{
		Oid			types[8] = {OIDOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID,
		TEXTOID, XID8OID, TIMESTAMPTZOID};

		record_plan = prepare_kept(
								   "INSERT INTO apiary.invocations"
								   " (role, key, function, args, output, parent_key, xid,"
								   "  started_at, finished_at)"
								   " VALUES ($1::pg_catalog.regrole, $2, $3, $4, $5, $6, $7, $8,"
								   " pg_catalog.clock_timestamp())"
								   " ON CONFLICT (role, key) DO NOTHING",
								   8, types);
	}
}

/*
 * Lock (role, key) until the end of the (sub)transaction, waiting for any
 * other transaction that holds it.
 */
static void
lock_key(Oid role, text *key)
{
	uint64		h = hash_bytes_extended((const unsigned char *) VARDATA_ANY(key),
										VARSIZE_ANY_EXHDR(key), role);
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 KEY_LOCK_MARKER);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/* Return the recorded output for a key, after checking it is the same call. */
static void
recorded_output(text *key, const char *function, Jsonb *args,
				MemoryContext resultcxt, Datum *output, bool *output_isnull)
{
	HeapTuple	tup = SPI_tuptable->vals[0];
	TupleDesc	desc = SPI_tuptable->tupdesc;
	bool		isnull;
	char	   *recorded_fn = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
	Datum		recorded_args = SPI_getbinval(tup, desc, 2, &isnull);
	Datum		out = SPI_getbinval(tup, desc, 3, output_isnull);

	if (strcmp(recorded_fn, function) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("key \"%s\" was already used to call \"%s\"",
						text_to_cstring(key), recorded_fn),
				 errdetail("A key identifies one call: the same function with the same arguments."),
				 errhint("Use a new key for a different call.")));
	if (!DatumGetBool(DirectFunctionCall2(jsonb_eq, recorded_args,
										  JsonbPGetDatum(args))))
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("key \"%s\" was already used to call \"%s\" with other arguments",
						text_to_cstring(key), function),
				 errdetail("The recorded arguments are %s.",
						   JsonbToCString(NULL, &DatumGetJsonbP(recorded_args)->root, 0)),
				 errhint("Use a new key for a different call.")));
	if (!*output_isnull)
	{
		MemoryContext old = MemoryContextSwitchTo(resultcxt);

		*output = datumCopy(out, false, -1);
		MemoryContextSwitchTo(old);
	}
}

bool
journal_claim(Oid role, text *key, const char *function, Jsonb *args,
			  MemoryContext resultcxt, Datum *output, bool *output_isnull)
{
	Datum		values[2] = {ObjectIdGetDatum(role), PointerGetDatum(key)};

	prepare_plans();
	lock_key(role, key);
	journal_execute(NULL, lookup_plan, 2, NULL, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return true;
	recorded_output(key, function, args, resultcxt, output, output_isnull);
	return false;
}

void
journal_record(Oid role, text *key, const char *function, Jsonb *args,
			   text *parent_key, TimestampTz started_at,
			   Datum output, bool output_isnull)
{
	Datum		values[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	prepare_plans();
	values[0] = ObjectIdGetDatum(role);
	values[1] = PointerGetDatum(key);
	values[2] = CStringGetTextDatum(function);
	values[3] = JsonbPGetDatum(args);
	values[4] = output;
	if (output_isnull)
		nulls[4] = 'n';
	values[5] = PointerGetDatum(parent_key);
	if (parent_key == NULL)
		nulls[5] = 'n';
	values[6] = FullTransactionIdGetDatum(GetCurrentFullTransactionId());
	values[7] = TimestampTzGetDatum(started_at);

	journal_execute(NULL, record_plan, 8, NULL, values, nulls, SPI_OK_INSERT);

	/* only a writer that bypassed the key lock can get here first */
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not record key \"%s\": it was recorded concurrently",
						text_to_cstring(key))));
}
