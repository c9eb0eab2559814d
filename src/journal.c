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
 * committed after it was taken: a second look with the latest snapshot
 * finds it, and the call fails with a serialization failure before running
 * anything, which is what such a client retries anyway.  The primary key
 * stays the final arbiter either way.
 *
 * The row is written once, after the function returns, and the journal is
 * read and written through its index and heap directly: this is the hot
 * path of every keyed call.
 *
 * Users have no privileges on the journal tables.  apiary writes them on
 * the users' behalf: keyed calls by direct heap access, the registry
 * (registry.c) through journal_execute, which runs fixed SQL text, with the
 * user's values only as parameters, as the owner of schema apiary.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/syscache.h"
#include "utils/xid8.h"

#include "journal.h"

/* Marks apiary's advisory locks in pg_locks (objsubid); core uses 1 and 2. */
#define KEY_LOCK_MARKER 0x4150

/* Columns of apiary.invocations, in table order. */
enum
{
	INV_ROLE = 1,
	INV_KEY,
	INV_FUNCTION,
	INV_ARGS,
	INV_OUTPUT,
	INV_PARENT_KEY,
	INV_XID,
	INV_STARTED_AT,
	INV_FINISHED_AT,
	INV_NATTS = INV_FINISHED_AT
};


/* Saved identity while running the journal's own SQL as its owner. */
typedef struct JournalUser
{
	Oid			saved_user;
	int			saved_sec_context;
} JournalUser;

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
static void
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

static void
journal_restore_user(const JournalUser *save)
{
	SetUserIdAndSecContext(save->saved_user, save->saved_sec_context);
}

/*
 * The search_path of apiary's own statements, which run as the journal's
 * owner: whatever the caller's, no object of another schema may stand in
 * for one of pg_catalog's.  They name everything else by its schema, and
 * spell their operators OPERATOR(pg_catalog.=), but a few constructs (IS
 * DISTINCT FROM, IN, CASE) look theirs up by name, and so would any
 * function of apiary's that does not set its own search_path.  Names they
 * compare with the registry's (pg_identify_object) are unquoted, as it
 * keeps them, whatever the caller's quote_all_identifiers.
 */
static int
pin_search_path(void)
{
	int			nestlevel = NewGUCNestLevel();

	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("quote_all_identifiers", "off", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	return nestlevel;
}

/*
 * Run one statement on the journal as its owner, with its search_path
 * pinned.  It is planned with enable_seqscan off: the journal's tables
 * start empty, and a kept plan made then (a sequential scan) would stay
 * until the next ANALYZE while the table grows.  Every lookup here has an index.  The settings are undone before
 * returning, so user functions never see them.
 */
static int
execute_as_owner(const char *sql, SPIPlanPtr plan, int nargs, Oid *argtypes,
				 Datum *values, const char *nulls, int expected, bool latest)
{
	JournalUser save;
	int			nestlevel = pin_search_path();
	int			rc;

	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	/* a scan with no index then costs "disabled": never worth a JIT */
	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	journal_become_owner(&save);
	PG_TRY();
	{
		if (latest)
		{
			SPIPlanPtr	p = SPI_prepare(sql, nargs, argtypes);

			if (p == NULL)
				elog(ERROR, "SPI_prepare failed for \"%s\": %s",
					 sql, SPI_result_code_string(SPI_result));
			rc = SPI_execute_snapshot(p, values, nulls, GetLatestSnapshot(),
									  InvalidSnapshot, false, true, 0);
			SPI_freeplan(p);
		}
		else if (plan != NULL)
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
	AtEOXact_GUC(true, nestlevel);

	if (rc != expected)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(rc));
	return rc;
}

int
journal_execute(const char *sql, SPIPlanPtr plan, int nargs, Oid *argtypes,
				Datum *values, const char *nulls, int expected)
{
	return execute_as_owner(sql, plan, nargs, argtypes, values, nulls, expected, false);
}

/*
 * journal_execute for a statement that must see every row committed
 * before it, under REPEATABLE READ and SERIALIZABLE too, whose snapshot
 * may be older: it runs with a snapshot taken now.
 */
int
journal_execute_latest(const char *sql, int nargs, Oid *argtypes,
					   Datum *values, const char *nulls, int expected)
{
	return execute_as_owner(sql, NULL, nargs, argtypes, values, nulls, expected, true);
}

/* A plan kept for the life of the backend, to run with journal_execute. */
SPIPlanPtr
journal_prepare(const char *sql, int nargs, Oid *argtypes)
{
	int			nestlevel = pin_search_path();
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	AtEOXact_GUC(true, nestlevel);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * Lock (role, key) in mode, waiting for any other transaction that holds
 * it: an advisory lock on a hash of the two, told apart from other uses by
 * marker.  Held to the end of the subtransaction, or with to_commit to the
 * end of the whole transaction, whatever becomes of the subtransaction.
 */
void
journal_lock(uint16 marker, Oid role, text *key, LOCKMODE mode, bool to_commit)
{
	uint64		h = hash_bytes_extended((const unsigned char *) VARDATA_ANY(key),
										VARSIZE_ANY_EXHDR(key), role);
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 marker);
	if (to_commit)
		(void) journal_lock_to_commit(&tag, mode, false);
	else
		(void) LockAcquire(&tag, mode, false, false);
}

/*
 * Take the lock tag names in mode, held to the end of the top transaction
 * (the lock of a subtransaction goes with it when it rolls back); with
 * dont_wait, false at once if another transaction holds it.
 */
bool
journal_lock_to_commit(const LOCKTAG *tag, LOCKMODE mode, bool dont_wait)
{
	ResourceOwner owner = CurrentResourceOwner;
	volatile LockAcquireResult res = LOCKACQUIRE_NOT_AVAIL;

	CurrentResourceOwner = TopTransactionResourceOwner;
	PG_TRY();
	{
		res = LockAcquire(tag, mode, false, dont_wait);
	}
	PG_FINALLY();
	{
		CurrentResourceOwner = owner;
	}
	PG_END_TRY();
	return res != LOCKACQUIRE_NOT_AVAIL;
}

/* Release a lock journal_lock_to_commit took. */
void
journal_unlock_to_commit(const LOCKTAG *tag, LOCKMODE mode)
{
	ResourceOwner owner = CurrentResourceOwner;

	CurrentResourceOwner = TopTransactionResourceOwner;
	(void) LockRelease(tag, mode, false);
	CurrentResourceOwner = owner;
}

static Oid
invocations_relid(void)
{
	Oid			relid = get_relname_relid("invocations", journal_namespace());

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"apiary.invocations\" does not exist"),
				 errhint("Reinstall the extension with DROP EXTENSION apiary; CREATE EXTENSION apiary.")));
	return relid;
}

/* Check that a recorded call is the same call, and return its output. */
static void
recorded_output(Relation rel, HeapTuple tup, text *key, const char *function,
				Jsonb *args, MemoryContext resultcxt,
				Datum *output, bool *output_isnull)
{
	TupleDesc	desc = RelationGetDescr(rel);
	bool		isnull;
	char	   *recorded_fn = TextDatumGetCString(heap_getattr(tup, INV_FUNCTION, desc, &isnull));
	Jsonb	   *recorded_args = DatumGetJsonbP(heap_getattr(tup, INV_ARGS, desc, &isnull));
	Datum		out = heap_getattr(tup, INV_OUTPUT, desc, output_isnull);

	if (strcmp(recorded_fn, function) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("key \"%s\" was already used to call \"%s\"",
						text_to_cstring(key), recorded_fn),
				 errdetail("A key identifies one call: the same function with the same arguments."),
				 errhint("Use a new key for a different call.")));
	if (!DatumGetBool(DirectFunctionCall2(jsonb_eq, JsonbPGetDatum(recorded_args),
										  JsonbPGetDatum(args))))
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("key \"%s\" was already used to call \"%s\" with other arguments",
						text_to_cstring(key), function),
				 errdetail("The recorded arguments are %s.",
						   JsonbToCString(NULL, &recorded_args->root, 0)),
				 errhint("Use a new key for a different call.")));

	if (!*output_isnull)
	{
		MemoryContext old = MemoryContextSwitchTo(resultcxt);

		*output = PointerGetDatum(PG_DETOAST_DATUM_COPY(out));
		MemoryContextSwitchTo(old);
	}
}

/*
 * Look (role, key) up through the primary key index with the given
 * snapshot; when found and resultcxt is set, check the call and return its
 * output.  Direct index access, not SPI: a kept SPI plan could stay the
 * sequential scan it chose while the journal was empty.
 */
static bool
lookup_key(Relation rel, Snapshot snapshot, Oid role, text *key,
		   const char *function, Jsonb *args, MemoryContext resultcxt,
		   Datum *output, bool *output_isnull)
{
	ScanKeyData skey[2];
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found;

	/* the key column is COLLATE "C", as ScanKeyInit assumes */
	ScanKeyInit(&skey[0], INV_ROLE, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(role));
	ScanKeyInit(&skey[1], INV_KEY, BTEqualStrategyNumber, F_TEXTEQ,
				PointerGetDatum(key));
	scan = systable_beginscan(rel, RelationGetPrimaryKeyIndex(rel), true,
							  snapshot, 2, skey);
	tup = systable_getnext(scan);
	found = HeapTupleIsValid(tup);
	if (found && resultcxt != NULL)
		recorded_output(rel, tup, key, function, args, resultcxt,
						output, output_isnull);
	systable_endscan(scan);
	return found;
}

bool
journal_claim(Oid role, text *key, const char *function, Jsonb *args,
			  MemoryContext resultcxt, Datum *output, bool *output_isnull)
{
	Relation	rel;
	Snapshot	snapshot;
	bool		found;

	journal_lock(KEY_LOCK_MARKER, role, key, ExclusiveLock, false);

	/*
	 * READ COMMITTED takes a fresh snapshot here, so a holder we waited for
	 * is seen; REPEATABLE READ keeps the transaction's.
	 */
	rel = table_open(invocations_relid(), AccessShareLock);
	snapshot = RegisterSnapshot(GetTransactionSnapshot());
	found = lookup_key(rel, snapshot, role, key, function, args, resultcxt,
					   output, output_isnull);
	UnregisterSnapshot(snapshot);

	/*
	 * A key committed after our snapshot was taken can neither be returned
	 * nor run again: the transaction has to retry.
	 */
	if (!found && IsolationUsesXactSnapshot())
	{
		snapshot = RegisterSnapshot(GetLatestSnapshot());
		if (lookup_key(rel, snapshot, role, key, function, args, NULL,
					   NULL, NULL))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to concurrent call with key \"%s\"",
							text_to_cstring(key)),
					 errdetail("The key was recorded by a transaction that committed after this transaction's snapshot was taken."),
					 errhint("The transaction might succeed if retried.")));
		UnregisterSnapshot(snapshot);
	}
	table_close(rel, NoLock);
	return !found;
}

/* ---------------------------------------------------------------------
 * Direct writes
 * ---------------------------------------------------------------------
 */

/*
 * Do relation relid's columns stand as apiary writes them?  It writes its
 * tables directly, by column number, so the first natts columns must be
 * live; after them only dropped ones may follow (a column a DBA added and
 * dropped again changes nothing).  Returns 0 if so, -1 if there are fewer
 * columns (an extension older than this library), else the number of the
 * first column in the way: one of apiary's that was dropped, or a live one
 * after them, which direct inserts would leave NULL whatever its default
 * or constraints.
 */
int
journal_columns_differ(Oid relid, int natts)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	int			relnatts;

	if (!HeapTupleIsValid(tup))
		return -1;
	relnatts = ((Form_pg_class) GETSTRUCT(tup))->relnatts;
	ReleaseSysCache(tup);
	if (relnatts < natts)
		return -1;
	for (int i = 1; i <= relnatts; i++)
	{
		HeapTuple	att = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid),
										  Int16GetDatum(i));
		bool		dropped;

		if (!HeapTupleIsValid(att))
			elog(ERROR, "cache lookup failed for attribute %d of relation %u", i, relid);
		dropped = ((Form_pg_attribute) GETSTRUCT(att))->attisdropped;
		ReleaseSysCache(att);
		if (dropped == (i <= natts))
			return i;
	}
	return 0;
}

/* Report, at elevel, that relid's columns differ as journal_columns_differ says. */
void
journal_report_columns(int elevel, Oid relid, int natts, int differ)
{
	const char *name = get_rel_name(relid);
	const char *column;

	if (differ < 0)
		ereport(elevel,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"apiary.%s\" does not have the columns this version of apiary expects",
						name),
				 errhint("Update the extension with ALTER EXTENSION apiary UPDATE.")));
	else if (differ <= natts)
		ereport(elevel,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("column %d of relation \"apiary.%s\", which apiary writes, was dropped",
						differ, name),
				 errhint("Only recreating the extension restores it, which empties the journal.")));
	else
	{
		column = quote_identifier(get_attname(relid, (AttrNumber) differ, false));
		ereport(elevel,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"apiary.%s\" has a column apiary does not write: %s",
						name, column),
				 errdetail("apiary writes its tables directly, which would leave the column NULL whatever its default or constraints."),
				 errhint("Drop it: ALTER TABLE apiary.%s DROP COLUMN %s.", name, column)));
	}
}

/*
 * Refuse to write rel, opened, unless its columns are as apiary writes them:
 * journal_columns_differ's test, read off the relation's descriptor.
 */
void
journal_check_columns(Relation rel, int natts)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			differ = desc->natts < natts ? -1 : 0;

	for (int i = 0; differ == 0 && i < desc->natts; i++)
		if (TupleDescAttr(desc, i)->attisdropped == (i < natts))
			differ = i + 1;
	if (differ != 0)
		journal_report_columns(ERROR, RelationGetRelid(rel), natts, differ);
}

/*
 * A row of rel from the values of its first natts columns (checked by
 * journal_check_columns): NULL in the dropped ones after them.
 */
HeapTuple
journal_form_tuple(Relation rel, int natts, Datum *values, bool *nulls)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Datum	   *v;
	bool	   *n;

	if (desc->natts == natts)
		return heap_form_tuple(desc, values, nulls);
	v = palloc0(desc->natts * sizeof(Datum));
	n = palloc(desc->natts * sizeof(bool));
	memcpy(v, values, natts * sizeof(Datum));
	memcpy(n, nulls, natts * sizeof(bool));
	memset(n + natts, true, (desc->natts - natts) * sizeof(bool));
	return heap_form_tuple(desc, v, n);
}

void
journal_record(Oid role, text *key, const char *function, Jsonb *args,
			   text *parent_key, TimestampTz started_at,
			   Datum output, bool output_isnull)
{
	Relation	rel = table_open(invocations_relid(), RowExclusiveLock);
	Datum		values[INV_NATTS];
	bool		nulls[INV_NATTS] = {0};
	HeapTuple	tup;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;

	values[INV_ROLE - 1] = ObjectIdGetDatum(role);
	values[INV_KEY - 1] = PointerGetDatum(key);
	values[INV_FUNCTION - 1] = CStringGetTextDatum(function);
	values[INV_ARGS - 1] = JsonbPGetDatum(args);
	values[INV_OUTPUT - 1] = output;
	nulls[INV_OUTPUT - 1] = output_isnull;
	values[INV_PARENT_KEY - 1] = PointerGetDatum(parent_key);
	nulls[INV_PARENT_KEY - 1] = parent_key == NULL;
	values[INV_XID - 1] = FullTransactionIdGetDatum(GetCurrentFullTransactionId());
	values[INV_STARTED_AT - 1] = TimestampTzGetDatum(started_at);
	values[INV_FINISHED_AT - 1] = TimestampTzGetDatum(GetCurrentTimestamp());

	/*
	 * Heap and index insert, without a statement: the journal has no
	 * triggers, and its unique index stays the last line against a
	 * duplicate key.  The executor's index insertion, not a catalog's,
	 * since a DBA's index may have expressions or a predicate.
	 */
	journal_check_columns(rel, INV_NATTS);
	tup = journal_form_tuple(rel, INV_NATTS, values, nulls);
	estate = CreateExecutorState();
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 0, NULL, 0);
	ExecOpenIndices(rri, false);
	slot = ExecInitExtraTupleSlot(estate, RelationGetDescr(rel), &TTSOpsHeapTuple);
	ExecStoreHeapTuple(tup, slot, false);
	simple_table_tuple_insert(rel, slot);
	ExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL);
	ExecCloseIndices(rri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	heap_freetuple(tup);
	table_close(rel, NoLock);

	/* later lookups in this transaction see the row */
	CommandCounterIncrement();
}
