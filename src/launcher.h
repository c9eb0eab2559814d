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

#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/spin.h"

#define APIARY_MAX_WORKERS 64

typedef struct ExecutorSlot
{
	pid_t		pid;			/* 0 when free */
	Latch	   *latch;
} ExecutorSlot;

typedef struct ApiaryShared
{
	slock_t		mutex;			/* protects slots */
	ConditionVariable finished; /* broadcast when workflows finish */
	ExecutorSlot slots[APIARY_MAX_WORKERS];
} ApiaryShared;

/* NULL unless apiary is in shared_preload_libraries */
extern ApiaryShared *apiary_shared;

extern void apiary_shmem_init(void);
extern void apiary_register_launcher(void);

/* Ask for executors to be woken, or waiters told, when this transaction commits. */
extern void apiary_wake_at_commit(void);
extern void apiary_finished_at_commit(void);

extern PGDLLEXPORT void apiary_launcher_main(Datum main_arg);

#endif							/* APIARY_LAUNCHER_H */
