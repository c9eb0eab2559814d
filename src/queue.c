/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  The workflow tables, read and written by direct heap and index access.
 *
 * Every task an executor runs touches these tables several times: the
 * claim, the tasks it queues, its outcome, the tasks that waited for it or
 * returned it as their future, its workflow.  Through SPI each of those is
 * a statement with an executor start-up around a few microseconds of
 * work, several times the cost of the task's own bookkeeping; so they are
 * done here as the keyed journal does them (journal.c): index scans, heap
 * inserts and updates, and index entries made by ExecInsertIndexTuples,
 * which honours every index on the table, partial ones included.  Rarer
 * paths (status, cancel, resume) stay in SQL.
 *
 * Concurrency follows what UPDATE does under READ COMMITTED.  A row is
 * read with the latest snapshot and updated with waiting; when another
 * transaction changed it meanwhile, the update reports that, and the row
 * is read again and the change recomputed from its new contents.  The
 * claim deletes the task's row in apiary.ready, skipping rows another
 * executor is deleting or that went since the snapshot, as SELECT ... FOR
 * UPDATE SKIP LOCKED does.
 *
 * Every step's WAL is written and flushed before its commit returns, so
 * the task rows are written once and then only HOT-updated (a few dozen
 * bytes, no index entries): nothing an index of apiary.tasks depends on
 * changes after the insert.  Which tasks are ready, and which returned a
 * future, are rows of their own (apiary.ready, apiary.links), written in
 * the same transactions as the task's state.
 *
 * Nothing here checks privileges: the callers are apiary's own code,
 * acting for the role recorded in each row.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/xid8.h"

#include "journal.h"
#include "launcher.h"
#include "queue.h"

/* Columns of apiary.tasks, in table order. */
enum
{
	T_ID = 1, T_ROLE, T_WORKFLOW, T_PARENT, T_FUNCTION, T_ARGS, T_STATE,
	T_WAITING_FOR, T_LINKED_TO, T_ATTEMPTS, T_CRASHES, T_OUTPUT, T_ERROR,
	T_RUN_AFTER, T_QUEUED_AT, T_STARTED_AT, T_FINISHED_AT, T_XID,
	T_SEARCH_PATH, T_FN_OWNER, T_SETTINGS,
	T_NATTS = T_SETTINGS
};

const char *const queue_setting_names[QUEUE_NSETTINGS] = {
	"DateStyle", "IntervalStyle", "TimeZone", "bytea_output",
	"extra_float_digits", "lc_monetary"
};

/* Columns of apiary.workflows. */
enum
{
	W_ROLE = 1, W_ID, W_FUNCTION, W_ARGS, W_STATE, W_ROOT, W_OUTPUT, W_ERROR,
	W_STARTED_AT, W_FINISHED_AT, W_TIMEOUT, W_DEADLINE,
	W_NATTS = W_DEADLINE
};

/* Columns of apiary.waits. */
enum
{
	X_FUTURE = 1, X_TASK,
	X_NATTS = X_TASK
};

/* Columns of apiary.ready: a row for each pending task. */
enum
{
	R_RUN_AFTER = 1, R_TASK,
	R_NATTS = R_TASK
};

/* Columns of apiary.links: a row for each task that returned a future. */
enum
{
	L_FUTURE = 1, L_TASK,
	L_NATTS = L_TASK
};

/* Marks apiary's advisory locks on workflow ids in pg_locks (objsubid). */
#define START_LOCK_MARKER 0x4151
#define CANCEL_LOCK_MARKER 0x4152
#define LINK_LOCK_MARKER 0x4153
/* ... and on task ids, held by the executor that claimed the task */
#define TASK_LOCK_MARKER 0x4154

static const char *const state_names[] = {
	[QS_WAITING] = "waiting",
	[QS_PENDING] = "pending",
	[QS_LINKED] = "linked",
	[QS_DONE] = "done",
	[QS_FAILED] = "failed",
	[QS_CANCELLED] = "cancelled",
};

const char *
queue_state_name(QueueState state)
{
	return state_names[state];
}

static QueueState
state_from_datum(Datum d)
{
	char	   *s = TextDatumGetCString(d);

	for (int i = 0; i < lengthof(state_names); i++)
		if (strcmp(s, state_names[i]) == 0)
			return (QueueState) i;
	elog(ERROR, "unknown task state \"%s\"", s);
	return QS_FAILED;			/* keep compiler quiet */
}

static Datum
state_datum(QueueState state)
{
	return CStringGetTextDatum(state_names[state]);
}

/* ---------------------------------------------------------------------
 * Opening the tables
 * ---------------------------------------------------------------------
 */

/*
 * A table opened for reading and writing: for one operation, or, in an
 * executor (queue_keep_open), to the end of the transaction.
 */
typedef struct QRel
{
	Relation	rel;
	int			natts;			/* the columns this library writes */
	EState	   *estate;			/* for index insertion, once needed */
	ResultRelInfo *rri;
	TupleTableSlot *slot;		/* a heap tuple slot for writes */
} QRel;

/*
 * The tables' OIDs, looked up by name once and kept until a relcache
 * invalidation names one of them (dropped, renamed, altered) or all.
 */
static const char *const table_names[] = {"tasks", "workflows", "waits", "ready", "links"};
static Oid	table_oids[lengthof(table_names)];
static bool tables_current = false; /* queue_installed said so, since */

/*
 * An executor touches the same few tables several times in each task's
 * transaction: it opens each (and its indexes) once, and closes them just
 * before the commit.  They are opened under the transaction's top-level
 * resource owner and memory, so that the task's subtransaction neither
 * closes them nor reports them leaked.  Elsewhere each use opens and
 * closes, as the statements around it may alter or drop the tables.
 */
static bool keep_open = false;
static QRel *kept[lengthof(table_names)];

static void
table_changed(Datum arg, Oid relid)
{
	for (int i = 0; i < lengthof(table_oids); i++)
		if (relid == InvalidOid || relid == table_oids[i])
		{
			memset(table_oids, 0, sizeof(table_oids));
			tables_current = false;
			return;
		}
}

void
queue_init(void)
{
	CacheRegisterRelcacheCallback(table_changed, (Datum) 0);
}

static int
table_index(const char *name)
{
	for (int i = 0; i < lengthof(table_names); i++)
		if (strcmp(table_names[i], name) == 0)
			return i;
	elog(ERROR, "unknown apiary table \"%s\"", name);
	return -1;					/* keep compiler quiet */
}

static Oid
table_oid(const char *name)
{
	int			i = table_index(name);

	if (OidIsValid(table_oids[i]))
		return table_oids[i];
	table_oids[i] = get_relname_relid(name, journal_namespace());
	if (!OidIsValid(table_oids[i]))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"apiary.%s\" does not exist", name),
				 errhint("Update the extension with ALTER EXTENSION apiary UPDATE.")));
	return table_oids[i];
}

Oid
queue_tasks_relid(void)
{
	return table_oid("tasks");
}

static QRel *
qrel_open(const char *name, int natts)
{
	int			i = table_index(name);
	ResourceOwner owner = CurrentResourceOwner;
	QRel	   *q;
	Relation	rel;

	if (keep_open && kept[i] != NULL)
		return kept[i];
	if (keep_open)
		CurrentResourceOwner = TopTransactionResourceOwner;
	/* (dropped while we waited for its lock: DROP EXTENSION) */
	rel = try_table_open(table_oid(name), RowExclusiveLock);
	CurrentResourceOwner = owner;
	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"apiary.%s\" was dropped meanwhile", name),
				 errhint("Extension apiary was dropped: create it again to run workflows.")));
	journal_check_columns(rel, natts);
	q = MemoryContextAllocZero(keep_open ? TopTransactionContext : CurrentMemoryContext,
							   sizeof(QRel));
	q->rel = rel;
	q->natts = natts;
	if (keep_open)
		kept[i] = q;
	return q;
}

static void
qrel_prepare_writes(QRel *q)
{
	MemoryContext old;
	ResourceOwner owner = CurrentResourceOwner;

	if (q->estate != NULL)
		return;
	old = MemoryContextSwitchTo(keep_open ? TopTransactionContext : CurrentMemoryContext);
	if (keep_open)
		CurrentResourceOwner = TopTransactionResourceOwner;
	q->estate = CreateExecutorState();
	q->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(q->rri, q->rel, 0, NULL, 0);
	ExecOpenIndices(q->rri, false);
	q->slot = ExecInitExtraTupleSlot(q->estate, RelationGetDescr(q->rel),
									 &TTSOpsHeapTuple);
	CurrentResourceOwner = owner;
	MemoryContextSwitchTo(old);
}

static void
qrel_release(QRel *q)
{
	if (q->estate != NULL)
	{
		ExecCloseIndices(q->rri);
		ExecResetTupleTable(q->estate->es_tupleTable, false);
		FreeExecutorState(q->estate);
	}
	table_close(q->rel, NoLock);
	pfree(q);
}

static void
qrel_close(QRel *q)
{
	if (!keep_open)
		qrel_release(q);
}

/* Close the tables an executor kept open before its commit; forget them at the end. */
static void
release_kept(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_PRE_COMMIT || event == XACT_EVENT_PRE_PREPARE)
	{
		ResourceOwner owner = CurrentResourceOwner;

		CurrentResourceOwner = TopTransactionResourceOwner;
		for (int i = 0; i < lengthof(kept); i++)
			if (kept[i] != NULL)
				qrel_release(kept[i]);
		CurrentResourceOwner = owner;
	}
	/* on abort, the resource owner closes them */
	memset(kept, 0, sizeof(kept));
}

void
queue_keep_open(void)
{
	keep_open = true;
	RegisterXactCallback(release_kept, NULL);
}

/* The columns this library writes to each of table_names. */
static const int table_natts[lengthof(table_names)] = {T_NATTS, W_NATTS, X_NATTS, R_NATTS, L_NATTS};

/*
 * Asked before every executor transaction: the answer, once yes, is kept
 * with the tables' OIDs, until an invalidation of one of them (a column
 * added, a table dropped) forgets both.  No before ALTER EXTENSION UPDATE
 * has brought the tables to this library's version, or while a DBA's
 * change to them is in the way: that is logged once, as it begins.
 */
bool
queue_installed(void)
{
	static int	logged_table = -1;	/* what was last logged: which table */
	static int	logged_differ = 0;	/* and journal_columns_differ's answer */
	Oid			nsp;
	Oid			oids[lengthof(table_names)];

	if (tables_current)
		return true;
	nsp = get_namespace_oid("apiary", true);
	if (!OidIsValid(nsp))
		return false;			/* not installed: the launcher waits for it */
	for (int i = 0; i < lengthof(table_names); i++)
	{
		int			differ;

		oids[i] = get_relname_relid(table_names[i], nsp);
		differ = OidIsValid(oids[i]) ? journal_columns_differ(oids[i], table_natts[i]) : -1;
		if (differ == 0)
			continue;
		if (logged_table != i || logged_differ != differ)
		{
			logged_table = i;
			logged_differ = differ;
			if (differ < 0)
				ereport(LOG,
						(errmsg("apiary's tables in database \"%s\" are older than this library: no task runs until ALTER EXTENSION apiary UPDATE",
								get_database_name(MyDatabaseId))));
			else
				journal_report_columns(WARNING, oids[i], table_natts[i], differ);
		}
		return false;
	}
	memcpy(table_oids, oids, sizeof(table_oids));
	tables_current = true;
	logged_table = -1;
	return true;
}

/*
 * Store a new row version and make its index entries.
 *
 * The slot never owns the tuple it is lent (ExecStoreHeapTuple's
 * shouldFree is false): the slot lives to the end of the transaction, the
 * tuple in the caller's memory, perhaps a task function's, which its
 * subtransaction's rollback frees.  An error between storing and clearing
 * (a serialization failure in the insert, a timeout, a cancel) leaves it
 * in the slot, and a slot that owned it would free it again when next
 * used, corrupting memory.
 */
static void
qrel_insert(QRel *q, Datum *values, bool *nulls)
{
	HeapTuple	tup;

	qrel_prepare_writes(q);
	tup = journal_form_tuple(q->rel, q->natts, values, nulls);
	ExecStoreHeapTuple(tup, q->slot, false);
	table_tuple_insert(q->rel, q->slot, GetCurrentCommandId(true), 0, NULL);
	ExecInsertIndexTuples(q->rri, q->slot, q->estate, false, false, NULL, NIL);
	ResetPerTupleExprContext(q->estate);
	ExecClearTuple(q->slot);
	heap_freetuple(tup);
	CommandCounterIncrement();
}

/*
 * Change the row found by the index scan keys: mutate gets its current
 * values and sets new ones (and replace flags), or returns false to leave
 * it.  A row changed by another transaction meanwhile is read again and
 * mutated afresh, as UPDATE does under READ COMMITTED.  Returns false when
 * there is no such row, or mutate declined.
 */
typedef bool (*RowMutator) (Datum *values, bool *nulls, bool *replace,
							void *arg);

static bool
qrel_update(QRel *q, Oid indexoid, int nkeys, ScanKey keys,
			RowMutator mutate, void *arg)
{
	TupleDesc	desc = RelationGetDescr(q->rel);
	Datum	   *values = palloc(desc->natts * sizeof(Datum));
	bool	   *nulls = palloc(desc->natts * sizeof(bool));
	bool	   *replace = palloc(desc->natts * sizeof(bool));

	qrel_prepare_writes(q);
	for (;;)
	{
		Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
		SysScanDesc scan = systable_beginscan(q->rel, indexoid, true, snapshot,
											  nkeys, keys);
		HeapTuple	old = systable_getnext(scan);
		HeapTuple	tup;
		ItemPointerData tid;
		TM_Result	res;
		TM_FailureData tmfd;
		LockTupleMode lockmode;
		bool		update_indexes;

		if (!HeapTupleIsValid(old))
		{
			systable_endscan(scan);
			UnregisterSnapshot(snapshot);
			return false;
		}
		old = heap_copytuple(old);
		systable_endscan(scan);
		tid = old->t_self;
		heap_deform_tuple(old, desc, values, nulls);
		memset(replace, 0, desc->natts * sizeof(bool));
		if (!mutate(values, nulls, replace, arg))
		{
			UnregisterSnapshot(snapshot);
			return false;
		}
		tup = heap_modify_tuple(old, desc, values, nulls, replace);
		ExecStoreHeapTuple(tup, q->slot, false);	/* see qrel_insert */
		res = table_tuple_update(q->rel, &tid, q->slot,
								 GetCurrentCommandId(true), snapshot,
								 InvalidSnapshot, true, &tmfd, &lockmode,
								 &update_indexes);
		UnregisterSnapshot(snapshot);
		if (res == TM_Ok)
		{
			if (update_indexes)
				ExecInsertIndexTuples(q->rri, q->slot, q->estate, true, false,
									  NULL, NIL);
			ResetPerTupleExprContext(q->estate);
			ExecClearTuple(q->slot);
			heap_freetuple(tup);
			CommandCounterIncrement();
			return true;
		}
		ExecClearTuple(q->slot);
		heap_freetuple(tup);
		if (res != TM_Updated && res != TM_Deleted)
			elog(ERROR, "unexpected result %d updating a row of \"%s\"",
				 (int) res, RelationGetRelationName(q->rel));
		/* another transaction changed it first: look again */
		CHECK_FOR_INTERRUPTS();
	}
}

static void
task_key(ScanKey key, int64 *id)
{
	ScanKeyInit(key, T_ID, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(*id));
}

static void
workflow_keys(ScanKey keys, Oid role, text *id)
{
	/* the id column is COLLATE "C", as ScanKeyInit assumes */
	ScanKeyInit(&keys[0], W_ROLE, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(role));
	ScanKeyInit(&keys[1], W_ID, BTEqualStrategyNumber, F_TEXTEQ,
				PointerGetDatum(id));
}

/* ---------------------------------------------------------------------
 * Claiming
 * ---------------------------------------------------------------------
 */

/* Insert a row into apiary.ready or apiary.links, tables of two columns. */
static void
insert_pair(const char *table, Datum first, Datum second)
{
	QRel	   *q;
	Datum		values[2] = {first, second};
	bool		nulls[2] = {false, false};

	q = qrel_open(table, 2);
	qrel_insert(q, values, nulls);
	qrel_close(q);
}

/*
 * The ready queue, apiary.ready: a row (run_after, task) for each pending
 * task, written in the transaction that makes the task pending.  Nothing
 * in apiary.tasks that an index depends on changes after the insert, so
 * the task's own updates are HOT.  An executor claims a task by deleting
 * its ready row: others skip a row being deleted, as FOR UPDATE SKIP
 * LOCKED skips a locked one, and the claim's commit (with the outcome) or
 * rollback (a crash: the task is ready again) settles it.
 */
static void
ready_add(int64 task, TimestampTz run_after)
{
	StaticAssertStmt(R_NATTS == 2 && L_NATTS == 2, "apiary.ready and apiary.links have two columns");
	insert_pair("ready", TimestampTzGetDatum(run_after), Int64GetDatum(task));
}

static void
ready_keys(ScanKey keys, TimestampTz *run_after, int64 *task)
{
	ScanKeyInit(&keys[0], R_RUN_AFTER, BTEqualStrategyNumber, F_TIMESTAMPTZ_EQ,
				TimestampTzGetDatum(*run_after));
	ScanKeyInit(&keys[1], R_TASK, BTEqualStrategyNumber, F_INT8EQ,
				Int64GetDatum(*task));
}

/*
 * Delete a ready row.  Without wait, a row another transaction is
 * deleting is skipped; with it, that transaction's end is awaited.  True
 * if we deleted it.
 */
static bool
ready_delete(Relation ready, ItemPointer tid, bool wait)
{
	TM_FailureData tmfd;
	TM_Result	res;

	res = table_tuple_delete(ready, tid, GetCurrentCommandId(true),
							 InvalidSnapshot, InvalidSnapshot, wait, &tmfd,
							 false);
	if (res != TM_Ok)
		return false;			/* claimed by another executor, or gone */
	CommandCounterIncrement();
	apiary_ready_deleted();
	return true;
}

/* Find task's ready row (task, run_after), as it is now: false if none. */
static bool
ready_find(Relation ready, int64 task, TimestampTz run_after, ItemPointer tid)
{
	ScanKeyData keys[2];
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found;

	ready_keys(keys, &run_after, &task);
	scan = systable_beginscan(ready, RelationGetPrimaryKeyIndex(ready), true,
							  snapshot, 2, keys);
	found = HeapTupleIsValid(tup = systable_getnext(scan));
	if (found)
		*tid = tup->t_self;
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	return found;
}

/*
 * Read task's row with snapshot: false if there is none; else its state
 * and run_after, when task is not NULL what the executor needs, and when
 * error is not NULL its error.
 */
static bool
read_task(Relation tasks, Snapshot snapshot, int64 id, QueueState *state,
		  TimestampTz *run_after, QueueTask *task, Jsonb **error)
{
	TupleDesc	desc = RelationGetDescr(tasks);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		isnull;
	bool		found;

	task_key(&key, &id);
	scan = systable_beginscan(tasks, RelationGetPrimaryKeyIndex(tasks), true,
							  snapshot, 1, &key);
	tup = systable_getnext(scan);
	found = HeapTupleIsValid(tup);
	if (found)
	{
		*state = state_from_datum(heap_getattr(tup, T_STATE, desc, &isnull));
		*run_after = DatumGetTimestampTz(heap_getattr(tup, T_RUN_AFTER, desc, &isnull));
	}
	if (found && task != NULL)
	{
		Datum		d;

		task->id = id;
		task->role = DatumGetObjectId(heap_getattr(tup, T_ROLE, desc, &isnull));
		task->workflow = DatumGetTextPCopy(heap_getattr(tup, T_WORKFLOW, desc, &isnull));
		task->function = TextDatumGetCString(heap_getattr(tup, T_FUNCTION, desc, &isnull));
		task->args = DatumGetJsonbPCopy(heap_getattr(tup, T_ARGS, desc, &isnull));
		task->attempts = DatumGetInt32(heap_getattr(tup, T_ATTEMPTS, desc, &isnull));
		d = heap_getattr(tup, T_SEARCH_PATH, desc, &isnull);
		task->search_path = isnull ? NULL : TextDatumGetCString(d);
		d = heap_getattr(tup, T_FN_OWNER, desc, &isnull);
		task->fn_owner = isnull ? InvalidOid : DatumGetObjectId(d);
		task->settings = NULL;
		task->nsettings = 0;
		d = heap_getattr(tup, T_SETTINGS, desc, &isnull);
		if (!isnull)
		{
			Datum	   *elems;
			bool	   *enulls;
			int			n;

			deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false,
							  TYPALIGN_INT, &elems, &enulls, &n);
			task->settings = palloc(n * sizeof(char *));
			for (int i = 0; i < n; i++)
				task->settings[i] = enulls[i] ? NULL : TextDatumGetCString(elems[i]);
			task->nsettings = n;
		}
	}
	if (found && error != NULL)
	{
		Datum		d = heap_getattr(tup, T_ERROR, desc, &isnull);

		*error = isnull ? NULL : DatumGetJsonbPCopy(d);
	}
	systable_endscan(scan);
	return found;
}

/*
 * The lock an executor holds on the task it runs, to its commit.  A task
 * has one ready row, as a rule; but a resume adds one for a task that a
 * cancel found running, while the row its executor took is still there
 * (its claim not committed yet, or undone by an abort), and a claim of
 * either row must not run the task while another executor runs it.
 */
static void
task_locktag(LOCKTAG *tag, int64 id)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) ((uint64) id >> 32),
						 (uint32) id, TASK_LOCK_MARKER);
}

/*
 * Release the lock on task id held for an instant by a claim or unready
 * that took nothing.  A claim of the task's row in that instant passed it
 * over (the row a resume queued, say, or the task's own next to a stray
 * one): if the task is pending now, an idle executor looks again at once
 * rather than at its next wake-up.
 */
static void
release_task(Relation tasks, LOCKTAG *tag, int64 id)
{
	Snapshot	snapshot;
	QueueState	state;
	TimestampTz run_after;
	bool		pending;

	journal_unlock_to_commit(tag, ExclusiveLock);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	pending = read_task(tasks, snapshot, id, &state, &run_after, NULL, NULL) &&
		state == QS_PENDING;
	UnregisterSnapshot(snapshot);
	if (pending)
		apiary_pass_on(id);
}

/*
 * Claim task id through its ready row at tid, due at row_due: lock the
 * task, take the row, and read the task as it is now.  False if another
 * executor runs it (the row stays: the runner takes it away after its
 * commit, looking for work), or takes the row; and if the task is not
 * pending (gone, or finished), or this row is not its own but one left
 * from before a resume (the task's own is due when the task is, which a
 * retry may have put off): then the deletion stands, tidying a stray row
 * away.
 */
static bool
claim(Relation tasks, Relation ready, ItemPointer tid, TimestampTz row_due,
	  int64 id, QueueTask *task)
{
	LOCKTAG		tag;
	Snapshot	snapshot;
	QueueState	state;
	TimestampTz run_after;
	ItemPointerData own;
	bool		pending;

	task_locktag(&tag, id);
	if (!journal_lock_to_commit(&tag, ExclusiveLock, true))
		return false;
	if (!ready_delete(ready, tid, false))
	{
		journal_unlock_to_commit(&tag, ExclusiveLock);
		return false;
	}
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	pending = read_task(tasks, snapshot, id, &state, &run_after, task, NULL) &&
		state == QS_PENDING;
	UnregisterSnapshot(snapshot);
	if (pending && run_after != row_due && ready_find(ready, id, run_after, &own))
		pending = false;
	if (!pending)
		release_task(tasks, &tag, id);
	return pending;
}

/*
 * Take task id if it is pending and due, and its ready row is free: the
 * claim of one particular task.
 */
static bool
take_task(Relation tasks, Relation ready, Snapshot snapshot, int64 id,
		  TimestampTz now, QueueTask *task)
{
	QueueState	state;
	TimestampTz run_after;
	ItemPointerData tid;

	return read_task(tasks, snapshot, id, &state, &run_after, NULL, NULL) &&
		state == QS_PENDING && run_after <= now &&
		ready_find(ready, id, run_after, &tid) &&
		claim(tasks, ready, &tid, run_after, id, task);
}

bool
queue_take(int64 id, QueueTask *task)
{
	QRel	   *qtasks = qrel_open("tasks", T_NATTS);
	QRel	   *qready = qrel_open("ready", R_NATTS);
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	bool		found = take_task(qtasks->rel, qready->rel, snapshot, id,
								  GetCurrentTimestamp(), task);

	UnregisterSnapshot(snapshot);
	qrel_close(qready);
	qrel_close(qtasks);
	return found;
}

bool
queue_claim(int64 prefer, QueueTask *task, TimestampTz *next_due)
{
	QRel	   *qtasks = qrel_open("tasks", T_NATTS);
	QRel	   *qready = qrel_open("ready", R_NATTS);
	Relation	tasks = qtasks->rel;
	Relation	ready = qready->rel;
	Snapshot	snapshot = GetActiveSnapshot();
	TimestampTz now = GetCurrentTimestamp();
	bool		found = false;

	*next_due = 0;

	/*
	 * The task this executor just made ready: the workflow under way (the
	 * claim reads it again, as it is now).
	 */
	if (prefer != 0)
		found = take_task(tasks, ready, snapshot, prefer, now, task);

	/* else the oldest ready task */
	if (!found)
	{
		Relation	index = index_open(RelationGetPrimaryKeyIndex(ready), AccessShareLock);
		SysScanDesc scan = systable_beginscan_ordered(ready, index, snapshot, 0, NULL);
		HeapTuple	tup;
		bool		isnull;

		while (HeapTupleIsValid(tup = systable_getnext_ordered(scan, ForwardScanDirection)))
		{
			TimestampTz run_after = DatumGetTimestampTz(heap_getattr(tup, R_RUN_AFTER,
																	 RelationGetDescr(ready), &isnull));
			int64		id = DatumGetInt64(heap_getattr(tup, R_TASK,
														RelationGetDescr(ready), &isnull));
			ItemPointerData tid = tup->t_self;

			if (run_after > now)
			{
				*next_due = run_after;
				break;
			}
			if (claim(tasks, ready, &tid, run_after, id, task))
			{
				found = true;
				break;
			}
			CHECK_FOR_INTERRUPTS();
		}
		systable_endscan_ordered(scan);
		index_close(index, AccessShareLock);
	}

	qrel_close(qready);
	qrel_close(qtasks);
	return found;
}

/* ---------------------------------------------------------------------
 * Queueing
 * ---------------------------------------------------------------------
 */

static int64
next_task_id(Relation tasks)
{
	static Oid	cached_rel = InvalidOid;
	static Oid	cached_seq = InvalidOid;

	if (cached_rel != RelationGetRelid(tasks))
	{
		cached_seq = getIdentitySequence(RelationGetRelid(tasks), T_ID, false);
		cached_rel = RelationGetRelid(tasks);
	}
	return nextval_internal(cached_seq, false);
}

/* The values of queue_setting_names in this session, as a text[]. */
static Datum
settings_datum(void)
{
	Datum		values[QUEUE_NSETTINGS];

	for (int i = 0; i < QUEUE_NSETTINGS; i++)
		values[i] = CStringGetTextDatum(GetConfigOption(queue_setting_names[i], false, false));
	return PointerGetDatum(construct_array(values, QUEUE_NSETTINGS, TEXTOID, -1,
										   false, TYPALIGN_INT));
}

static int64
insert_task(QRel *tasks, Oid role, text *workflow, int64 parent,
			const char *function, Oid fn_owner, Jsonb *args, int nwaiting)
{
	Datum		values[T_NATTS] = {0};
	bool		nulls[T_NATTS] = {0};
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	int64		id = next_task_id(tasks->rel);

	values[T_ID - 1] = Int64GetDatum(id);
	values[T_ROLE - 1] = ObjectIdGetDatum(role);
	values[T_WORKFLOW - 1] = PointerGetDatum(workflow);
	values[T_PARENT - 1] = Int64GetDatum(parent);
	nulls[T_PARENT - 1] = parent == 0;
	values[T_FUNCTION - 1] = CStringGetTextDatum(function);
	values[T_ARGS - 1] = JsonbPGetDatum(args);
	values[T_STATE - 1] = state_datum(nwaiting > 0 ? QS_WAITING : QS_PENDING);
	values[T_WAITING_FOR - 1] = Int32GetDatum(nwaiting);
	nulls[T_LINKED_TO - 1] = true;
	values[T_ATTEMPTS - 1] = Int32GetDatum(0);
	values[T_CRASHES - 1] = Int32GetDatum(0);
	nulls[T_OUTPUT - 1] = true;
	nulls[T_ERROR - 1] = true;
	values[T_RUN_AFTER - 1] = TimestampTzGetDatum(now);
	values[T_QUEUED_AT - 1] = TimestampTzGetDatum(now);
	nulls[T_STARTED_AT - 1] = true;
	nulls[T_FINISHED_AT - 1] = true;
	nulls[T_XID - 1] = true;
	values[T_SEARCH_PATH - 1] = CStringGetTextDatum(namespace_search_path);
	values[T_FN_OWNER - 1] = ObjectIdGetDatum(fn_owner);
	values[T_SETTINGS - 1] = settings_datum();
	qrel_insert(tasks, values, nulls);
	if (nwaiting == 0)
		ready_add(id, now);
	return id;
}

int64
queue_add_task(Oid role, text *workflow, int64 parent, const char *function,
			   Oid fn_owner, Jsonb *args, List *futures)
{
	QRel	   *tasks;
	int64		id;
	ListCell   *lc;

	tasks = qrel_open("tasks", T_NATTS);
	id = insert_task(tasks, role, workflow, parent, function, fn_owner, args,
					 list_length(futures));
	qrel_close(tasks);

	if (futures != NIL)
	{
		QRel	   *waits;

		waits = qrel_open("waits", X_NATTS);
		foreach(lc, futures)
		{
			Datum		values[X_NATTS] = {Int64GetDatum(*(int64 *) lfirst(lc)),
			Int64GetDatum(id)};
			bool		nulls[X_NATTS] = {0};

			qrel_insert(waits, values, nulls);
		}
		qrel_close(waits);
	}
	return id;
}

/* Look workflow (role, id) up with snapshot; on a hit return its call. */
static bool
find_workflow(Relation rel, Snapshot snapshot, Oid role, text *id,
			  char **function, Jsonb **args)
{
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found;

	workflow_keys(keys, role, id);
	scan = systable_beginscan(rel, RelationGetPrimaryKeyIndex(rel), true,
							  snapshot, 2, keys);
	tup = systable_getnext(scan);
	found = HeapTupleIsValid(tup);
	if (found && function != NULL)
	{
		bool		isnull;

		*function = TextDatumGetCString(heap_getattr(tup, W_FUNCTION, RelationGetDescr(rel), &isnull));
		*args = DatumGetJsonbPCopy(heap_getattr(tup, W_ARGS, RelationGetDescr(rel), &isnull));
	}
	systable_endscan(scan);
	return found;
}

bool
queue_find_workflow(Oid role, text *id, char **recorded_function,
					Jsonb **recorded_args)
{
	QRel	   *workflows = qrel_open("workflows", W_NATTS);
	Snapshot	snapshot;
	bool		found;

	/* a concurrent start of the same id: wait for it to end, then look */
	journal_lock(START_LOCK_MARKER, role, id, ExclusiveLock, false);
	snapshot = RegisterSnapshot(GetTransactionSnapshot());
	found = find_workflow(workflows->rel, snapshot, role, id,
						  recorded_function, recorded_args);
	UnregisterSnapshot(snapshot);
	if (!found && IsolationUsesXactSnapshot())
	{
		/* one committed after our snapshot can be neither seen nor redone */
		snapshot = RegisterSnapshot(GetLatestSnapshot());
		if (find_workflow(workflows->rel, snapshot, role, id, NULL, NULL))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not start workflow \"%s\": it was started concurrently",
							text_to_cstring(id)),
					 errhint("The transaction might succeed if retried.")));
		UnregisterSnapshot(snapshot);
	}
	qrel_close(workflows);
	return found;
}

int64
queue_add_workflow(Oid role, text *id, const char *function, Oid fn_owner,
				   Jsonb *args, Interval *timeout)
{
	QRel	   *workflows;
	QRel	   *tasks;
	int64		root;

	workflows = qrel_open("workflows", W_NATTS);
	tasks = qrel_open("tasks", T_NATTS);
	root = insert_task(tasks, role, id, 0, function, fn_owner, args, 0);
	qrel_close(tasks);
	{
		Datum		values[W_NATTS] = {0};
		bool		nulls[W_NATTS] = {0};

		values[W_ROLE - 1] = ObjectIdGetDatum(role);
		values[W_ID - 1] = PointerGetDatum(id);
		values[W_FUNCTION - 1] = CStringGetTextDatum(function);
		values[W_ARGS - 1] = JsonbPGetDatum(args);
		values[W_STATE - 1] = CStringGetTextDatum("running");
		values[W_ROOT - 1] = Int64GetDatum(root);
		nulls[W_OUTPUT - 1] = true;
		nulls[W_ERROR - 1] = true;
		values[W_STARTED_AT - 1] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
		nulls[W_FINISHED_AT - 1] = true;
		nulls[W_TIMEOUT - 1] = nulls[W_DEADLINE - 1] = timeout == NULL;
		if (timeout != NULL)
		{
			values[W_TIMEOUT - 1] = IntervalPGetDatum(timeout);
			values[W_DEADLINE - 1] = DirectFunctionCall2(timestamptz_pl_interval,
														 values[W_STARTED_AT - 1],
														 IntervalPGetDatum(timeout));
		}
		qrel_insert(workflows, values, nulls);
	}
	qrel_close(workflows);
	return root;
}

bool
queue_finished_state(QueueState state)
{
	return state == QS_DONE || state == QS_FAILED || state == QS_CANCELLED;
}

/*
 * Lock the row version tup found with FOR SHARE: false if another
 * transaction changed it meanwhile (after waiting for that one to end).
 */
static bool
hold_row(Relation rel, HeapTuple tup)
{
	HeapTupleData locked;
	Buffer		buffer;
	TM_FailureData tmfd;
	TM_Result	res;

	locked.t_self = tup->t_self;
	res = heap_lock_tuple(rel, &locked, GetCurrentCommandId(true),
						  LockTupleShare, LockWaitBlock, false, &buffer, &tmfd);
	ReleaseBuffer(buffer);
	if (res == TM_Updated || res == TM_Deleted)
		return false;
	if (res != TM_Ok && res != TM_SelfModified)
		elog(ERROR, "unexpected result %d locking task row", (int) res);
	return true;
}

QueueState
queue_future(int64 id, Oid role, text *workflow, bool hold, bool *foreign,
			 Jsonb **output, Jsonb **error)
{
	QRel	   *tasks = qrel_open("tasks", T_NATTS);
	Relation	rel = tasks->rel;
	TupleDesc	desc = RelationGetDescr(rel);
	ScanKeyData key;
	QueueState	state;
	bool		found;
	bool		isnull;
	bool		cancel_locked = false;

	task_key(&key, &id);
	for (;;)
	{
		/* the latest: a future queued earlier in this transaction, too */
		Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
		SysScanDesc scan = systable_beginscan(rel, RelationGetPrimaryKeyIndex(rel),
											  true, snapshot, 1, &key);
		HeapTuple	tup = systable_getnext(scan);
		bool		again = false;

		state = QS_FAILED;
		found = HeapTupleIsValid(tup) &&
			DatumGetObjectId(heap_getattr(tup, T_ROLE, desc, &isnull)) == role &&
			DatumGetBool(DirectFunctionCall2Coll(texteq, C_COLLATION_OID,
												 heap_getattr(tup, T_WORKFLOW, desc, &isnull),
												 PointerGetDatum(workflow)));
		if (found)
		{
			Datum		d;
			bool		mine = TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tup->t_data));

			state = state_from_datum(heap_getattr(tup, T_STATE, desc, &isnull));
			if (foreign)
				*foreign = !mine;
			if (output)
			{
				d = heap_getattr(tup, T_OUTPUT, desc, &isnull);
				*output = isnull ? NULL : DatumGetJsonbPCopy(d);
			}
			if (error)
			{
				d = heap_getattr(tup, T_ERROR, desc, &isnull);
				*error = isnull ? NULL : DatumGetJsonbPCopy(d);
			}

			/*
			 * The caller waits for it or links to it in rows that its
			 * finish looks for only after changing its own row: until we
			 * commit, that change waits for our lock, and then sees them.
			 * (A future queued in this transaction cannot finish before
			 * it commits.)  The workflow's cancel lock comes first, as in
			 * every transaction that takes both (queue_workflow_cancelled
			 * takes it again at the task's end): a cancel waits for us
			 * rather than for the row we hold.
			 */
			if (hold && !mine && !queue_finished_state(state))
			{
				if (!cancel_locked)
					journal_lock(CANCEL_LOCK_MARKER, role, workflow, ShareLock, true);
				cancel_locked = true;
				again = !hold_row(rel, tup);
			}
		}
		systable_endscan(scan);
		UnregisterSnapshot(snapshot);
		if (!again)
			break;
		CHECK_FOR_INTERRUPTS();
	}
	qrel_close(tasks);
	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("future %lld does not belong to this workflow", (long long) id),
				 errdetail("Futures are task outputs of the same workflow, as returned by apiary_queue.")));
	return state;
}

/* ---------------------------------------------------------------------
 * Outcomes
 * ---------------------------------------------------------------------
 */

/* The attempt just made, recorded in the same row version as its outcome. */
static void
record_attempt(Datum *values, bool *nulls, bool *replace, TimestampTz ran_at)
{
	if (ran_at == 0)
		return;
	values[T_ATTEMPTS - 1] = Int32GetDatum(DatumGetInt32(values[T_ATTEMPTS - 1]) + 1);
	values[T_STARTED_AT - 1] = TimestampTzGetDatum(ran_at);
	nulls[T_STARTED_AT - 1] = false;
	values[T_XID - 1] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	nulls[T_XID - 1] = false;
	replace[T_ATTEMPTS - 1] = replace[T_STARTED_AT - 1] = replace[T_XID - 1] = true;
}

/* An outcome to record, and what the row held (for what follows). */
typedef struct Outcome
{
	int64		id;
	QueueState	state;			/* done, failed or cancelled */
	Jsonb	   *value;			/* output or error */
	TimestampTz ran_at;
	QueueState	only_from;		/* record it only over this state, unless
								 * it is the task that ran */
	/* read from the row */
	bool		root;			/* no parent */
	Oid			role;
	text	   *workflow;
} Outcome;

static bool
mutate_outcome(Datum *values, bool *nulls, bool *replace, void *arg)
{
	Outcome    *o = arg;
	int			col = o->state == QS_DONE ? T_OUTPUT : T_ERROR;

	if (o->ran_at == 0 && state_from_datum(values[T_STATE - 1]) != o->only_from)
		return false;
	o->root = nulls[T_PARENT - 1];
	o->role = DatumGetObjectId(values[T_ROLE - 1]);
	o->workflow = DatumGetTextPCopy(values[T_WORKFLOW - 1]);
	values[T_STATE - 1] = state_datum(o->state);
	values[col - 1] = JsonbPGetDatum(o->value);
	nulls[col - 1] = o->value == NULL;
	if (o->state == QS_DONE)
	{
		/* done after a retry: the error of the attempt before goes */
		nulls[T_ERROR - 1] = true;
		replace[T_ERROR - 1] = true;
	}
	values[T_FINISHED_AT - 1] = TimestampTzGetDatum(GetCurrentTimestamp());
	nulls[T_FINISHED_AT - 1] = false;
	replace[T_STATE - 1] = replace[col - 1] = replace[T_FINISHED_AT - 1] = true;
	record_attempt(values, nulls, replace, o->ran_at);
	return true;
}

/* A waiting task loses a future: ready when it was the last. */
typedef struct Release
{
	bool		ready;
	TimestampTz run_after;
} Release;

static bool
mutate_release(Datum *values, bool *nulls, bool *replace, void *arg)
{
	Release    *r = arg;
	int32		left = DatumGetInt32(values[T_WAITING_FOR - 1]) - 1;

	if (state_from_datum(values[T_STATE - 1]) != QS_WAITING)
		return false;
	values[T_WAITING_FOR - 1] = Int32GetDatum(left);
	replace[T_WAITING_FOR - 1] = true;
	r->ready = left <= 0;
	if (r->ready)
	{
		r->run_after = GetCurrentTimestamp();
		values[T_STATE - 1] = state_datum(QS_PENDING);
		values[T_RUN_AFTER - 1] = TimestampTzGetDatum(r->run_after);
		replace[T_STATE - 1] = replace[T_RUN_AFTER - 1] = true;
	}
	return true;
}

static bool
mutate_workflow(Datum *values, bool *nulls, bool *replace, void *arg)
{
	Outcome    *o = arg;
	int			col = o->state == QS_DONE ? W_OUTPUT : W_ERROR;
	char	   *state = TextDatumGetCString(values[W_STATE - 1]);

	if (strcmp(state, "running") != 0 || nulls[W_ROOT - 1] ||
		DatumGetInt64(values[W_ROOT - 1]) != o->id)
		return false;
	values[W_STATE - 1] = CStringGetTextDatum(o->state == QS_DONE ? "done" : "failed");
	values[col - 1] = JsonbPGetDatum(o->value);
	nulls[col - 1] = o->value == NULL;
	values[W_FINISHED_AT - 1] = TimestampTzGetDatum(GetCurrentTimestamp());
	nulls[W_FINISHED_AT - 1] = false;
	replace[W_STATE - 1] = replace[col - 1] = replace[W_FINISHED_AT - 1] = true;
	return true;
}

/* Ids of the rows an index scan with one int8 key finds in column col. */
static List *
scan_ids(Relation rel, Oid indexoid, AttrNumber keycol, int64 key,
		 AttrNumber col)
{
	ScanKeyData skey;
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	SysScanDesc scan;
	HeapTuple	tup;
	List	   *ids = NIL;
	bool		isnull;

	ScanKeyInit(&skey, keycol, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(key));
	scan = systable_beginscan(rel, indexoid, true, snapshot, 1, &skey);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		int64	   *id = palloc_object(int64);

		*id = DatumGetInt64(heap_getattr(tup, col, RelationGetDescr(rel), &isnull));
		ids = lappend(ids, id);
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	return ids;
}

static Jsonb *
cancelled_error(Jsonb *failure, int64 future)
{
	JsonbParseState *state = NULL;
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	v;
	JsonbValue *res = NULL;
	char	   *msg = psprintf("future %lld did not complete", (long long) future);

	/* failure's fields, then "cancelled" */
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	if (failure != NULL && JB_ROOT_IS_OBJECT(failure))
	{
		it = JsonbIteratorInit(&failure->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY || tok == WJB_VALUE)
			{
				if (tok == WJB_KEY && v.val.string.len == 9 &&
					memcmp(v.val.string.val, "cancelled", 9) == 0)
				{
					(void) JsonbIteratorNext(&it, &v, true);	/* its value */
					continue;
				}
				pushJsonbValue(&state, tok, &v);
			}
		}
	}
	v.type = jbvString;
	v.val.string.val = "cancelled";
	v.val.string.len = 9;
	pushJsonbValue(&state, WJB_KEY, &v);
	v.val.string.val = msg;
	v.val.string.len = strlen(msg);
	pushJsonbValue(&state, WJB_VALUE, &v);
	res = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(res);
}

/*
 * A pending task that is not running leaves the ready queue (a crash
 * counted to the limit): false if it is not pending, or an executor runs
 * it, or has claimed it meanwhile (then we wait for that executor's
 * commit).
 */
static bool
unready(Relation tasks, int64 id)
{
	QRel	   *ready;
	Snapshot	snapshot;
	QueueState	state;
	TimestampTz run_after;
	ItemPointerData tid;
	LOCKTAG		tag;
	bool		taken;

	task_locktag(&tag, id);
	if (!journal_lock_to_commit(&tag, ExclusiveLock, true))
		return false;
	ready = qrel_open("ready", R_NATTS);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	taken = read_task(tasks, snapshot, id, &state, &run_after, NULL, NULL) &&
		state == QS_PENDING && ready_find(ready->rel, id, run_after, &tid) &&
		ready_delete(ready->rel, &tid, true);
	UnregisterSnapshot(snapshot);
	qrel_close(ready);
	/* as in claim: held only over a task taken */
	if (!taken)
		release_task(tasks, &tag, id);
	return taken;
}

/* One of waiter's futures is done: true if that was its last. */
static bool
release(QRel *tasks, int64 waiter)
{
	Release		r = {false, 0};
	ScanKeyData key;

	task_key(&key, &waiter);
	if (qrel_update(tasks, RelationGetPrimaryKeyIndex(tasks->rel), 1, &key,
					mutate_release, &r) && r.ready)
		ready_add(waiter, r.run_after);
	return r.ready;
}

bool
queue_release(int64 waiter)
{
	QRel	   *tasks = qrel_open("tasks", T_NATTS);
	bool		ready = release(tasks, waiter);

	qrel_close(tasks);
	return ready;
}

/*
 * Record outcome first, and what follows from it for the tasks that
 * depended on it (see queue_finish).  Returns how many became ready.
 */
static int
finish(Outcome *first, int64 *released, int max_released)
{
	QRel	   *tasks;
	QRel	   *waits;
	QRel	   *workflows;
	QRel	   *links;
	List	   *work = list_make1(first);
	int			nreleased = 0;

	tasks = qrel_open("tasks", T_NATTS);
	waits = qrel_open("waits", X_NATTS);
	workflows = qrel_open("workflows", W_NATTS);
	links = qrel_open("links", L_NATTS);

	/* a worklist, not recursion: chains of futures have any length */
	while (work != NIL)
	{
		Outcome    *o = linitial(work);
		ScanKeyData key;
		List	   *ids;
		ListCell   *lc;

		work = list_delete_first(work);
		if (o->ran_at == 0 && o->only_from == QS_PENDING && !unready(tasks->rel, o->id))
			continue;
		task_key(&key, &o->id);
		if (!qrel_update(tasks, RelationGetPrimaryKeyIndex(tasks->rel), 1, &key,
						 mutate_outcome, o))
			continue;

		if (o->root)
		{
			ScanKeyData wkeys[2];

			workflow_keys(wkeys, o->role, o->workflow);
			if (qrel_update(workflows, RelationGetPrimaryKeyIndex(workflows->rel),
							2, wkeys, mutate_workflow, o))
				apiary_finished_at_commit(o->role, o->workflow);
		}

		/* the tasks waiting for this one */
		ids = scan_ids(waits->rel, RelationGetPrimaryKeyIndex(waits->rel),
					   X_FUTURE, o->id, X_TASK);
		foreach(lc, ids)
		{
			int64		waiter = *(int64 *) lfirst(lc);

			if (o->state == QS_DONE)
			{
				if (release(tasks, waiter))
				{
					if (nreleased < max_released)
						released[nreleased] = waiter;
					nreleased++;
				}
			}
			else
			{
				Outcome    *c = palloc0_object(Outcome);

				c->id = waiter;
				c->state = QS_CANCELLED;
				c->value = cancelled_error(o->value, o->id);
				c->only_from = QS_WAITING;
				work = lappend(work, c);
			}
		}

		/* the tasks that returned this one as their future */
		ids = scan_ids(links->rel, RelationGetPrimaryKeyIndex(links->rel),
					   L_FUTURE, o->id, L_TASK);
		foreach(lc, ids)
		{
			Outcome    *l = palloc0_object(Outcome);

			l->id = *(int64 *) lfirst(lc);
			l->state = o->state == QS_DONE ? QS_DONE : QS_FAILED;
			l->value = o->value;
			l->only_from = QS_LINKED;
			work = lappend(work, l);
		}
	}

	qrel_close(links);
	qrel_close(workflows);
	qrel_close(waits);
	qrel_close(tasks);
	return nreleased;
}

int
queue_finish(int64 id, QueueState state, Jsonb *value, TimestampTz ran_at,
			 int64 *released, int max_released)
{
	Outcome    *o = palloc0_object(Outcome);

	Assert(state == QS_DONE || state == QS_FAILED || state == QS_CANCELLED);
	o->id = id;
	o->state = state;
	o->value = value;
	o->ran_at = ran_at;
	/* a crash counted to the limit: the task is pending */
	o->only_from = QS_PENDING;
	return finish(o, released, max_released);
}

void
queue_cancel_waiter(int64 waiter, int64 future, Jsonb *failure)
{
	Outcome    *c = palloc0_object(Outcome);

	c->id = waiter;
	c->state = QS_CANCELLED;
	c->value = cancelled_error(failure, future);
	c->only_from = QS_WAITING;
	(void) finish(c, NULL, 0);
}

void
queue_lock_links(Oid role, text *workflow)
{
	/* the cancel lock first, as everywhere (see queue_future) */
	journal_lock(CANCEL_LOCK_MARKER, role, workflow, ShareLock, true);
	journal_lock(LINK_LOCK_MARKER, role, workflow, ExclusiveLock, false);
}

/* The index of apiary.waits on its task column (waits_task). */
static Oid
waits_by_task(Relation waits)
{
	List	   *indexes = RelationGetIndexList(waits);
	ListCell   *lc;
	Oid			found = InvalidOid;

	foreach(lc, indexes)
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));

		if (!HeapTupleIsValid(tup))
			continue;
		if (((Form_pg_index) GETSTRUCT(tup))->indnatts == 1 &&
			((Form_pg_index) GETSTRUCT(tup))->indkey.values[0] == X_TASK)
			found = lfirst_oid(lc);
		ReleaseSysCache(tup);
	}
	list_free(indexes);
	if (!OidIsValid(found))
		elog(ERROR, "apiary.waits has no index on its task column");
	return found;
}

bool
queue_depends_on(int64 future, int64 task)
{
	QRel	   *tasks = qrel_open("tasks", T_NATTS);
	QRel	   *waits = qrel_open("waits", X_NATTS);
	TupleDesc	desc = RelationGetDescr(tasks->rel);
	Oid			by_task = waits_by_task(waits->rel);
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	HASHCTL		ctl = {.keysize = sizeof(int64), .entrysize = sizeof(int64),
	.hcxt = CurrentMemoryContext};
	HTAB	   *seen = hash_create("apiary futures followed", 64, &ctl,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	List	   *todo = list_make1(&future);
	bool		depends = false;

	while (todo != NIL && !depends)
	{
		int64		id = *(int64 *) linitial(todo);
		bool		found;
		ScanKeyData key;
		SysScanDesc scan;
		HeapTuple	tup;
		bool		isnull;

		todo = list_delete_first(todo);
		if (id == task)
		{
			depends = true;
			break;
		}
		hash_search(seen, &id, HASH_ENTER, &found);
		if (found)
			continue;
		CHECK_FOR_INTERRUPTS();

		/* an unfinished task depends on the future it returned ... */
		task_key(&key, &id);
		scan = systable_beginscan(tasks->rel, RelationGetPrimaryKeyIndex(tasks->rel),
								  true, snapshot, 1, &key);
		tup = systable_getnext(scan);
		if (!HeapTupleIsValid(tup) ||
			queue_finished_state(state_from_datum(heap_getattr(tup, T_STATE, desc, &isnull))))
		{
			systable_endscan(scan);
			continue;
		}
		{
			Datum		d = heap_getattr(tup, T_LINKED_TO, desc, &isnull);

			if (!isnull)
			{
				int64	   *linked = palloc_object(int64);

				*linked = DatumGetInt64(d);
				todo = lappend(todo, linked);
			}
		}
		systable_endscan(scan);

		/* ... and on those it waits for */
		todo = list_concat(todo, scan_ids(waits->rel, by_task, X_TASK, id, X_FUTURE));
	}
	hash_destroy(seen);
	UnregisterSnapshot(snapshot);
	qrel_close(waits);
	qrel_close(tasks);
	return depends;
}

typedef struct Link
{
	int64		future;
	TimestampTz ran_at;
} Link;

static bool
mutate_link(Datum *values, bool *nulls, bool *replace, void *arg)
{
	Link	   *l = arg;

	values[T_STATE - 1] = state_datum(QS_LINKED);
	values[T_LINKED_TO - 1] = Int64GetDatum(l->future);
	nulls[T_LINKED_TO - 1] = false;
	/* the attempt succeeded: an error of the one before goes */
	nulls[T_ERROR - 1] = true;
	replace[T_STATE - 1] = replace[T_LINKED_TO - 1] = replace[T_ERROR - 1] = true;
	record_attempt(values, nulls, replace, l->ran_at);
	return true;
}

void
queue_link(int64 id, int64 future, TimestampTz ran_at, bool failed,
		   Jsonb *error)
{
	QRel	   *tasks;
	ScanKeyData key;
	Link		l = {future, ran_at};
	bool		linked;

	tasks = qrel_open("tasks", T_NATTS);
	task_key(&key, &id);
	linked = qrel_update(tasks, RelationGetPrimaryKeyIndex(tasks->rel), 1, &key,
						 mutate_link, &l);
	if (linked)
		insert_pair("links", Int64GetDatum(future), Int64GetDatum(id));
	qrel_close(tasks);

	/* linked all the same, for apiary_resume to link it again */
	if (linked && failed)
	{
		Outcome    *o = palloc0_object(Outcome);

		o->id = id;
		o->state = QS_FAILED;
		o->value = error;
		o->only_from = QS_LINKED;
		(void) finish(o, NULL, 0);
	}
}

typedef struct Retry
{
	double		delay;
	TimestampTz ran_at;
	Jsonb	   *error;
	TimestampTz run_after;		/* set */
} Retry;

static bool
mutate_retry(Datum *values, bool *nulls, bool *replace, void *arg)
{
	Retry	   *r = arg;

	if (state_from_datum(values[T_STATE - 1]) != QS_PENDING)
		return false;

	r->run_after = GetCurrentTimestamp() + (int64) (r->delay * USECS_PER_SEC);
	values[T_RUN_AFTER - 1] = TimestampTzGetDatum(r->run_after);
	values[T_ERROR - 1] = JsonbPGetDatum(r->error);
	nulls[T_ERROR - 1] = false;
	replace[T_RUN_AFTER - 1] = replace[T_ERROR - 1] = true;
	record_attempt(values, nulls, replace, r->ran_at);
	return true;
}

void
queue_retry(int64 id, double delay, TimestampTz ran_at, Jsonb *error)
{
	QRel	   *tasks;
	ScanKeyData key;
	Retry		r = {delay, ran_at, error, 0};

	tasks = qrel_open("tasks", T_NATTS);
	task_key(&key, &id);
	/* its claim took its ready row */
	if (qrel_update(tasks, RelationGetPrimaryKeyIndex(tasks->rel), 1, &key,
					mutate_retry, &r))
	{
		ready_add(id, r.run_after);
		/*
		 * This executor may take other work first: an idle one looks, and
		 * naps until the retry is due.
		 */
		apiary_wake_at_commit(1);
	}
	qrel_close(tasks);
}

typedef struct Crash
{
	int			crashes;
	char	   *function;
} Crash;

static bool
mutate_crash(Datum *values, bool *nulls, bool *replace, void *arg)
{
	Crash	   *c = arg;

	if (state_from_datum(values[T_STATE - 1]) != QS_PENDING)
		return false;
	c->crashes = DatumGetInt32(values[T_CRASHES - 1]) + 1;
	c->function = TextDatumGetCString(values[T_FUNCTION - 1]);
	values[T_CRASHES - 1] = Int32GetDatum(c->crashes);
	replace[T_CRASHES - 1] = true;
	return true;
}

int
queue_count_crash(int64 id, char **function)
{
	QRel	   *tasks;
	ScanKeyData key;
	Crash		c = {0, NULL};
	Snapshot	snapshot;
	QueueTask	task;
	QueueState	state;
	TimestampTz run_after;
	bool		pending;

	tasks = qrel_open("tasks", T_NATTS);
	task_key(&key, &id);

	/*
	 * The workflow's cancel lock before the task's row, as at every task's
	 * end: a cancel changes the row after taking its ready row, which a
	 * count at the limit takes next (the two deadlocked, and the count was
	 * lost).
	 */
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	pending = read_task(tasks->rel, snapshot, id, &state, &run_after, &task, NULL) &&
		state == QS_PENDING;
	UnregisterSnapshot(snapshot);
	if (pending)
		journal_lock(CANCEL_LOCK_MARKER, task.role, task.workflow, ShareLock, true);
	if (!pending ||
		!qrel_update(tasks, RelationGetPrimaryKeyIndex(tasks->rel), 1, &key,
					 mutate_crash, &c))
		c.crashes = 0;			/* not pending (any more) */
	qrel_close(tasks);
	*function = c.function;
	return c.crashes;
}

/* ---------------------------------------------------------------------
 * Cancelling
 * ---------------------------------------------------------------------
 */

/* A task's error's "cancelled" when the workflow's deadline cancelled it */
#define TIMEOUT_REASON "by the workflow's timeout"

bool
queue_workflow_cancelled(Oid role, text *workflow, int64 task, bool *timed_out)
{
	/* the last workflow this process found running, and when */
	static Oid	checked_role = InvalidOid;
	static text *checked_workflow = NULL;
	static uint64 checked_changes = 0;
	uint64		changes = 0;
	QRel	   *workflows;
	Relation	rel;
	Snapshot	snapshot;
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tup;
	bool		cancelled = false;
	bool		finished = false;
	bool		isnull;

	*timed_out = false;
	/*
	 * Held to our commit, also when the task's subtransaction rolls back
	 * on what this finds: a cancel waits for it, and we for a cancel, and
	 * a resume sees the task as it ended.
	 */
	journal_lock(CANCEL_LOCK_MARKER, role, workflow, ShareLock, true);

	/*
	 * A cancel counts itself in shared memory once it holds its lock
	 * (queue_lock_workflow), so while we hold ours no cancel of this
	 * workflow can count.  The count unchanged since this process last
	 * found the workflow running, under this lock in an earlier
	 * transaction, means no cancel of it has begun since: the next step of
	 * a chain skips the read.
	 */
	if (apiary_shared != NULL)
	{
		changes = pg_atomic_read_u64(&apiary_shared->workflow_changes);
		if (checked_workflow != NULL && changes == checked_changes &&
			role == checked_role &&
			DatumGetBool(DirectFunctionCall2Coll(texteq, C_COLLATION_OID,
												 PointerGetDatum(workflow),
												 PointerGetDatum(checked_workflow))))
			return false;
	}

	workflows = qrel_open("workflows", W_NATTS);
	rel = workflows->rel;
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	workflow_keys(keys, role, workflow);
	scan = systable_beginscan(rel, RelationGetPrimaryKeyIndex(rel), true,
							  snapshot, 2, keys);
	tup = systable_getnext(scan);

	/*
	 * Gone, or another by the same id (its root queued after this task): a
	 * cancelled workflow's, pruned while the task ran.
	 */
	cancelled = !HeapTupleIsValid(tup) ||
		DatumGetInt64(heap_getattr(tup, W_ROOT, RelationGetDescr(rel), &isnull)) > task;
	if (!cancelled)
	{
		char	   *state = TextDatumGetCString(heap_getattr(tup, W_STATE,
															 RelationGetDescr(rel), &isnull));

		cancelled = strcmp(state, "cancelled") == 0;
		finished = !cancelled && strcmp(state, "running") != 0;
		/* the launcher's cancel at the deadline names the timeout */
		if (cancelled)
		{
			Datum		error = heap_getattr(tup, W_ERROR, RelationGetDescr(rel), &isnull);

			*timed_out = !isnull &&
				getKeyJsonValueFromContainer(&DatumGetJsonbP(error)->root,
											 "timeout", strlen("timeout"), NULL) != NULL;
		}
	}
	systable_endscan(scan);

	/* a finished workflow's cancel marks its running tasks' rows */
	if (finished)
	{
		QRel	   *tasks = qrel_open("tasks", T_NATTS);
		QueueState	own;
		TimestampTz run_after;
		Jsonb	   *error;

		cancelled = read_task(tasks->rel, snapshot, task, &own, &run_after, NULL, &error) &&
			own == QS_CANCELLED;
		/* by the deadline, which left the workflow's result standing */
		if (cancelled && error != NULL)
		{
			JsonbValue *why = getKeyJsonValueFromContainer(&error->root, "cancelled",
														   strlen("cancelled"), NULL);

			*timed_out = why != NULL && why->type == jbvString &&
				why->val.string.len == strlen(TIMEOUT_REASON) &&
				memcmp(why->val.string.val, TIMEOUT_REASON, why->val.string.len) == 0;
		}
		qrel_close(tasks);
	}
	UnregisterSnapshot(snapshot);
	qrel_close(workflows);

	if (apiary_shared != NULL && !cancelled)
	{
		if (checked_workflow != NULL)
			pfree(checked_workflow);
		checked_workflow = MemoryContextAlloc(TopMemoryContext, VARSIZE_ANY(workflow));
		memcpy(checked_workflow, workflow, VARSIZE_ANY(workflow));
		checked_role = role;
		checked_changes = changes;
	}
	return cancelled;
}

void
queue_lock_workflow(Oid role, text *workflow)
{
	journal_lock(CANCEL_LOCK_MARKER, role, workflow, ExclusiveLock, false);
	if (apiary_shared != NULL)
		pg_atomic_fetch_add_u64(&apiary_shared->workflow_changes, 1);
}
