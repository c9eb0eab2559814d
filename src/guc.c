/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  Every apiary.* configuration parameter is defined here, in one place,
 *	  and the prefix is reserved so that a misspelt apiary.* setting is an
 *	  error rather than a silently ignored placeholder.
 *
 * The workers' settings (apiary.database, apiary.workers,
 * apiary.max_attempts) are defined only when the library is preloaded: a
 * postmaster-level setting cannot be created later, and without preloading
 * there are no workers for them to govern.
 *
 * apiary.kind is special: it means nothing as a session setting.  It exists
 * so that CREATE FUNCTION ... SET apiary.kind = '...' is validated (the
 * check hook rejects unknown kinds) and so that the event trigger in
 * registry.c can read it back from pg_proc.proconfig.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "launcher.h"

#include "guc.h"

char	   *apiary_kind_setting = NULL;
char	   *apiary_database = NULL;
int			apiary_workers = 4;
int			apiary_max_attempts = 3;
bool		apiary_synchronous_steps = true;
int			apiary_max_args_size = 1024 * 1024;
int			apiary_max_args_depth = 64;
int			apiary_max_output_size = 64 * 1024 * 1024;
int			apiary_max_queued = 10000;
int			apiary_max_key_size = 1024;
int			apiary_stats_max = 1000;
int			apiary_retention = 7 * 24 * 3600;
int			apiary_ready_vacuum_threshold = 1000;
int			apiary_executor_max_memory = 256 * 1024;	/* kB */
int			apiary_provenance = APIARY_PROVENANCE_OFF;
int			apiary_provenance_max_reads = 10000;
int			apiary_provenance_nice = 10;

static const struct config_enum_entry provenance_options[] = {
	{"off", APIARY_PROVENANCE_OFF, false},
	{"writes", APIARY_PROVENANCE_WRITES, false},
	{"all", APIARY_PROVENANCE_ALL, false},
	{NULL, 0, false}
};

static const char *const kind_names[] = {
	[APIARY_KIND_TRANSACTIONAL] = "transactional",
	[APIARY_KIND_READONLY] = "readonly",
	[APIARY_KIND_EXTERNAL] = "external",
};

bool
apiary_in_database(void)
{
	/* apiary.database is fixed until a restart, and so is this session's */
	static bool in_database = false;

	if (!in_database)
	{
		char	   *here = get_database_name(MyDatabaseId);

		in_database = here != NULL && strcmp(here, apiary_database) == 0;
	}
	return in_database;
}

bool
apiary_kind_parse(const char *name, ApiaryKind *kind)
{
	for (int i = 0; i < lengthof(kind_names); i++)
	{
		if (strcmp(name, kind_names[i]) == 0)
		{
			*kind = (ApiaryKind) i;
			return true;
		}
	}
	return false;
}

const char *
apiary_kind_name(ApiaryKind kind)
{
	return kind_names[kind];
}

static bool
check_kind(char **newval, void **extra, GucSource source)
{
	ApiaryKind	kind;

	if (*newval == NULL || (*newval)[0] == '\0' ||
		apiary_kind_parse(*newval, &kind))
		return true;
	GUC_check_errdetail("Valid kinds are " APIARY_KIND_NAMES ".");
	return false;
}

void
apiary_define_gucs(void)
{
	DefineCustomStringVariable("apiary.kind",
							   "Registers a function with apiary when set in its CREATE FUNCTION.",
							   "Valid kinds are " APIARY_KIND_NAMES ". As a session setting it has no effect.",
							   &apiary_kind_setting,
							   "",
							   PGC_USERSET,
							   0,
							   check_kind, NULL, NULL);

	DefineCustomIntVariable("apiary.max_args_size",
							"Largest arguments value accepted by apiary calls.",
							NULL,
							&apiary_max_args_size,
							1024 * 1024,
							64, MaxAllocSize,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("apiary.max_args_depth",
							"Deepest nesting of arrays and objects accepted in apiary call arguments.",
							NULL,
							&apiary_max_args_depth,
							64,
							1, 10000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("apiary.max_output_size",
							"Largest output of a task or keyed call that apiary records.",
							"A larger output fails the call, which rolls back.",
							&apiary_max_output_size,
							64 * 1024 * 1024,
							1024, MaxAllocSize,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	/* keys and ids are btree keys: an entry must fit a third of a page */
	DefineCustomIntVariable("apiary.max_key_size",
							"Longest key of apiary_invoke, or workflow id, accepted.",
							NULL,
							&apiary_max_key_size,
							1024,
							16, 2048,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("apiary.max_queued",
							"Most tasks one task may queue with apiary_queue.",
							NULL,
							&apiary_max_queued,
							10000,
							1, INT_MAX,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("apiary.provenance",
							 "Record which rows apiary functions write (writes), or write and read (all).",
							 "Needs wal_level = logical and apiary in shared_preload_libraries.",
							 &apiary_provenance,
							 APIARY_PROVENANCE_OFF,
							 provenance_options,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("apiary.provenance_max_reads",
							"Most rows read that provenance = all records per invocation.",
							NULL,
							&apiary_provenance_max_reads,
							10000,
							0, INT_MAX,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	/*
	 * The workers' settings exist only where the workers can.  Without
	 * preloading, the prefix is not reserved either (as pg_stat_statements
	 * does): that would remove them, with a warning to every session that
	 * loads apiary, from a postgresql.conf that keeps them.
	 */
	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomStringVariable("apiary.database",
							   "Database in which apiary's executors run workflows.",
							   "The extension must be installed there.",
							   &apiary_database,
							   "postgres",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("apiary.workers",
							"Number of executor workers that run queued tasks.",
							"Each is a background worker: max_worker_processes must leave room for them.",
							&apiary_workers,
							4,
							0, APIARY_MAX_WORKERS,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("apiary.executor_max_memory",
							"Memory after which an executor is replaced by a fresh one, between tasks.",
							"An executor keeps what its tasks' sessions cache (plans, catalog entries, time zones) for all roles; 0: no limit.",
							&apiary_executor_max_memory,
							256 * 1024,
							0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("apiary.stats_max",
							"Number of functions apiary.stats keeps statistics for, per server.",
							"Functions beyond it are counted together in a row named (other).",
							&apiary_stats_max,
							1000,
							10, 100000,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("apiary.retention",
							"How long finished workflows, keyed calls and provenance rows are kept.",
							"The launcher deletes older ones in small batches; 0 keeps them forever.",
							&apiary_retention,
							7 * 24 * 3600,
							0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("apiary.ready_vacuum_threshold",
							"Number of ready-task rows taken after which the launcher vacuums apiary.ready.",
							"0 leaves apiary.ready to autovacuum.",
							&apiary_ready_vacuum_threshold,
							1000,
							0, INT_MAX,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("apiary.provenance_nice",
							"Scheduling priority (nice value) of the provenance collector.",
							"Higher yields more CPU to the work it records; it then catches up when there is slack.",
							&apiary_provenance_nice,
							10,
							0, 19,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("apiary.synchronous_steps",
							 "Whether a task that does not finish its workflow waits for its commit to reach disk.",
							 "Off: such a task commits like synchronous_commit = off; a crash may undo it, and it runs again.",
							 &apiary_synchronous_steps,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("apiary.max_attempts",
							"Default number of attempts of a task that fails with an error it may be retried after.",
							"A transactional task is retried after a serialization failure, a deadlock or an operator's cancel, an external one after any error; a function's own max_attempts, given to apiary_register, overrides it.",
							&apiary_max_attempts,
							3,
							1, 1000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("apiary");
}
