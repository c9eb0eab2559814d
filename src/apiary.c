/*-------------------------------------------------------------------------
 *
 * apiary.c
 *	  apiary: a transactional function-as-a-service runtime inside
 *	  PostgreSQL.  This file only wires the pieces together; each concern
 *	  has a file of its own:
 *
 *	  guc.c			the apiary.* settings
 *	  registry.c	registering functions, and the per-backend cache of them
 *	  bind.c		JSON arguments to a prepared call (rules in bindrules.c)
 *	  invoke.c		apiary_invoke: synchronous, nested and keyed calls
 *	  journal.c		the journal tables, written as their owner
 *	  names.c		"perhaps you meant" suggestions
 *	  launcher.c	shared memory, the launcher worker, wake-ups at commit
 *	  executor.c	executor workers that run queued tasks; apiary_queue
 *	  workflow.c	apiary_start, apiary_result, apiary_status
 *	  queue.c		the workflow tables, by direct heap and index access
 *	  stats.c		apiary.stats (percentiles in sketch.c)
 *	  provenance.c	which rows functions read and wrote, from the WAL
 *
 * The design and its guarantees are described in README.md.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "guc.h"
#include "launcher.h"
#include "provenance.h"
#include "queue.h"
#include "registry.h"
#include "stats.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	apiary_define_gucs();
	registry_init();
	queue_init();
	provenance_init();

	/* workers and shared memory need preloading; apiary_invoke does not */
	if (process_shared_preload_libraries_in_progress)
	{
		apiary_shmem_init();
		apiary_stats_init();
		/* nor under pg_upgrade, whose restore would find it connected */
		if (IsBinaryUpgrade)
			return;
		if (apiary_database == NULL || apiary_database[0] == '\0')
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("apiary.database is empty: apiary's launcher and executors do not start"),
					 errhint("Set apiary.database to the database apiary is installed in, and restart.")));
		else
			apiary_register_launcher();
	}
}
