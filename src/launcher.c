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
 * apiary.retention) and provenance (collecting the writes of apiary
 * functions from a logical replication slot).
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
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "executor.h"
#include "guc.h"
#include "journal.h"
#include "launcher.h"

ApiaryShared *apiary_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static int	wake_at_commit = 0;
static bool finished_at_commit = false;

static void apiary_wake_executors(int n);

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
		ConditionVariableInit(&apiary_shared->finished);
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
			if (finished_at_commit && apiary_shared != NULL)
				ConditionVariableBroadcast(&apiary_shared->finished);
			wake_at_commit = 0;
			finished_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			wake_at_commit = 0;
			finished_at_commit = false;
			break;
		default:
			break;
	}
}

/* Called from _PG_init while preloading. */
void
apiary_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = apiary_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = apiary_shmem_startup;
	RegisterXactCallback(apiary_xact_callback, NULL);
}

void
apiary_wake_at_commit(int n)
{
	wake_at_commit = n > APIARY_WAKE_ALL - wake_at_commit ? APIARY_WAKE_ALL : wake_at_commit + n;
}

void
apiary_finished_at_commit(void)
{
	finished_at_commit = true;
}

/*
 * Wake up to n idle executors, one per task that became ready.  An
 * executor marks itself idle before it takes the snapshot it looks for
 * work with, and this runs after our commit is visible: either it sees our
 * tasks, or we see it idle and set its latch, so no wake-up can fall
 * between "found nothing" and going to sleep.  Busy executors look for
 * work again as soon as they are done, and are left alone.
 */
static void
apiary_wake_executors(int n)
{
	Latch	   *latches[APIARY_MAX_WORKERS];
	int			nlatches = 0;

	if (apiary_shared == NULL)
		return;
	SpinLockAcquire(&apiary_shared->mutex);
	for (int i = 0; i < APIARY_MAX_WORKERS && nlatches < n; i++)
	{
		ExecutorSlot *slot = &apiary_shared->slots[i];

		if (slot->pid != 0 && slot->idle)
		{
			slot->idle = false;
			latches[nlatches++] = slot->latch;
		}
	}
	SpinLockRelease(&apiary_shared->mutex);
	for (int i = 0; i < nlatches; i++)
		SetLatch(latches[i]);
}

void
apiary_executor_idle(int slot, bool idle)
{
	SpinLockAcquire(&apiary_shared->mutex);
	apiary_shared->slots[slot].idle = idle;
	SpinLockRelease(&apiary_shared->mutex);
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

static BackgroundWorkerHandle *
start_executor(int slot)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "apiary");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "apiary_executor_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "apiary executor %d", slot);
	snprintf(worker.bgw_type, BGW_MAXLEN, "apiary executor");
	worker.bgw_main_arg = Int32GetDatum(slot);
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start apiary executor %d", slot),
				 errhint("Raise max_worker_processes: it must leave room for apiary.workers executors.")));
		return NULL;
	}
	return handle;
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
 * Provenance: with apiary.provenance = writes, keep the slot
 * apiary_provenance and collect from it (apiary.collect_provenance) the
 * writes of the transactions apiary noted; the slot moves only after what
 * it gave was committed, so a crash loses nothing.  Otherwise drop the
 * slot, so that it never holds WAL back.
 *
 * Each collection decodes the WAL from the slot's restart point, which
 * trails by up to the interval between running-transactions records, and
 * moving the slot decodes it again: so it runs once per launcher cycle
 * (a second), taking everything there is.
 */
#define PROVENANCE_SLOT "apiary_provenance"

static void
provenance_step(void)
{
	static bool warned = false;
	bool		want = apiary_provenance == APIARY_PROVENANCE_WRITES;
	bool		exists;
	bool		isnull;
	Datum		upto = (Datum) 0;
	bool		found_upto = false;

	if (want && wal_level < WAL_LEVEL_LOGICAL)
	{
		if (!warned)
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("apiary.provenance = writes records nothing: wal_level is not logical"),
					 errhint("Set wal_level = logical and restart; apiary.provenance_status shows the state.")));
		warned = true;
		want = false;
	}
	else if (want)
		warned = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	journal_execute("SELECT FROM pg_catalog.pg_replication_slots"
					" WHERE slot_name OPERATOR(pg_catalog.=) '" PROVENANCE_SLOT "'"
					" AND database OPERATOR(pg_catalog.=) pg_catalog.current_database()",
					NULL, 0, NULL, NULL, NULL, SPI_OK_SELECT);
	exists = SPI_processed > 0;
	/* the tables of 0.4 */
	want = want && OidIsValid(get_relname_relid("provenance_xids", get_namespace_oid("apiary", false)));
	if (!want && exists)
	{
		journal_execute("SELECT pg_catalog.pg_drop_replication_slot('" PROVENANCE_SLOT "')",
						NULL, 0, NULL, NULL, NULL, SPI_OK_SELECT);
		ereport(LOG, (errmsg("apiary provenance is off: dropped replication slot \"%s\"",
							 PROVENANCE_SLOT)));
	}
	else if (want && !exists)
	{
		journal_execute("SELECT pg_catalog.pg_create_logical_replication_slot('" PROVENANCE_SLOT "', 'wal2json')",
						NULL, 0, NULL, NULL, NULL, SPI_OK_SELECT);
		ereport(LOG, (errmsg("apiary provenance: created replication slot \"%s\"",
							 PROVENANCE_SLOT)));
	}
	else if (want)
	{
		journal_execute("SELECT apiary.collect_provenance(NULL)", NULL, 0, NULL, NULL,
						NULL, SPI_OK_SELECT);
		upto = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		found_upto = !isnull;
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();

	/* only once the rows are committed: the slot moves past them */
	if (found_upto)
	{
		Oid			types[1] = {LSNOID};

		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		journal_execute("SELECT FROM pg_catalog.pg_replication_slot_advance('" PROVENANCE_SLOT "', $1)",
						NULL, 1, types, &upto, NULL, SPI_OK_SELECT);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
}

/* Keep exactly n executors running. */
static void
supervise(BackgroundWorkerHandle **handles, int n)
{
	for (int i = 0; i < APIARY_MAX_WORKERS; i++)
	{
		pid_t		pid;

		if (i < n)
		{
			if (handles[i] != NULL &&
				GetBackgroundWorkerPid(handles[i], &pid) != BGWH_STOPPED)
				continue;
			if (handles[i] != NULL)
				pfree(handles[i]);
			handles[i] = start_executor(i);
		}
		else if (handles[i] != NULL)
		{
			TerminateBackgroundWorker(handles[i]);
			pfree(handles[i]);
			handles[i] = NULL;
		}
	}
}

void
apiary_launcher_main(Datum main_arg)
{
	BackgroundWorkerHandle *handles[APIARY_MAX_WORKERS] = {0};
	bool		crashes_counted = false;
	TimestampTz next_prune = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	/*
	 * die, not just a flag: the housekeeping runs SQL (decoding the WAL
	 * can take a while), and a shutdown must interrupt it.  Executors are
	 * stopped by the postmaster with everything else.
	 */
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(apiary_database, NULL, 0);
	pgstat_report_appname("apiary launcher");

	for (;;)
	{
		int			wanted = 0;

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			next_prune = 0;		/* apiary.retention may have changed */
		}

		/* executors run on a primary, in a database with apiary installed */
		if (!RecoveryInProgress() && extension_installed())
			wanted = apiary_workers;
		if (wanted > 0 && !crashes_counted)
		{
			apiary_count_crashes();
			crashes_counted = true;
		}
		supervise(handles, wanted);

		if (wanted > 0)
		{
			PG_TRY();
			{
				provenance_step();
			}
			PG_CATCH();
			{
				/* log it and try again next time */
				EmitErrorReport();
				AbortCurrentTransaction();
				FlushErrorState();
			}
			PG_END_TRY();
		}

		/* retention: once a minute, or at once while there is a backlog */
		if (wanted > 0 && apiary_retention > 0 && GetCurrentTimestamp() >= next_prune)
		{
			volatile bool more = false;

			PG_TRY();
			{
				more = prune();
			}
			PG_CATCH();
			{
				/* log it and try again later: the launcher must go on */
				EmitErrorReport();
				AbortCurrentTransaction();
				FlushErrorState();
			}
			PG_END_TRY();
			next_prune = more ? 0 :
				TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 60 * 1000);
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}
