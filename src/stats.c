/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  Per-function statistics in shared memory: the apiary.stats view.
 *
 * In the manner of pg_stat_statements: a hash table of fixed size in shared
 * memory, apiary.stats_max entries, one per (database, registered name),
 * each with counters, exact min/max and a latency histogram (sketch.c) for
 * the percentiles.  Every execution of a function counts: synchronous
 * calls (apiary_invoke, top-level or nested; a keyed call answered from
 * the journal does not run and does not count) and tasks.  The counters are
 * not transactional, so a failed call counts although its transaction
 * rolled back.
 *
 * When the table is full, functions not in it yet are counted together in
 * one row named "(other)", so nothing goes uncounted and the memory stays
 * fixed: one row for every database (the table's one spare entry), shown
 * in each.  apiary_stats_reset() empties the table.
 *
 * Locking: the hash table is under one LWLock, taken shared to find an
 * entry and exclusively only to add one; each entry's counters are under a
 * spinlock of their own, held for a few instructions.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "sketch.h"
#include "stats.h"

PG_FUNCTION_INFO_V1(apiary_stats);
PG_FUNCTION_INFO_V1(apiary_stats_reset);

#define OTHER_NAME APIARY_STATS_OTHER

typedef struct StatsKey
{
	Oid			dbid;
	char		name[NAMEDATALEN];
} StatsKey;

typedef struct StatsEntry
{
	StatsKey	key;
	slock_t		mutex;
	int64		calls;
	int64		errors;
	int64		retries;
	double		total_ms;
	Sketch		sketch;			/* durations, exact min and max */
} StatsEntry;

typedef struct StatsShared
{
	LWLock	   *lock;
	TimestampTz reset_at;
} StatsShared;

static StatsShared *stats_shared = NULL;
static HTAB *stats_hash = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* one more than apiary.stats_max: the "(other)" row always has room */
static Size
stats_memsize(void)
{
	return MAXALIGN(sizeof(StatsShared)) +
		hash_estimate_size(apiary_stats_max + 1, sizeof(StatsEntry));
}

static void
stats_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(stats_memsize());
	RequestNamedLWLockTranche("apiary_stats", 1);
}

static void
stats_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	stats_shared = ShmemInitStruct("apiary stats", sizeof(StatsShared), &found);
	if (!found)
	{
		stats_shared->lock = &(GetNamedLWLockTranche("apiary_stats"))->lock;
		stats_shared->reset_at = GetCurrentTimestamp();
	}
	info.keysize = sizeof(StatsKey);
	info.entrysize = sizeof(StatsEntry);
	stats_hash = ShmemInitHash("apiary stats hash",
							   apiary_stats_max + 1, apiary_stats_max + 1,
							   &info, HASH_ELEM | HASH_BLOBS);
	LWLockRelease(AddinShmemInitLock);
}

void
apiary_stats_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = stats_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = stats_shmem_startup;
}

/*
 * Find or add the entry for name ("(other)" when the table is full), and
 * return it with the table's lock held, shared or exclusive, so that a
 * reset cannot remove it while the caller updates it; the caller
 * releases the lock.
 */
static StatsEntry *
stats_entry_locked(const char *name)
{
	StatsKey	key;
	StatsEntry *e;
	bool		found = true;

	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	strlcpy(key.name, name, NAMEDATALEN);

	LWLockAcquire(stats_shared->lock, LW_SHARED);
	e = hash_search(stats_hash, &key, HASH_FIND, NULL);
	if (e != NULL)
		return e;
	LWLockRelease(stats_shared->lock);

	LWLockAcquire(stats_shared->lock, LW_EXCLUSIVE);
	if (hash_get_num_entries(stats_hash) >= apiary_stats_max)
	{
		/* (added meanwhile by another backend?) */
		e = hash_search(stats_hash, &key, HASH_FIND, NULL);
		if (e == NULL)
		{
			/* every database's: one per database would not fit */
			key.dbid = InvalidOid;
			memset(key.name, 0, NAMEDATALEN);
			strlcpy(key.name, OTHER_NAME, NAMEDATALEN);
		}
	}
	if (e == NULL)
		e = hash_search(stats_hash, &key, HASH_ENTER_NULL, &found);
	if (e != NULL && !found)
	{
		SpinLockInit(&e->mutex);
		e->calls = e->errors = e->retries = 0;
		e->total_ms = 0;
		sketch_clear(&e->sketch);
	}
	return e;
}

/*
 * Count an execution of name that began at started; 0: an attempt whose
 * duration is unknown (it ended its executor), counted without one.
 */
void
apiary_stats_record(const char *name, TimestampTz started, bool error,
					bool retry)
{
	int64		us = 0;
	StatsEntry *e;

	if (stats_hash == NULL)
		return;					/* not preloaded */
	if (started != 0)
		us = Max(GetCurrentTimestamp() - started, 0);
	e = stats_entry_locked(name);
	/* (NULL cannot happen: "(other)" has room) */
	if (e != NULL)
	{
		SpinLockAcquire(&e->mutex);
		e->calls++;
		if (error)
			e->errors++;
		if (retry)
			e->retries++;
		if (started != 0)
		{
			e->total_ms += us / 1000.0;
			sketch_add(&e->sketch, (uint64_t) us);
		}
		SpinLockRelease(&e->mutex);
	}
	LWLockRelease(stats_shared->lock);
}

static void
require_preloaded(void)
{
	if (stats_hash == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apiary.stats needs apiary to be loaded via shared_preload_libraries"),
				 errhint("Add apiary to shared_preload_libraries in postgresql.conf, and restart the server.")));
}

Datum
apiary_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASH_SEQ_STATUS seq;
	StatsEntry *e;

	require_preloaded();
	InitMaterializedSRF(fcinfo, 0);

	LWLockAcquire(stats_shared->lock, LW_SHARED);
	hash_seq_init(&seq, stats_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		Datum		values[10];
		bool		nulls[10] = {0};
		StatsEntry	copy;

		if (e->key.dbid != MyDatabaseId && e->key.dbid != InvalidOid)
			continue;
		SpinLockAcquire(&e->mutex);
		copy = *e;
		SpinLockRelease(&e->mutex);

		values[0] = CStringGetTextDatum(copy.key.name);
		values[1] = Int64GetDatum(copy.calls);
		values[2] = Int64GetDatum(copy.errors);
		values[3] = Int64GetDatum(copy.retries);
		values[4] = Float8GetDatum(copy.total_ms);
		/* over the executions timed */
		values[5] = Float8GetDatum(copy.sketch.count > 0 ? copy.total_ms / copy.sketch.count : 0);
		values[6] = Float8GetDatum(copy.sketch.min_us / 1000.0);
		values[7] = Float8GetDatum(copy.sketch.max_us / 1000.0);
		values[8] = Float8GetDatum(sketch_quantile(&copy.sketch, 0.5) / 1000.0);
		values[9] = Float8GetDatum(sketch_quantile(&copy.sketch, 0.99) / 1000.0);
		/* no execution timed (each ended its executor): no timings */
		for (int i = 5; i < 10 && copy.sketch.count == 0; i++)
			nulls[i] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(stats_shared->lock);
	return (Datum) 0;
}

Datum
apiary_stats_reset(PG_FUNCTION_ARGS)
{
	HASH_SEQ_STATUS seq;
	StatsEntry *e;

	require_preloaded();
	LWLockAcquire(stats_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, stats_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		(void) hash_search(stats_hash, &e->key, HASH_REMOVE, NULL);
	stats_shared->reset_at = GetCurrentTimestamp();
	LWLockRelease(stats_shared->lock);
	PG_RETURN_VOID();
}
