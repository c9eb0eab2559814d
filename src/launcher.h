/*-------------------------------------------------------------------------
 *
 * launcher.h
 *	  apiary's shared memory, its launcher background worker, and waking
 *	  executors and waiters.
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_LAUNCHER_H
#define APIARY_LAUNCHER_H

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/spin.h"

#define APIARY_MAX_WORKERS 64

/* apiary's files in the data directory: crash markers, the provenance key */
#define APIARY_DATA_DIR "pg_apiary"

/*
 * apiary_result waits on one of these, chosen by a hash of the workflow's
 * role and id; a transaction that finishes workflows wakes only their
 * waiters' condition variables, not every waiter's.
 */
#define APIARY_RESULT_CVS 128

typedef struct ExecutorSlot
{
	pid_t		pid;			/* 0 when free */
	Latch	   *latch;
	bool		idle;			/* looking for work or asleep, not woken yet */
	int64		handed;			/* a ready task to try first, or 0 */
	bool		retire;			/* exit before the next task (fewer wanted) */
	pg_atomic_uint64 running;	/* the task it runs, or 0 (apiary_status) */
} ExecutorSlot;

typedef struct ApiaryShared
{
	slock_t		mutex;			/* protects slots, collector_pid and
								 * provenance_failed_* */
	ConditionVariable finished[APIARY_RESULT_CVS];	/* see above */
	pg_atomic_uint64 workflow_changes;	/* cancels and resumes begun */
	pg_atomic_uint64 ready_deleted; /* apiary.ready rows deleted, ever */
	Latch	   *launcher_latch; /* wakes the launcher: to vacuum apiary.ready,
								 * or to start executors for queued tasks */
	pg_atomic_uint64 launcher_woken;	/* when a commit last did the latter */
	ExecutorSlot slots[APIARY_MAX_WORKERS];
	int			drops;			/* transactions dropping the extension */
	bool		provenance_keyed;	/* provenance_key was loaded or made */
	uint8		provenance_key[32]; /* signs provenance messages (provenance.c) */
	pid_t		collector_pid;	/* the provenance collector's (0: none) */
	/* the collector's last failure (0: none), until it stores past it */
	TimestampTz provenance_failed_at;
	XLogRecPtr	provenance_failed_lsn;
} ApiaryShared;

/* NULL unless apiary is in shared_preload_libraries */
extern ApiaryShared *apiary_shared;

extern void apiary_shmem_init(void);
extern void apiary_register_launcher(void);

/*
 * Ask for n idle executors to be woken (APIARY_WAKE_ALL: all), or waiters
 * told, when this transaction commits.
 */
#define APIARY_WAKE_ALL INT_MAX
extern void apiary_wake_at_commit(int n);

/*
 * Wake one idle executor when this transaction commits, and hand it this
 * task, made ready by the transaction, to try before it looks through
 * apiary.ready for the oldest ready task.
 */
extern void apiary_hand_at_commit(int64 task);

/* Wake the workflow's apiary_result waiters when this transaction commits. */
extern void apiary_finished_at_commit(Oid role, text *workflow);
extern bool apiary_finishes_at_commit(void);
extern ConditionVariable *apiary_finished_cv(Oid role, text *workflow);

/*
 * Count a deleted apiary.ready row; every apiary.ready_vacuum_threshold
 * of them, the launcher vacuums apiary.ready.
 */
extern void apiary_ready_deleted(void);

/*
 * An executor marks itself idle before it looks for work, taking the task
 * handed to it (0 if none) into *handed unless that is NULL (the slot
 * keeps it then); the result says whether the launcher wants it to exit
 * instead (apiary.workers lowered).
 */
extern bool apiary_executor_idle(int slot, int64 *handed);

/*
 * The executor in slot claimed task claimed: it is busy, and passes on a
 * wake-up that came while it looked for work, and its watch over tasks due
 * later if it was napping until the first of them.
 */
extern void apiary_executor_busy(int slot, int64 claimed, bool watching_due);

/*
 * Wake one idle executor that stays, handing it task: an executor leaving
 * passes on the task it would have run next.
 */
extern void apiary_pass_on(int64 task);

/* Whether a transaction dropping the extension is under way (needs mutex). */
#define apiary_drop_pending_locked() (apiary_shared->drops > 0)
/* The same, taking the mutex. */
extern bool apiary_drop_pending(void);

extern PGDLLEXPORT void apiary_launcher_main(Datum main_arg);
/* The settings of a housekeeping worker's session (launcher.c). */
extern void apiary_housekeeping_session(void);

#endif							/* APIARY_LAUNCHER_H */
