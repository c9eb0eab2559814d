/*-------------------------------------------------------------------------
 *
 * executor.c
 *	  Executor background workers: run queued tasks, each in one transaction.
 *
 * An executor sleeps on its latch until a committing transaction that
 * queued runnable tasks sets it (launcher.c), or until the earliest retry
 * is due.  Then, in one transaction, it
 *
 *	1. claims the oldest ready task with FOR UPDATE SKIP LOCKED, so that
 *	   executors never block one another;
 *	2. substitutes the outputs of the futures among its arguments;
 *	3. runs the function as the role that queued the task, in a
 *	   subtransaction, so that a failure can be recorded;
 *	4. records the outcome (apiary.task_done / task_failed in the install
 *	   script: output, released waiters, the workflow's end), or, with
 *	   attempts left, schedules a retry with jittered exponential backoff:
 *	   after a serialization failure or deadlock for any task, after any
 *	   error for an external one.  A function's timeout ends it with an
 *	   error like any other; a workflow cancelled while the task ran rolls
 *	   the task back;
 *	5. commits: the function's effects, the tasks it queued and the
 *	   bookkeeping become visible together, or not at all.
 *
 * A crash anywhere before the commit leaves the task pending, to be claimed
 * again after restart: there is no "running" state that could be left
 * behind.  A function that returns a future ({"apiary_future": id}) takes
 * that future's output as its own: the task is "linked" until it is done.
 *
 * A task whose function takes the whole server down (a crash in C code)
 * would be claimed and crash it again after every restart.  Executors
 * therefore leave a marker file naming the task they run; after a restart,
 * the task named gets a crash counted, and at its max_attempts it fails
 * instead of running again.
 *
 * apiary_queue, called by a function while it runs as a task, adds a child
 * task to the same workflow, committed with the caller, and returns its
 * future.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>
#include <signal.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "common/file_perm.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

#include "apiary.h"
#include "bind.h"
#include "executor.h"
#include "guc.h"
#include "invoke.h"
#include "journal.h"
#include "launcher.h"
#include "registry.h"

PG_FUNCTION_INFO_V1(apiary_queue);
PG_FUNCTION_INFO_V1(apiary_task_key);

/* The task this process is running, if any: apiary_queue's context. */
typedef struct RunningTask
{
	int64		id;
	Oid			role;
	text	   *workflow;
	TimestampTz started;
} RunningTask;

static RunningTask *running_task = NULL;

/*
 * Crash markers.  Before running a task an executor writes its id to a file
 * of its own, and removes the file once the task's transaction has ended,
 * or when the executor exits in an orderly way (shutdown, FATAL, the
 * postmaster's death).  A file still there when an executor starts names
 * the task it was running when a backend crashed: the postmaster then kills
 * every backend at once and restarts them, with no exit callbacks.  The
 * file is not fsynced: the operating system outlives a backend crash.
 */
#define MARKER_DIR "pg_apiary"

static char marker_path[MAXPGPATH];

static void marker_write(int64 task);
static void marker_clear(void);

static SPIPlanPtr claim_plan = NULL;
static SPIPlanPtr next_plan = NULL;
static SPIPlanPtr future_plan = NULL;
static SPIPlanPtr done_plan = NULL;
static SPIPlanPtr failed_plan = NULL;
static SPIPlanPtr link_plan = NULL;
static SPIPlanPtr retry_plan = NULL;
static SPIPlanPtr queue_plan = NULL;
static SPIPlanPtr wait_plan = NULL;
static SPIPlanPtr cancelled_plan = NULL;
static SPIPlanPtr cancel_task_plan = NULL;

/* The attempt just made, recorded in the same row version as its outcome. */
#define RAN_COLUMNS(started) \
	"attempts = attempts OPERATOR(pg_catalog.+) 1, started_at = " started ", " \
	"xid = pg_catalog.pg_current_xact_id()"

static void
prepare_plans(void)
{
	if (claim_plan != NULL)
		return;
	claim_plan = journal_prepare("SELECT id, role::pg_catalog.oid, workflow, function, args, attempts"
								 " FROM apiary.tasks"
								 " WHERE state OPERATOR(pg_catalog.=) 'pending'"
								 " AND run_after OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()"
								 " ORDER BY run_after, id LIMIT 1 FOR UPDATE SKIP LOCKED",
								 0, NULL);
	/*
	 * When to look again: at the next retry that falls due.  Ready tasks
	 * that another executor holds need no timer: their commit wakes us.
	 */
	next_plan = journal_prepare("SELECT (pg_catalog.date_part('epoch', pg_catalog.min(run_after)"
								" OPERATOR(pg_catalog.-) pg_catalog.clock_timestamp())"
								" OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8"
								" FROM apiary.tasks WHERE state OPERATOR(pg_catalog.=) 'pending'"
								" AND run_after OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()",
								0, NULL);
	{
		Oid			t[3] = {INT8OID, OIDOID, TEXTOID};

		future_plan = journal_prepare("SELECT state, output, error FROM apiary.tasks"
									  " WHERE id OPERATOR(pg_catalog.=) $1"
									  " AND role OPERATOR(pg_catalog.=) $2::pg_catalog.regrole"
									  " AND workflow OPERATOR(pg_catalog.=) $3",
									  3, t);
	}
	{
		Oid			t[3] = {INT8OID, JSONBOID, TIMESTAMPTZOID};

		done_plan = journal_prepare("SELECT apiary.task_done($1, $2, $3)", 3, t);
		failed_plan = journal_prepare("SELECT apiary.task_failed($1, $2, 'failed', $3)", 3, t);
	}
	{
		Oid			t[3] = {INT8OID, INT8OID, TIMESTAMPTZOID};

		link_plan = journal_prepare("UPDATE apiary.tasks SET state = 'linked', linked_to = $2,"
									" " RAN_COLUMNS("$3")
									" WHERE id OPERATOR(pg_catalog.=) $1", 3, t);
	}
	{
		Oid			t[3] = {INT8OID, FLOAT8OID, TIMESTAMPTZOID};

		retry_plan = journal_prepare("UPDATE apiary.tasks SET run_after = pg_catalog.clock_timestamp()"
									 " OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $2),"
									 " " RAN_COLUMNS("$3")
									 " WHERE id OPERATOR(pg_catalog.=) $1", 3, t);
	}
	{
		Oid			t[7] = {OIDOID, TEXTOID, INT8OID, TEXTOID, JSONBOID, TEXTOID, INT4OID};

		queue_plan = journal_prepare("INSERT INTO apiary.tasks"
									 " (role, workflow, parent, function, args, state, waiting_for)"
									 " VALUES ($1::pg_catalog.regrole, $2, $3, $4, $5, $6, $7)"
									 " RETURNING id", 7, t);
	}
	{
		Oid			t[2] = {INT8OID, INT8OID};

		wait_plan = journal_prepare("INSERT INTO apiary.waits (future, task) VALUES ($1, $2)",
									2, t);
	}
	{
		Oid			t[2] = {OIDOID, TEXTOID};

		/* FOR SHARE: apiary_cancel waits for a task that passed this check */
		cancelled_plan = journal_prepare("SELECT state OPERATOR(pg_catalog.=) 'cancelled'"
										 " FROM apiary.workflows"
										 " WHERE role OPERATOR(pg_catalog.=) $1::pg_catalog.regrole"
										 " AND id OPERATOR(pg_catalog.=) $2 FOR SHARE", 2, t);
	}
	{
		Oid			t[2] = {INT8OID, TIMESTAMPTZOID};

		cancel_task_plan = journal_prepare("UPDATE apiary.tasks SET state = 'cancelled',"
										   " finished_at = pg_catalog.clock_timestamp(),"
										   " error = pg_catalog.jsonb_build_object('sqlstate', '57014',"
										   " 'cancelled', 'by apiary_cancel, while running'),"
										   " " RAN_COLUMNS("$2")
										   " WHERE id OPERATOR(pg_catalog.=) $1", 2, t);
	}
}

/* ---------------------------------------------------------------------
 * Futures
 * ---------------------------------------------------------------------
 */

/* Is v a future, {"apiary_future": <id>}?  Sets *id. */
static bool
value_is_future(JsonbValue *v, int64 *id)
{
	JsonbValue *idv;

	if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data) ||
		JsonContainerSize(v->val.binary.data) != 1)
		return false;
	idv = getKeyJsonValueFromContainer(v->val.binary.data, "apiary_future",
									   strlen("apiary_future"), NULL);
	if (idv == NULL || idv->type != jbvNumeric)
		return false;
	*id = DatumGetInt64(DirectFunctionCall1(numeric_int8,
											NumericGetDatum(idv->val.numeric)));
	return true;
}

bool
apiary_jsonb_is_future(Jsonb *jb, int64 *id)
{
	JsonbValue	v;

	if (!JB_ROOT_IS_OBJECT(jb))
		return false;
	v.type = jbvBinary;
	v.val.binary.data = &jb->root;
	v.val.binary.len = VARSIZE(jb) - VARHDRSZ;
	return value_is_future(&v, id);
}

Jsonb *
apiary_future_jsonb(int64 id)
{
	JsonbParseState *state = NULL;
	JsonbValue	k;
	JsonbValue	v;

	k.type = jbvString;
	k.val.string.val = "apiary_future";
	k.val.string.len = strlen("apiary_future");
	v.type = jbvNumeric;
	v.val.numeric = DatumGetNumeric(DirectFunctionCall1(int8_numeric, Int64GetDatum(id)));
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	pushJsonbValue(&state, WJB_KEY, &k);
	pushJsonbValue(&state, WJB_VALUE, &v);
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}

/*
 * Look a future up in the task's workflow: its state, and its output (or
 * error).  A future of another workflow, or of another role, is not found.
 */
static char *
future_state(int64 id, Oid role, text *workflow, Jsonb **output, Jsonb **error)
{
	Datum		values[3] = {Int64GetDatum(id), ObjectIdGetDatum(role),
	PointerGetDatum(workflow)};
	bool		isnull;
	char	   *state;

	prepare_plans();
	journal_execute(NULL, future_plan, 3, NULL, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("future %lld does not belong to this workflow", (long long) id),
				 errdetail("Futures are task outputs of the same workflow, as returned by apiary_queue.")));
	state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (output)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);

		*output = isnull ? NULL : DatumGetJsonbPCopy(d);
	}
	if (error)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);

		*error = isnull ? NULL : DatumGetJsonbPCopy(d);
	}
	return state;
}

/*
 * Replace the futures among args' top-level values by their outputs (all
 * done: the task would not be pending otherwise).
 */
static Jsonb *
resolve_futures(Jsonb *args, RunningTask *t)
{
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	v;
	JsonbParseState *state = NULL;
	JsonbValue *res = NULL;
	bool		any = false;
	int64		id;

	if (JB_ROOT_IS_SCALAR(args))
		return args;

	it = JsonbIteratorInit(&args->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if ((tok == WJB_VALUE || tok == WJB_ELEM) && value_is_future(&v, &id))
		{
			Jsonb	   *out = NULL;
			char	   *st = future_state(id, t->role, t->workflow, &out, NULL);

			if (strcmp(st, "done") != 0)
				elog(ERROR, "future %lld of task %lld is %s, not done",
					 (long long) id, (long long) t->id, st);
			if (out == NULL)
				v.type = jbvNull;
			else
			{
				v.type = jbvBinary;
				v.val.binary.data = &out->root;
				v.val.binary.len = VARSIZE(out) - VARHDRSZ;
			}
			any = true;
		}
		res = pushJsonbValue(&state, tok, tok < WJB_BEGIN_ARRAY ? &v : NULL);
	}
	return any ? JsonbValueToJsonb(res) : args;
}

/* ---------------------------------------------------------------------
 * apiary_queue
 * ---------------------------------------------------------------------
 */
Jsonb *
apiary_queue_jsonb(const char *name, Jsonb *args)
{
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	v;
	List	   *waits = NIL;
	ListCell   *lc;
	int64		id;
	int64		task;
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	bool		isnull;

	if (running_task == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apiary_queue can only be called by a function running as an apiary task"),
				 errhint("Start a workflow with apiary_start; the functions it runs may queue tasks.")));
	bind_check_limits(name, args);

	/* the function must exist now; it is looked up again when it runs */
	registry_check_exists(name);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	prepare_plans();

	/* futures among the top-level values: wait for those not done yet */
	if (!JB_ROOT_IS_SCALAR(args))
	{
		it = JsonbIteratorInit(&args->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			char	   *st;

			if ((tok != WJB_VALUE && tok != WJB_ELEM) || !value_is_future(&v, &id))
				continue;
			st = future_state(id, running_task->role, running_task->workflow, NULL, NULL);
			if (strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("future %lld has %s", (long long) id, st)));
			if (strcmp(st, "done") != 0)
			{
				int64	   *future = palloc_object(int64);

				*future = id;
				waits = lappend(waits, future);
			}
		}
	}

	values[0] = ObjectIdGetDatum(running_task->role);
	values[1] = PointerGetDatum(running_task->workflow);
	values[2] = Int64GetDatum(running_task->id);
	values[3] = CStringGetTextDatum(name);
	values[4] = JsonbPGetDatum(args);
	values[5] = CStringGetTextDatum(waits == NIL ? "pending" : "waiting");
	values[6] = Int32GetDatum(list_length(waits));
	journal_execute(NULL, queue_plan, 7, NULL, values, nulls, SPI_OK_INSERT_RETURNING);
	task = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	foreach(lc, waits)
	{
		Datum		w[2] = {Int64GetDatum(*(int64 *) lfirst(lc)), Int64GetDatum(task)};

		journal_execute(NULL, wait_plan, 2, NULL, w, NULL, SPI_OK_INSERT);
	}
	SPI_finish();

	if (waits == NIL)
		apiary_wake_at_commit();
	return apiary_future_jsonb(task);
}

Datum
apiary_queue(PG_FUNCTION_ARGS)
{
	bind_require_call_args(fcinfo);
	PG_RETURN_JSONB_P(apiary_queue_jsonb(text_to_cstring(PG_GETARG_TEXT_PP(0)),
										 PG_GETARG_JSONB_P(1)));
}

/*
 * A key for the running task that stays the same across its attempts: what
 * an external function hands to the service it calls, so that a retry after
 * a crash or timeout is not a second charge.
 */
char *
apiary_task_key_cstring(void)
{
	if (running_task == NULL)
		return NULL;
	return psprintf("%s/%lld", text_to_cstring(running_task->workflow),
					(long long) running_task->id);
}

Datum
apiary_task_key(PG_FUNCTION_ARGS)
{
	char	   *key = apiary_task_key_cstring();

	if (key == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apiary_task_key can only be called by a function running as an apiary task")));
	PG_RETURN_TEXT_P(cstring_to_text(key));
}

/* ---------------------------------------------------------------------
 * Running a task
 * ---------------------------------------------------------------------
 */

/* The error of a failed task, as recorded and as apiary_result raises it. */
static Jsonb *
error_jsonb(ErrorData *edata, int64 task, const char *function)
{
	JsonbParseState *state = NULL;
	JsonbValue *res;
	const char *keys[] = {"sqlstate", "message", "detail", "hint", "context", "function"};
	const char *vals[6];

	vals[0] = unpack_sql_state(edata->sqlerrcode);
	vals[1] = edata->message;
	vals[2] = edata->detail;
	vals[3] = edata->hint;
	vals[4] = edata->context;
	vals[5] = function;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < lengthof(keys); i++)
	{
		JsonbValue	k;
		JsonbValue	v;

		if (vals[i] == NULL)
			continue;
		k.type = jbvString;
		k.val.string.val = (char *) keys[i];
		k.val.string.len = strlen(keys[i]);
		v.type = jbvString;
		v.val.string.val = (char *) vals[i];
		v.val.string.len = strlen(vals[i]);
		pushJsonbValue(&state, WJB_KEY, &k);
		pushJsonbValue(&state, WJB_VALUE, &v);
	}
	{
		JsonbValue	k;
		JsonbValue	v;

		k.type = jbvString;
		k.val.string.val = "task";
		k.val.string.len = 4;
		v.type = jbvNumeric;
		v.val.numeric = DatumGetNumeric(DirectFunctionCall1(int8_numeric, Int64GetDatum(task)));
		pushJsonbValue(&state, WJB_KEY, &k);
		pushJsonbValue(&state, WJB_VALUE, &v);
	}
	res = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(res);
}

/*
 * Record a task's outcome with done_plan or failed_plan; started is when the
 * attempt that produced it began, or 0 when none ran (a crash counted).
 */
static void
record_outcome(SPIPlanPtr plan, int64 task, Jsonb *value, TimestampTz started)
{
	Datum		values[3] = {Int64GetDatum(task), JsonbPGetDatum(value),
	TimestampTzGetDatum(started)};
	char		nulls[3] = {' ', value == NULL ? 'n' : ' ', started == 0 ? 'n' : ' '};
	bool		isnull;

	journal_execute(NULL, plan, 3, NULL, values, nulls, SPI_OK_SELECT);
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		apiary_finished_at_commit();
	/* released waiters may be ready now */
	apiary_wake_at_commit();
}

/* The task returned a future: take its output, now or once it is done. */
static void
link_to_future(RunningTask *t, int64 future)
{
	Jsonb	   *output = NULL;
	Jsonb	   *error = NULL;
	char	   *st = future_state(future, t->role, t->workflow, &output, &error);

	if (strcmp(st, "done") == 0)
		record_outcome(done_plan, t->id, output, t->started);
	else if (strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0)
		record_outcome(failed_plan, t->id, error, t->started);
	else
	{
		Datum		values[3] = {Int64GetDatum(t->id), Int64GetDatum(future),
		TimestampTzGetDatum(t->started)};

		journal_execute(NULL, link_plan, 3, NULL, values, NULL, SPI_OK_UPDATE);
	}
}

/*
 * Seconds before retry n (1-based), doubling from first, jittered by +-50%
 * so that retries of conflicting tasks spread out; at most an hour.
 */
static double
retry_delay(double first, int attempt)
{
	double		base = Min(first * pow(2.0, Min(attempt - 1, 30)), 3600.0);

	return base * (0.5 + pg_prng_double(&pg_global_prng_state));
}

/* Was the workflow cancelled while the task ran?  Locks it against that. */
static bool
workflow_cancelled(RunningTask *t)
{
	Datum		values[2] = {ObjectIdGetDatum(t->role), PointerGetDatum(t->workflow)};
	bool		isnull;

	journal_execute(NULL, cancelled_plan, 2, NULL, values, NULL, SPI_OK_SELECT);
	return SPI_processed == 1 &&
		DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

static void
run_task(RunningTask *t, const char *function, Jsonb *args, int attempt)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	Oid			save_user;
	int			save_sec;
	Jsonb	   *resolved = resolve_futures(args, t);
	Datum		out = (Datum) 0;
	bool		isnull = false;
	bool		cancelled = false;
	ErrorData  *edata = NULL;
	ApiaryKind	kind = APIARY_KIND_TRANSACTIONAL;
	int			max_attempts = apiary_max_attempts;

	GetUserIdAndSecContext(&save_user, &save_sec);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	running_task = t;
	PG_TRY();
	{
		ApiaryFunction *f;

		/* the task runs as the role that queued it, never as this worker */
		SetUserIdAndSecContext(t->role, save_sec | SECURITY_LOCAL_USERID_CHANGE);
		f = registry_acquire(function);
		kind = f->kind;
		if (f->max_attempts > 0)
			max_attempts = f->max_attempts;
		if (f->timeout_ms > 0)
			enable_timeout_after(STATEMENT_TIMEOUT, (int) Min(f->timeout_ms, INT_MAX));
		PG_TRY();
		{
			out = apiary_call(f, resolved, cxt, &isnull);
		}
		PG_FINALLY();
		{
			disable_timeout(STATEMENT_TIMEOUT, false);
			registry_release(f);
		}
		PG_END_TRY();
		SetUserIdAndSecContext(save_user, save_sec);

		/* a workflow cancelled meanwhile takes the task's effects back */
		cancelled = workflow_cancelled(t);
		if (cancelled)
			RollbackAndReleaseCurrentSubTransaction();
		else
			ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		SetUserIdAndSecContext(save_user, save_sec);
	}
	PG_END_TRY();
	running_task = NULL;

	if (cancelled)
	{
		/* apiary_cancel skipped this task, which it found running */
		Datum		values[2] = {Int64GetDatum(t->id), TimestampTzGetDatum(t->started)};

		journal_execute(NULL, cancel_task_plan, 2, NULL, values, NULL, SPI_OK_UPDATE);
		return;
	}

	if (edata == NULL)
	{
		int64		future;

		if (!isnull && apiary_jsonb_is_future(DatumGetJsonbP(out), &future))
			link_to_future(t, future);
		else
			record_outcome(done_plan, t->id, isnull ? NULL : DatumGetJsonbP(out), t->started);
		return;
	}

	/*
	 * Retry what retrying can cure: conflicts with other transactions for
	 * any task, anything at all for an external one (its effects are
	 * outside, and it has a stable apiary_task_key for them).
	 */
	if (attempt < max_attempts &&
		(kind == APIARY_KIND_EXTERNAL ||
		 edata->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
		 edata->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED))
	{
		double		delay = retry_delay(kind == APIARY_KIND_EXTERNAL ? 0.5 : 0.01, attempt);
		Datum		values[3] = {Int64GetDatum(t->id), Float8GetDatum(delay),
		TimestampTzGetDatum(t->started)};

		ereport(LOG,
				(errmsg("apiary task %lld (%s) failed, retrying in %.3f s (attempt %d of %d): %s",
						(long long) t->id, function, delay, attempt, max_attempts,
						edata->message)));
		journal_execute(NULL, retry_plan, 3, NULL, values, NULL, SPI_OK_UPDATE);
		apiary_wake_at_commit();
		return;
	}

	ereport(LOG,
			(errmsg("apiary task %lld (%s) of workflow \"%s\" failed: %s",
					(long long) t->id, function, text_to_cstring(t->workflow),
					edata->message)));
	record_outcome(failed_plan, t->id, error_jsonb(edata, t->id, function), t->started);
}

/*
 * Claim and run one ready task, in a transaction of its own.  Returns false
 * when there was none, with *nap_ms set to when to look again.
 */
static bool
run_one_task(long *nap_ms)
{
	RunningTask t;
	char	   *function;
	Jsonb	   *args;
	int			attempt;
	bool		isnull;
	Datum		next;
	Oid			nsp;

	*nap_ms = 60 * 1000L;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());

	nsp = get_namespace_oid("apiary", true);
	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("tasks", nsp)))
	{
		/* the extension is gone, or not at version 0.2 yet */
		*nap_ms = 1000L;
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
		return false;
	}

	prepare_plans();
	journal_execute(NULL, claim_plan, 0, NULL, NULL, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
	{
		journal_execute(NULL, next_plan, 0, NULL, NULL, NULL, SPI_OK_SELECT);
		next = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			*nap_ms = Max(1L, Min(DatumGetInt64(next) + 1, *nap_ms));
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
		return false;
	}

	t.id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	t.role = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	t.workflow = DatumGetTextPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	function = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	args = DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull));
	attempt = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6, &isnull)) + 1;
	t.started = GetCurrentTimestamp();

	pgstat_report_activity(STATE_RUNNING, psprintf("apiary task %lld: %s", (long long) t.id, function));
	marker_write(t.id);
	run_task(&t, function, args, attempt);

	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	marker_clear();
	pgstat_report_activity(STATE_IDLE, NULL);
	return true;
}

/* ---------------------------------------------------------------------
 * Crash counting
 * ---------------------------------------------------------------------
 */

static void
marker_write(int64 task)
{
	char		buf[64];
	int			len = snprintf(buf, sizeof(buf), "%u %lld\n", MyDatabaseId, (long long) task);
	int			fd = open(marker_path, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, pg_file_create_mode);

	if (fd < 0 || write(fd, buf, len) != len)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", marker_path)));
	close(fd);
}

static void
marker_clear(void)
{
	if (unlink(marker_path) != 0 && errno != ENOENT)
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not remove file \"%s\": %m", marker_path)));
}

static void
marker_clear_at_exit(int code, Datum arg)
{
	marker_clear();
}

/*
 * The task this slot was running when the server went down, if any, gets a
 * crash counted; at max_attempts crashes it fails instead of taking the
 * server down again, and everything else goes on.
 */
static void
count_crash(void)
{
	FILE	   *f = fopen(marker_path, "r");
	unsigned int db;
	long long	task;
	bool		found;

	if (f == NULL)
		return;
	found = fscanf(f, "%u %lld", &db, &task) == 2 && db == MyDatabaseId && task > 0;
	fclose(f);

	if (found)
	{
		Oid			types[1] = {INT8OID};
		Datum		values[1] = {Int64GetDatum(task)};

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		if (OidIsValid(get_namespace_oid("apiary", true)))
		{
			journal_execute("UPDATE apiary.tasks t SET crashes = crashes OPERATOR(pg_catalog.+) 1"
							" WHERE id OPERATOR(pg_catalog.=) $1"
							" AND state OPERATOR(pg_catalog.=) 'pending'"
							" RETURNING crashes, function, COALESCE("
							"  (SELECT max_attempts FROM apiary.functions f"
							"   WHERE f.name OPERATOR(pg_catalog.=) t.function),"
							"  pg_catalog.current_setting('apiary.max_attempts')::pg_catalog.int4)",
							NULL, 1, types, values, NULL, SPI_OK_UPDATE_RETURNING);
			if (SPI_processed == 1)
			{
				bool		isnull;
				int			crashes = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
				char	   *function = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
				int			max = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));

				ereport(LOG,
						(errmsg("apiary task %lld (%s) was running when the server went down (%d of %d)",
								task, function, crashes, max)));
				if (crashes >= max)
				{
					ErrorData	edata = {0};

					edata.sqlerrcode = ERRCODE_INTERNAL_ERROR;
					edata.message = psprintf("task %lld was running when the server went down %d times",
											 task, crashes);
					edata.hint = "apiary will not run it again. Fix the function, then call apiary_resume.";
					prepare_plans();
					record_outcome(failed_plan, task, error_jsonb(&edata, task, function), 0);
				}
			}
		}
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
	}
	marker_clear();
}

/* ---------------------------------------------------------------------
 * The worker
 * ---------------------------------------------------------------------
 */

static void
release_slot(int code, Datum arg)
{
	int			slot = DatumGetInt32(arg);

	SpinLockAcquire(&apiary_shared->mutex);
	if (apiary_shared->slots[slot].pid == MyProcPid)
	{
		apiary_shared->slots[slot].pid = 0;
		apiary_shared->slots[slot].latch = NULL;
	}
	SpinLockRelease(&apiary_shared->mutex);
}

/* Take slot, unless a live executor holds it (after a launcher restart). */
static bool
claim_slot(int slot)
{
	bool		ok;

	SpinLockAcquire(&apiary_shared->mutex);
	ok = apiary_shared->slots[slot].pid == 0 ||
		kill(apiary_shared->slots[slot].pid, 0) != 0;
	if (ok)
	{
		apiary_shared->slots[slot].pid = MyProcPid;
		apiary_shared->slots[slot].latch = MyLatch;
	}
	SpinLockRelease(&apiary_shared->mutex);
	return ok;
}

void
apiary_executor_main(Datum main_arg)
{
	int			slot = DatumGetInt32(main_arg);

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	if (slot < 0 || slot >= APIARY_MAX_WORKERS || !claim_slot(slot))
		proc_exit(0);
	before_shmem_exit(release_slot, Int32GetDatum(slot));

	BackgroundWorkerInitializeConnection(apiary_database, NULL, 0);
	pgstat_report_appname("apiary executor");

	snprintf(marker_path, MAXPGPATH, "%s/executor.%d", MARKER_DIR, slot);
	if (MakePGDirectory(MARKER_DIR) != 0 && errno != EEXIST)
		ereport(FATAL,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", MARKER_DIR)));
	/* counting must not stop the executor: on error, log and go on */
	PG_TRY();
	{
		count_crash();
	}
	PG_CATCH();
	{
		EmitErrorReport();
		AbortCurrentTransaction();
		FlushErrorState();
		marker_clear();
	}
	PG_END_TRY();
	/* an orderly exit, FATAL included, is no crash */
	before_shmem_exit(marker_clear_at_exit, (Datum) 0);

	for (;;)
	{
		volatile bool ran = false;
		long		nap_ms = 1000L;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		PG_TRY();
		{
			ran = run_one_task(&nap_ms);
		}
		PG_CATCH();
		{
			/* an error outside the task's own subtransaction: start over */
			EmitErrorReport();
			AbortCurrentTransaction();
			FlushErrorState();
			marker_clear();
			running_task = NULL;
			nap_ms = 1000L;
		}
		PG_END_TRY();

		if (ran)
			continue;
		/* background workers report their statistics themselves */
		pgstat_report_stat(false);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 nap_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
