/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher background worker, apiary's shared memory, and wake-ups.
 *
 * With apiary in shared_preload_libraries, the postmaster starts one
 * launcher.  It connects to apiary.database and, once a second or when
 * signalled, checks that the server is a primary (not in recovery) and that
 * the extension is installed there; then it keeps apiary.workers executor
 * workers running (executor.c), starting them as dynamic background
 * workers and starting again any that exit.  On a standby it stays idle
 * until promotion; if the extension is dropped it stops the executors.  It
 * rereads the configuration on SIGHUP (apiary.workers may change) and exits
 * on SIGTERM.  Before starting executors it counts crashes of the tasks
 * they were running when the server went down (executor.c).  It also does
 * the housekeeping: retention (deleting what is older than
 * apiary.retention), vacuuming apiary.ready as executors take its rows,
 * and keeping the provenance collector (provenance.c) running while
 * apiary.provenance is on.
 *
 * Shared memory holds one slot per executor, with its latch and whether it
 * is idle, and a condition variable.  A transaction that makes tasks ready
 * asks, via apiary_wake_at_commit, for that many idle executors' latches to
 * be set when it commits, so a queued task starts at once, with no polling
 * interval; one that finishes a workflow asks for the condition variable to
 * be broadcast, which wakes apiary_result's waiters.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "commands/vacuum.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "pgstat.h"
#include "port/pg_bitutils.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "executor.h"
#include "guc.h"
#include "journal.h"
#include "launcher.h"
#include "provenance.h"
#include "registry.h"
#include "workflow.h"

PG_FUNCTION_INFO_V1(apiary_on_ddl_command_start);

ApiaryShared *apiary_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_process_utility_hook = NULL;

static int	wake_at_commit = 0;
/* tasks to hand to the first executors woken at commit */
#define MAX_HANDED 8
static int64 handed_at_commit[MAX_HANDED];
static int	nhanded = 0;
/* the condition variables to broadcast at commit, by index */
static uint64 finished_at_commit[APIARY_RESULT_CVS / 64];

static void apiary_wake_executors(int n);
static void end_drop(void);

/* The nesting level of the (sub)transaction that began this backend's drop */
static int	drop_level = 0;

static void
apiary_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(ApiaryShared)));
}

static void
apiary_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	apiary_shared = ShmemInitStruct("apiary", sizeof(ApiaryShared), &found);
	if (!found)
	{
		memset(apiary_shared, 0, sizeof(ApiaryShared));
		SpinLockInit(&apiary_shared->mutex);
		for (int i = 0; i < APIARY_RESULT_CVS; i++)
			ConditionVariableInit(&apiary_shared->finished[i]);
		pg_atomic_init_u64(&apiary_shared->workflow_changes, 0);
		pg_atomic_init_u64(&apiary_shared->ready_deleted, 0);
		pg_atomic_init_u64(&apiary_shared->launcher_woken, 0);
		for (int i = 0; i < APIARY_MAX_WORKERS; i++)
			pg_atomic_init_u64(&apiary_shared->slots[i].running, 0);
		apiary_shared->provenance_keyed =
			provenance_load_key(apiary_shared->provenance_key);
	}
	LWLockRelease(AddinShmemInitLock);
}

static void
apiary_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit > 0)
				apiary_wake_executors(wake_at_commit);
			for (int w = 0; w < lengthof(finished_at_commit) && apiary_shared != NULL; w++)
				for (uint64 bits = finished_at_commit[w]; bits != 0; bits &= bits - 1)
					ConditionVariableBroadcast(&apiary_shared->finished[w * 64 + pg_rightmost_one_pos64(bits)]);
			wake_at_commit = 0;
			nhanded = 0;
			memset(finished_at_commit, 0, sizeof(finished_at_commit));
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* a prepared one's commit wakes them (apiary_process_utility) */
			wake_at_commit = 0;
			nhanded = 0;
			memset(finished_at_commit, 0, sizeof(finished_at_commit));
			break;
		case XACT_EVENT_PRE_PREPARE:
			/* the drop's end would come from another session: refuse it */
			if (drop_level > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that drops extension apiary")));
			return;
		default:
			return;
	}
	end_drop();
}

/*
 * COMMIT PREPARED: what the prepared transaction queued, or finished, is
 * known only to the session that prepared it.  The commit wakes every idle
 * executor, and every apiary_result waiter, as if it had made it all.
 */
static void
apiary_process_utility(PlannedStmt *pstmt, const char *queryString,
					   bool readOnlyTree, ProcessUtilityContext context,
					   ParamListInfo params, QueryEnvironment *queryEnv,
					   DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;

	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, queryString, readOnlyTree, context,
								  params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
	if (IsA(stmt, TransactionStmt) &&
		((TransactionStmt *) stmt)->kind == TRANS_STMT_COMMIT_PREPARED)
	{
		apiary_wake_at_commit(APIARY_WAKE_ALL);
		memset(finished_at_commit, 0xff, sizeof(finished_at_commit));
	}
}

/*
 * A subtransaction that began a DROP EXTENSION apiary ended: rolled back,
 * the drop is over; committed (RELEASE), the drop is its parent's now, and
 * ends with it.
 */
static void
apiary_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (drop_level < level)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
		end_drop();
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		drop_level = level - 1;
}

/*
 * This backend's DROP EXTENSION apiary is over, one way or the other.  The
 * launcher looks at once (rolled back, the executors come back without
 * waiting for its next look).  A stale latch only wakes some process.
 */
static void
end_drop(void)
{
	Latch	   *latch;

	if (drop_level == 0 || apiary_shared == NULL)
		return;
	drop_level = 0;
	SpinLockAcquire(&apiary_shared->mutex);
	apiary_shared->drops--;
	SpinLockRelease(&apiary_shared->mutex);
	latch = apiary_shared->launcher_latch;
	if (latch != NULL)
		SetLatch(latch);
}

bool
apiary_drop_pending(void)
{
	bool		pending;

	SpinLockAcquire(&apiary_shared->mutex);
	pending = apiary_drop_pending_locked();
	SpinLockRelease(&apiary_shared->mutex);
	return pending;
}

/*
 * Event trigger at the start of DROP EXTENSION: when it drops apiary in
 * the executors' database, the executors stand down first.  A task running
 * would hold locks on apiary's tables while the drop takes them one by one,
 * and the two could deadlock (40P01, one of them failing).  Its executor is
 * terminated instead (its transaction rolls back, as every workflow is
 * about to go), and the launcher starts none until the dropping
 * transaction ends: if it rolls back, they resume where they were.
 */
Datum
apiary_on_ddl_command_start(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata = (EventTriggerData *) fcinfo->context;
	DropStmt   *stmt;
	ListCell   *lc;
	bool		apiary = false;
	pid_t		pids[APIARY_MAX_WORKERS];
	int			npids = 0;
	Oid			extension;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" was not called by event trigger manager",
						"apiary.on_ddl_command_start")));
	registry_before_ddl(trigdata->parsetree);
	if (apiary_shared == NULL || !IsA(trigdata->parsetree, DropStmt))
		PG_RETURN_VOID();
	stmt = (DropStmt *) trigdata->parsetree;
	if (stmt->removeType != OBJECT_EXTENSION)
		PG_RETURN_VOID();
	foreach(lc, stmt->objects)
		apiary |= IsA(lfirst(lc), String) && strcmp(strVal(lfirst(lc)), "apiary") == 0;
	if (!apiary || !apiary_in_database() || drop_level > 0)
		PG_RETURN_VOID();
	/* the trigger fires before the drop checks its rights: check them here */
	extension = get_extension_oid("apiary", true);
	if (!OidIsValid(extension) || !pg_extension_ownercheck(extension, GetUserId()))
		PG_RETURN_VOID();

	/*
	 * Under the mutex that claim_slot takes too: an executor that claims its
	 * slot later sees the drop and goes, and one that claimed it before is
	 * in the list.
	 */
	drop_level = GetCurrentTransactionNestLevel();
	SpinLockAcquire(&apiary_shared->mutex);
	apiary_shared->drops++;
	for (int i = 0; i < APIARY_MAX_WORKERS; i++)
		if (apiary_shared->slots[i].pid != 0)
			pids[npids++] = apiary_shared->slots[i].pid;
	SpinLockRelease(&apiary_shared->mutex);
	for (int i = 0; i < npids; i++)
		(void) kill(pids[i], SIGTERM);
	/* apiary_result's waiters would hold the drop up, waiting in vain */
	for (int i = 0; i < APIARY_RESULT_CVS; i++)
		ConditionVariableBroadcast(&apiary_shared->finished[i]);
	PG_RETURN_VOID();
}

/* Called from _PG_init while preloading. */
void
apiary_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = apiary_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = apiary_shmem_startup;
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = apiary_process_utility;
	RegisterXactCallback(apiary_xact_callback, NULL);
	RegisterSubXactCallback(apiary_subxact_callback, NULL);
}

void
apiary_wake_at_commit(int n)
{
	wake_at_commit = n > APIARY_WAKE_ALL - wake_at_commit ? APIARY_WAKE_ALL : wake_at_commit + n;
}

void
apiary_hand_at_commit(int64 task)
{
	if (nhanded < MAX_HANDED)
		handed_at_commit[nhanded++] = task;
	apiary_wake_at_commit(1);
}

static int
finished_index(Oid role, text *workflow)
{
	uint32		h = hash_bytes((unsigned char *) VARDATA_ANY(workflow),
							 VARSIZE_ANY_EXHDR(workflow));

	return hash_combine(h, murmurhash32(role)) % APIARY_RESULT_CVS;
}

/* The condition variable apiary_result sleeps on for this workflow. */
ConditionVariable *
apiary_finished_cv(Oid role, text *workflow)
{
	return &apiary_shared->finished[finished_index(role, workflow)];
}

/* Tell the workflow's waiters when this transaction commits. */
void
apiary_finished_at_commit(Oid role, text *workflow)
{
	int			i = finished_index(role, workflow);

	finished_at_commit[i / 64] |= UINT64CONST(1) << (i % 64);
}

bool
apiary_finishes_at_commit(void)
{
	for (int i = 0; i < lengthof(finished_at_commit); i++)
		if (finished_at_commit[i] != 0)
			return true;
	return false;
}

/*
 * Wake up to n idle executors, one per task that became ready.  An
 * executor marks itself idle before it takes the snapshot it looks for
 * work with, and this runs after our commit is visible: either it sees our
 * tasks, or we see it idle and set its latch, so no wake-up can fall
 * between "found nothing" and going to sleep.  Busy executors look for
 * work again as soon as they are done, and are left alone.  The first
 * ones woken are handed the tasks the transaction named: each tries its
 * own first, without looking through apiary.ready for the oldest (which,
 * after a burst, passes many dead index entries until a vacuum).  A
 * handed task is a hint: it stays in apiary.ready for any executor.
 */
static void
wake_idle(int n, const int64 *handed, int nhanded)
{
	Latch	   *latches[APIARY_MAX_WORKERS];
	int			nlatches = 0;
	bool		executors = false;

	if (apiary_shared == NULL)
		return;
	SpinLockAcquire(&apiary_shared->mutex);
	for (int i = 0; i < APIARY_MAX_WORKERS && nlatches < n; i++)
	{
		ExecutorSlot *slot = &apiary_shared->slots[i];

		executors |= slot->pid != 0;
		/*
		 * An executor about to retire would take the wake-up with it; one
		 * waking itself (settling a failed attempt, idle meanwhile) would
		 * cut short the nap that spaces its retries, and looks anyway.
		 */
		if (slot->pid != 0 && slot->pid != MyProcPid && slot->idle && !slot->retire)
		{
			slot->idle = false;
			if (nlatches < nhanded)
				slot->handed = handed[nlatches];
			latches[nlatches++] = slot->latch;
		}
	}
	SpinLockRelease(&apiary_shared->mutex);
	for (int i = 0; i < nlatches; i++)
		SetLatch(latches[i]);

	/*
	 * No executor yet (the extension was just created, say): the launcher
	 * starts them now rather than at its next look, up to a second later;
	 * at most every 100 ms, should none be able to start.  A stale latch
	 * (launcher gone) only wakes some process needlessly.
	 */
	if (!executors && apiary_workers > 0)
	{
		TimestampTz now = GetCurrentTimestamp();
		Latch	   *latch = apiary_shared->launcher_latch;

		if (latch != NULL &&
			now - (TimestampTz) pg_atomic_read_u64(&apiary_shared->launcher_woken) >= 100 * 1000)
		{
			pg_atomic_write_u64(&apiary_shared->launcher_woken, (uint64) now);
			SetLatch(latch);
		}
	}
}

static void
apiary_wake_executors(int n)
{
	wake_idle(n, handed_at_commit, nhanded);
}

void
apiary_pass_on(int64 task)
{
	wake_idle(1, &task, 1);
}

void
apiary_ready_deleted(void)
{
	uint64		n;
	Latch	   *latch;

	if (apiary_shared == NULL || apiary_ready_vacuum_threshold == 0)
		return;
	n = pg_atomic_add_fetch_u64(&apiary_shared->ready_deleted, 1);
	/* a stale latch (launcher gone) only wakes some process needlessly */
	latch = apiary_shared->launcher_latch;
	if (n % apiary_ready_vacuum_threshold == 0 && latch != NULL)
		SetLatch(latch);
}

bool
apiary_executor_idle(int slot, int64 *handed)
{
	ExecutorSlot *s = &apiary_shared->slots[slot];
	bool		retire;

	SpinLockAcquire(&apiary_shared->mutex);
	retire = s->retire;
	s->idle = !retire;
	if (handed != NULL)
	{
		*handed = s->handed;
		s->handed = 0;
	}
	SpinLockRelease(&apiary_shared->mutex);
	return retire;
}

/*
 * An executor is idle from before its snapshot to its claim, so a commit
 * in between wakes it (wake_idle takes it off the idle ones, handing it the
 * task), yet its scan, with the older snapshot, may take another task.
 * Kept, that wake-up would have the new task wait for this one to finish,
 * however many executors sleep: it goes on to another idle executor,
 * unless it was for the task claimed.  So does the watch over tasks due
 * later of an executor that napped until the first of them.
 */
void
apiary_executor_busy(int slot, int64 claimed, bool watching_due)
{
	ExecutorSlot *s = &apiary_shared->slots[slot];
	bool		woken;
	int64		handed;

	SpinLockAcquire(&apiary_shared->mutex);
	woken = !s->idle && !s->retire;
	handed = s->handed;
	s->idle = false;
	if (woken)
		s->handed = 0;
	SpinLockRelease(&apiary_shared->mutex);
	if (woken && handed != claimed)
		wake_idle(1, &handed, 1);
	/* the executor woken looks, and naps until the first due */
	if (watching_due)
		wake_idle(1, NULL, 0);
}

/*
 * Ask the executor in slot to exit once its task is done, or not to after
 * all.  It exits between tasks, so a task is never cut short by a lower
 * apiary.workers (a shutdown, fast or immediate, still ends it).
 */
static void
set_retire(int slot, bool retire)
{
	Latch	   *latch = NULL;

	SpinLockAcquire(&apiary_shared->mutex);
	if (retire && !apiary_shared->slots[slot].retire)
		latch = apiary_shared->slots[slot].latch;
	apiary_shared->slots[slot].retire = retire;
	SpinLockRelease(&apiary_shared->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

void
apiary_register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* from consistency on, so that it is there, idle, on a hot standby */
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "apiary");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "apiary_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "apiary launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "apiary launcher");
	RegisterBackgroundWorker(&worker);
}

static bool
extension_installed(void)
{
	bool		installed;

	StartTransactionCommand();
	installed = OidIsValid(get_extension_oid("apiary", true));
	CommitTransactionCommand();
	return installed;
}

/* A worker the launcher starts, in this library, never restarted. */
static void
describe_worker(BackgroundWorker *worker, const char *function, const char *type,
				Datum arg)
{
	memset(worker, 0, sizeof(*worker));
	worker->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker->bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker->bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker->bgw_library_name, BGW_MAXLEN, "apiary");
	snprintf(worker->bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker->bgw_name, BGW_MAXLEN, "%s", type);
	snprintf(worker->bgw_type, BGW_MAXLEN, "%s", type);
	worker->bgw_main_arg = arg;
	worker->bgw_notify_pid = MyProcPid;
}

/*
 * Start an executor (in slot) or the provenance collector.  The launcher
 * tries again every second while a worker is missing; it says so once, not
 * every time, until a worker starts again.
 */
static BackgroundWorkerHandle *
start_worker(const char *function, const char *type, int slot)
{
	static bool no_room_reported[2];	/* collector, executors */
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	bool		executor = strcmp(type, "apiary executor") == 0;

	describe_worker(&worker, function, type, Int32GetDatum(slot));
	if (executor)
		snprintf(worker.bgw_name, BGW_MAXLEN, "%s %d", type, slot);

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		if (!no_room_reported[executor])
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("could not start %s", worker.bgw_name),
					 errdetail("The launcher keeps trying, without saying so again until one starts."),
					 errhint("Raise max_worker_processes: it must leave room for the launcher, apiary.workers executors%s, "
							 "parallel query workers and logical replication workers.",
							 executor ? "" : " and the provenance collector")));
		no_room_reported[executor] = true;
		return NULL;
	}
	no_room_reported[executor] = false;
	return handle;
}

/*
 * The cluster has just been upgraded (pg_upgrade): in every other database
 * apiary may be installed in, where no launcher runs, resolve the
 * registrations too, one short-lived worker at a time.  Only then: a
 * connection to a database holds up CREATE DATABASE from it as template.
 */
static void
adopt_elsewhere(void)
{
	MemoryContext outer = CurrentMemoryContext;
	List	   *databases = NIL;
	ListCell   *lc;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT oid FROM pg_catalog.pg_database"
					" WHERE datallowconn AND NOT datistemplate", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Oid			db = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
													   SPI_tuptable->tupdesc, 1, &isnull));

		if (db != MyDatabaseId)
		{
			MemoryContext old = MemoryContextSwitchTo(outer);

			databases = lappend_oid(databases, db);
			MemoryContextSwitchTo(old);
		}
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();

	foreach(lc, databases)
	{
		BackgroundWorker worker;
		BackgroundWorkerHandle *handle;

		describe_worker(&worker, "apiary_registry_worker_main", "apiary registry",
						ObjectIdGetDatum(lfirst_oid(lc)));
		if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		{
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("could not start a worker to resolve apiary's registrations in the other databases after the upgrade"),
					 errhint("Run SELECT apiary.adopt_registrations() as a superuser in each database where apiary is installed.")));
			break;
		}
		if (WaitForBackgroundWorkerShutdown(handle) == BGWH_POSTMASTER_DIED)
			break;
		pfree(handle);
	}
	list_free(databases);
}

/*
 * Delete finished workflows and keyed calls older than apiary.retention, a
 * batch per transaction, until a batch comes back short or a limit per
 * call is reached (the launcher has executors to look after).  Returns
 * whether it stopped at that limit.
 */
#define PRUNE_BATCH 500
#define PRUNE_BATCHES 20

static bool
prune(void)
{
	for (int i = 0; i < PRUNE_BATCHES; i++)
	{
		int			n = 0;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (OidIsValid(get_namespace_oid("apiary", true)) &&
			OidIsValid(get_relname_relid("stats", get_namespace_oid("apiary", true))))
		{
			Oid			types[2] = {INTERVALOID, INT4OID};
			Datum		values[2];
			bool		isnull;

			values[0] = DirectFunctionCall3(interval_in,
											CStringGetDatum(psprintf("%d s", apiary_retention)),
											ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
			values[1] = Int32GetDatum(PRUNE_BATCH);
			journal_execute("SELECT apiary.prune($1, $2)", NULL, 2, types, values,
							NULL, SPI_OK_SELECT);
			n = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		}
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_stat(false);
		if (n < PRUNE_BATCH)
			return false;
		CHECK_FOR_INTERRUPTS();
	}
	return true;
}

/*
 * VACUUM apiary.ready.  Executors take the oldest ready task first, so the
 * index entries of the rows they delete pile up at the start of the index,
 * where every claim's scan begins.  Scans mark them dead once they see
 * them, but only a vacuum removes the pages they fill: until one comes,
 * every claim walks them all (after a burst of a few tens of thousands of
 * tasks, hundreds of pages; autovacuum comes by once a minute at most).
 * Without truncating the table (that would lock the executors out), and
 * not while another vacuum (autovacuum) or a lock holder has the table.
 * (A housekeeping step: it returns false.)
 */
static bool
vacuum_ready(void)
{
	static MemoryContext cxt = NULL;
	MemoryContext old;
	Oid			nsp,
				relid = InvalidOid;

	if (cxt == NULL)
		cxt = AllocSetContextCreate(TopMemoryContext, "apiary vacuum",
									ALLOCSET_SMALL_SIZES);
	MemoryContextReset(cxt);	/* also what an error left behind */
	old = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	nsp = get_namespace_oid("apiary", true);
	if (OidIsValid(nsp))
		relid = get_relname_relid("ready", nsp);
	if (OidIsValid(relid) && ConditionalLockRelationOid(relid, ShareUpdateExclusiveLock))
	{
		VacuumStmt *stmt;
		MemoryContext portal;

		UnlockRelationOid(relid, ShareUpdateExclusiveLock);
		/* vacuum commits and starts transactions: nothing in theirs lasts */
		MemoryContextSwitchTo(cxt);
		stmt = makeNode(VacuumStmt);
		/* skip_locked: autovacuum may come in after the unlock */
		stmt->options = list_make3(makeDefElem("index_cleanup", (Node *) makeString("on"), -1),
								   makeDefElem("truncate", (Node *) makeString("off"), -1),
								   makeDefElem("skip_locked", (Node *) makeString("on"), -1));
		/* by oid alone: a table dropped meanwhile is skipped quietly */
		stmt->rels = list_make1(makeVacuumRelation(NULL, relid, NIL));
		stmt->is_vacuumcmd = true;
		portal = PortalContext;
		PortalContext = cxt;	/* vacuum's own context goes under it */
		ExecVacuum(make_parsestate(NULL), stmt, true);
		PortalContext = portal;
	}
	CommitTransactionCommand();
	MemoryContextSwitchTo(old);
	return false;
}

/* Does the comma-separated list name item? */
static bool
names_item(const char *list, const char *item)
{
	char	   *copy = pstrdup(list);
	List	   *names;
	ListCell   *lc;
	bool		found = false;

	if (SplitIdentifierString(copy, ',', &names))
		foreach(lc, names)
			found = found || strcmp(lfirst(lc), item) == 0;
	/* (the launcher calls this on every pass, in a long-lived context) */
	list_free(names);
	pfree(copy);
	return found;
}

static BackgroundWorkerHandle *collector = NULL;
static bool provenance_installed = false;	/* apiary is, in apiary.database */

/*
 * Provenance: while it is on, keep the collector running (provenance.c);
 * it owns the slot apiary_provenance, and drops it itself when provenance
 * is turned off.  A slot left behind with nobody on it (provenance turned
 * off while the collector was not running) is dropped here, so that it
 * never holds WAL back.  (A housekeeping step: it returns false.)
 */
static bool
provenance_step(void)
{
	bool		installed = provenance_installed;
	static bool warned = false;
	static TimestampTz retry_at = 0;
	bool		want = installed && apiary_provenance != APIARY_PROVENANCE_OFF;
	const char *why = NULL;
	const char *fix = NULL;
	const char *plugins = GetConfigOption("output_plugin_libraries", true, false);
	pid_t		pid;

	if (want && wal_level < WAL_LEVEL_LOGICAL)
	{
		why = "wal_level is not logical";
		fix = "Set wal_level = logical (a restart)";
	}
	else if (want && plugins != NULL && !names_item(plugins, "apiary"))
	{
		why = "output_plugin_libraries does not list apiary";
		fix = "Add apiary to output_plugin_libraries";
	}
	if (why != NULL)
	{
		if (!warned)
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("apiary.provenance records nothing: %s", why),
					 errhint("%s; apiary.provenance_status shows the state.", fix)));
		warned = true;
		want = false;
	}
	else if (want)
		warned = false;

	if (collector != NULL &&
		GetBackgroundWorkerPid(collector, &pid) == BGWH_STOPPED)
	{
		pfree(collector);
		collector = NULL;
	}
	/*
	 * A collector that keeps failing is started again every 10 s; one
	 * that a launcher before this one started may be running still.
	 */
	if (want && collector == NULL && GetCurrentTimestamp() >= retry_at &&
		!apiary_collector_running())
	{
		collector = start_worker("apiary_provenance_main", "apiary provenance", 0);
		retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 10 * 1000);
	}
	if (want || collector != NULL)
		return false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/*
	 * Fixed text, run as the launcher (also after DROP EXTENSION).  Also a
	 * slot left in the database apiary.database named before a restart:
	 * it too would hold WAL that nothing decodes.
	 */
	if (SPI_execute("SELECT pg_catalog.pg_drop_replication_slot(slot_name)"
					" FROM pg_catalog.pg_replication_slots"
					" WHERE slot_name OPERATOR(pg_catalog.=) '" PROVENANCE_SLOT "'"
					" AND (plugin OPERATOR(pg_catalog.=) 'apiary'"
					"      OR database OPERATOR(pg_catalog.=) pg_catalog.current_database())"
					" AND NOT active", false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for replication slot \"%s\"", PROVENANCE_SLOT);
	if (SPI_processed > 0)
		ereport(LOG, (errmsg("apiary provenance: dropped replication slot \"%s\", which nothing decodes: %s",
							 PROVENANCE_SLOT,
							 !installed ? "apiary is not installed in apiary.database" :
							 why != NULL ? why : "apiary.provenance is off")));
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return false;
}

/* Does a live executor hold slot? */
static bool
slot_held(int slot)
{
	pid_t		pid;

	SpinLockAcquire(&apiary_shared->mutex);
	pid = apiary_shared->slots[slot].pid;
	SpinLockRelease(&apiary_shared->mutex);
	return pid != 0 && kill(pid, 0) == 0;
}

/*
 * Keep exactly n executors running; those beyond n finish their task first.
 * (Every slot is told, also those of executors this launcher did not start:
 * a launcher restarted after an error has no handles for them.)
 */
static void
supervise(BackgroundWorkerHandle **handles, int n)
{
	for (int i = 0; i < APIARY_MAX_WORKERS; i++)
	{
		pid_t		pid;

		/*
		 * An executor of an earlier launcher (one that exited with an
		 * error; perhaps just after starting it) holds its slot still: an
		 * executor started for that slot would exit at once, and wake this
		 * launcher to start another.  Leave it be; once it exits, the next
		 * pass starts a new one.
		 */
		bool		running = (handles[i] != NULL &&
								   GetBackgroundWorkerPid(handles[i], &pid) != BGWH_STOPPED) ||
			slot_held(i);

		set_retire(i, i >= n);
		if (!running && handles[i] != NULL)
		{
			pfree(handles[i]);
			handles[i] = NULL;
		}
		if (i < n && !running)
			handles[i] = start_worker("apiary_executor_main", "apiary executor", i);
	}
}

/* The registry's upkeep, and after pg_upgrade the other databases' too. */
static bool
upkeep_step(void)
{
	if (registry_upkeep())
		adopt_elsewhere();
	return false;
}

/*
 * Run one of the launcher's housekeeping steps; an error it raises is
 * logged (a lock timeout once a minute: lock_logged, the step's own), and
 * the step is tried again on a later pass: the launcher must go on.
 * Returns what the step did (false after an error).
 */
static bool
housekeeping_step(bool (*step) (void), TimestampTz *lock_logged)
{
	volatile bool result = false;

	PG_TRY();
	{
		result = step();
	}
	PG_CATCH();
	{
		/*
		 * A lock held for long (VACUUM FULL, LOCK) stops the step that
		 * needs it each time until it is released: said once a minute
		 * for each step.
		 */
		if (geterrcode() != ERRCODE_LOCK_NOT_AVAILABLE ||
			TimestampDifferenceExceeds(*lock_logged, GetCurrentTimestamp(), 60 * 1000))
		{
			if (geterrcode() == ERRCODE_LOCK_NOT_AVAILABLE)
			{
				*lock_logged = GetCurrentTimestamp();
				errhint("The launcher's housekeeping tries again at its next pass; such timeouts are logged once a minute.");
			}
			EmitErrorReport();
		}
		AbortCurrentTransaction();
		FlushErrorState();
	}
	PG_END_TRY();
	return result;
}

void
apiary_launcher_main(Datum main_arg)
{
	BackgroundWorkerHandle *handles[APIARY_MAX_WORKERS] = {0};
	bool		crashes_counted = false;
	TimestampTz next_prune = 0;
	TimestampTz next_upkeep = 0;
	TimestampTz next_vacuum = 0;
	uint64		vacuumed_at = 0;
	TimestampTz lock_logged[5] = {0};	/* by step, for housekeeping_step */

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	/*
	 * die, not just a flag: the housekeeping runs SQL (deleting a backlog
	 * can take a while), and a shutdown must interrupt it.  Executors are
	 * stopped by the postmaster with everything else.
	 */
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(apiary_database, NULL, 0);
	pgstat_report_appname("apiary launcher");
	apiary_housekeeping_session();
	pgstat_report_activity(STATE_IDLE, NULL);
	apiary_shared->launcher_latch = MyLatch;

	for (;;)
	{
		int			wanted = 0;
		bool		installed;
		bool		housekeeping;
		long		timeout;

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			next_prune = 0;		/* apiary.retention may have changed */
		}

		/* executors run on a primary, in a database with apiary installed */
		installed = !RecoveryInProgress() && extension_installed();
		housekeeping = installed && !apiary_drop_pending();
		if (housekeeping)
			wanted = apiary_workers;
		if (wanted > 0 && !crashes_counted)
		{
			apiary_count_crashes();
			crashes_counted = true;
		}
		supervise(handles, wanted);

		if (!RecoveryInProgress())
		{
			provenance_installed = installed;
			(void) housekeeping_step(provenance_step, &lock_logged[0]);
		}

		/* the registry's upkeep: once a minute */
		if (housekeeping && GetCurrentTimestamp() >= next_upkeep)
		{
			(void) housekeeping_step(upkeep_step, &lock_logged[1]);
			next_upkeep = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 60 * 1000);
		}

		/* retention: once a minute, or at once while there is a backlog */
		/* also without executors: keyed calls need no workers */
		if (housekeeping && apiary_retention > 0 && GetCurrentTimestamp() >= next_prune)
			next_prune = housekeeping_step(prune, &lock_logged[2]) ? 0 :
				TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 60 * 1000);

		/* workflows past their deadline: once a second, at once if more are due */
		timeout = 1000;
		if (housekeeping && housekeeping_step(apiary_expire_workflows, &lock_logged[3]))
			timeout = 0;

		/*
		 * apiary.ready: after every apiary.ready_vacuum_threshold rows
		 * deleted, but spending at most a tenth of the time vacuuming
		 */
		if (housekeeping && apiary_ready_vacuum_threshold > 0 &&
			pg_atomic_read_u64(&apiary_shared->ready_deleted) - vacuumed_at >=
			(uint64) apiary_ready_vacuum_threshold)
		{
			TimestampTz now = GetCurrentTimestamp();

			if (now >= next_vacuum)
			{
				vacuumed_at = pg_atomic_read_u64(&apiary_shared->ready_deleted);
				(void) housekeeping_step(vacuum_ready, &lock_logged[4]);
				next_vacuum = GetCurrentTimestamp();
				next_vacuum += 9 * (next_vacuum - now);
			}
			else
				timeout = Min(timeout, (next_vacuum - now) / 1000 + 1);
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		/*
		 * A cancel (pg_cancel_backend) ends the housekeeping step it comes
		 * in (logged, tried again later); between steps there is nothing
		 * to cancel, and raised here it would end the launcher.
		 */
		QueryCancelPending = false;
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * apiary's own housekeeping (the launcher's, the registry workers', the
 * provenance collector's) writes its tables whatever
 * default_transaction_read_only says, as autovacuum does: with it on in
 * postgresql.conf, retention failed every minute.
 * And it reads them in READ COMMITTED, whatever the default isolation:
 * each of its statements wants the latest rows.  Tasks keep both
 * settings (they fail with 25006, as the README says).  Its search_path is
 * pg_catalog's alone, whatever ALTER DATABASE or ALTER ROLE set: these
 * workers run as the bootstrap superuser, and a database owner's schema
 * first in the path could stand an operator of its own in for one of
 * pg_catalog's.
 */
void
apiary_housekeeping_session(void)
{
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
}
