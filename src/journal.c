/*-------------------------------------------------------------------------
 *
 * journal.c
 *	  Writing apiary's journal: keyed invocations, exactly once per key.
 *
 * Exactly once per key rests on the primary key of apiary.invocations.
 * A keyed call first inserts its row with ON CONFLICT DO NOTHING, in the
 * caller's (sub)transaction, before running the function:
 *
 *	- no conflict: the key is ours; run the function, store its output in
 *	  the same row; both commit or roll back with the function's effects.
 *	- the key is held by a transaction still in progress: the insert waits
 *	  for it (the speculative-insertion protocol of the unique index), then
 *	  either sees its committed row or, if it rolled back, inserts ours.
 *	- the key is committed: read the recorded output and return it, without
 *	  running anything.  A key recorded for another function or with other
 *	  arguments is an error.
 *
 * Under REPEATABLE READ or SERIALIZABLE a key committed by a transaction the
 * snapshot cannot see makes the insert fail with a serialization failure,
 * which is what such a client retries anyway.
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
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/syscache.h"
#include "utils/xid8.h"

#include "journal.h"

static SPIPlanPtr claim_plan = NULL;
static SPIPlanPtr lookup_plan = NULL;
static SPIPlanPtr finish_plan = NULL;

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
	if (claim_plan == NULL)
	{
		Oid			types[6] = {OIDOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID, XID8OID};

		claim_plan = prepare_kept(
								  "INSERT INTO apiary.invocations"
								  " (role, key, function, args, parent_key, xid, started_at)"
								  " VALUES ($1::pg_catalog.regrole, $2, $3, $4, $5, $6,"
								  " pg_catalog.clock_timestamp())"
								  " ON CONFLICT (role, key) DO NOTHING",
								  6, types);
	}
	if (lookup_plan == NULL)
	{
		Oid			types[2] = {OIDOID, TEXTOID};

		lookup_plan = prepare_kept(
								   "SELECT function, args, output, finished_at IS NOT NULL"
								   " FROM apiary.invocations"
								   " WHERE role OPERATOR(pg_catalog.=) $1::pg_catalog.regrole"
								   " AND key OPERATOR(pg_catalog.=) $2",
								   2, types);
	}
	if (finish_plan == NULL)
	{
		Oid			types[3] = {OIDOID, TEXTOID, JSONBOID};

		finish_plan = prepare_kept(
								   "UPDATE apiary.invocations"
								   " SET output = $3, finished_at = pg_catalog.clock_timestamp()"
								   " WHERE role OPERATOR(pg_catalog.=) $1::pg_catalog.regrole"
								   " AND key OPERATOR(pg_catalog.=) $2",
								   3, types);
	}
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
	bool		finished = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));

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
	if (!finished)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("key \"%s\" is already being executed by this transaction",
						text_to_cstring(key)),
				 errdetail("A keyed call cannot call itself with its own key.")));

	if (!*output_isnull)
	{
		MemoryContext old = MemoryContextSwitchTo(resultcxt);

		*output = datumCopy(out, false, -1);
		MemoryContextSwitchTo(old);
	}
}

bool
journal_claim(Oid role, text *key, const char *function, Jsonb *args,
			  text *parent_key, MemoryContext resultcxt,
			  Datum *output, bool *output_isnull)
{
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

	prepare_plans();
	values[0] = ObjectIdGetDatum(role);
	values[1] = PointerGetDatum(key);
	values[2] = CStringGetTextDatum(function);
	values[3] = JsonbPGetDatum(args);
	values[4] = PointerGetDatum(parent_key);
	if (parent_key == NULL)
		nulls[4] = 'n';
	values[5] = FullTransactionIdGetDatum(GetCurrentFullTransactionId());

	/*
	 * The row can vanish between a conflict and our read of it if its
	 * holder's transaction deletes it (retention, a cleanup); try again.
	 */
	for (;;)
	{
		journal_execute(NULL, claim_plan, 6, NULL, values, nulls, SPI_OK_INSERT);
		if (SPI_processed == 1)
			return true;
		journal_execute(NULL, lookup_plan, 2, NULL, values, nulls, SPI_OK_SELECT);
		if (SPI_processed == 1)
		{
			recorded_output(key, function, args, resultcxt,
							output, output_isnull);
			return false;
		}
		CHECK_FOR_INTERRUPTS();
	}
}

void
journal_finish(Oid role, text *key, Datum output, bool output_isnull)
{
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	prepare_plans();
	values[0] = ObjectIdGetDatum(role);
	values[1] = PointerGetDatum(key);
	values[2] = output;
	if (output_isnull)
		nulls[2] = 'n';
	journal_execute(NULL, finish_plan, 3, NULL, values, nulls, SPI_OK_UPDATE);
	if (SPI_processed != 1)
		elog(ERROR, "could not record the output of key \"%s\"",
			 text_to_cstring(key));
}
