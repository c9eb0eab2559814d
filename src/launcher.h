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

#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/spin.h"

#define APIARY_MAX_WORKERS 64

typedef struct ExecutorSlot
{
	pid_t		pid;			/* 0 when free */
	Latch	   *latch;
	bool		idle;			/* looking for work or asleep, not woken yet */
} ExecutorSlot;

typedef struct ApiaryShared
{
	slock_t		mutex;			/* protects slots */
	ConditionVariable finished; /* broadcast when workflows finish */
	pg_atomic_uint64 workflow_changes;	/* cancels and resumes begun */
	ExecutorSlot slots[APIARY_MAX_WORKERS];
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
extern void apiary_finished_at_commit(void);
extern bool apiary_finishes_at_commit(void);

/* An executor marks itself idle before it looks for work. */
extern void apiary_executor_idle(int slot, bool idle);

extern PGDLLEXPORT void apiary_launcher_main(Datum main_arg);

#endif							/* APIARY_LAUNCHER_H */
