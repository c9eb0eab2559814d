/*-------------------------------------------------------------------------
 *
 * executor.c
 *	  Executor background workers: run queued tasks, each in one transaction.
 *
 * An executor sleeps on its latch until a committing transaction that made
 * tasks ready sets it (launcher.c), or until the earliest retry is due.
 * Then, in one transaction, it
 *
 *	1. claims a ready task, skipping those other executors hold (queue.c):
 *	   first the task its previous transaction made ready, if any, so that
 *	   a workflow under way goes on before new ones start; else the oldest;
 *	2. substitutes the outputs of the futures among its arguments;
 *	3. runs the function as the role that queued the task, in a
 *	   subtransaction, so that a failure can be recorded;
 *	4. records the outcome (queue_finish: output, released waiters, the
 *	   workflow's end), or, with attempts left, schedules a retry with
 *	   jittered exponential backoff: after a serialization failure or
 *	   deadlock for any task, after any error for an external one.  A
 *	   function's timeout ends it with an error like any other; a workflow
 *	   cancelled while the task ran rolls the task back;
 *	5. commits: the function's effects, the tasks it queued and the
 *	   bookkeeping become visible together, or not at all.  The commit
 *	   wakes one idle executor for each further task it made ready.
 *
 * A crash anywhere before the commit leaves the task pending, to be claimed
 * again after restart: there is no "running" state that could be left
 * behind.  A function that returns a future ({"apiary_future": id}) takes
 * that future's output as its own: the task is "linked" until it is done.
 *
 * A task whose function takes the whole server down (a crash in C code)
 * would be claimed and crash it again after every restart.  Executors
 * therefore keep a marker file naming the task they run; after a restart,
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
#include <sys/mman.h>

#include "access/parallel.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/prepare.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "common/pg_prng.h"
#include "mb/pg_wchar.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/pmsignal.h"
#include "storage/lock.h"
#include "common/file_perm.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/portal.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "apiary.h"
#include "bind.h"
#include "executor.h"
#include "guc.h"
#include "invoke.h"
#include "journal.h"
#include "provenance.h"
#include "queue.h"
#include "launcher.h"
#include "registry.h"
#include "stats.h"

PG_FUNCTION_INFO_V1(apiary_queue);
PG_FUNCTION_INFO_V1(apiary_task_key);
PG_FUNCTION_INFO_V1(apiary_task_attempt);

/* The task this process is running, if any: apiary_queue's context. */
typedef struct RunningTask
{
	int64		id;
	Oid			role;
	text	   *workflow;
	TimestampTz started;
	int			queued;			/* tasks it queued (apiary.max_queued) */
	int			calls;			/* apiary_invoke calls it began (task keys) */
	int			attempt;		/* 1 at the first, since its last resume */
	List	   *foreign_waits;	/* WaitPairs to check before the commit */
} RunningTask;

/*
 * A task queued child to wait for future, which another transaction
 * queued and which may finish before this task commits (hold_waits).
 */
typedef struct WaitPair
{
	int64		future;
	int64		child;
} WaitPair;

static RunningTask *running_task = NULL;

/*
 * Crash markers.  Before running a task an executor writes its id into a
 * file of its own, and overwrites it with 0 once the task's transaction has
 * ended, or when the executor exits in an orderly way (shutdown, FATAL, the
 * postmaster's death).  A task id still there after a restart names the
 * task that slot was running when a backend crashed: the postmaster then
 * kills every backend at once and restarts them, with no exit callbacks.
 * The launcher counts those crashes before it starts any executor
 * (apiary_count_crashes).  The file is mapped into the executor's memory,
 * so naming a task is two stores, no system call; it is not fsynced: the
 * operating system, which holds the mapped page, outlives a backend crash.
 * The task id is stored twice, the second time inverted, and a reader
 * trusts it only when the two agree: an executor killed between the two
 * stores leaves a marker that names no task.  An immediate shutdown ends
 * the executors as a crash does, without exit callbacks, but it is not the
 * task's fault: a marker records when its postmaster started, and counts
 * only under that same postmaster, which a crash restart keeps and a
 * shutdown does not.  An executor that crashes itself (a segmentation
 * fault, an abort) also says so in its marker, from a signal handler, so
 * that its task is counted under a new postmaster too: with
 * restart_after_crash off, whatever restarts the server starts one.
 *
 * A task can also end its executor in an orderly way: a FATAL error of a C
 * function, or a superuser's task terminating its own backend.  The
 * server goes on and the task is pending again, so without a count it
 * would run again at once, for ever.  Such an exit leaves its marker
 * naming the task, marked as the task's doing, and the executor the
 * launcher starts in the slot counts it before it takes work.  An
 * operator's termination (pg_terminate_backend from another session) or
 * a shutdown ends the executor with a FATAL of class 57 (operator
 * intervention) and is not counted: the exit handler tells a SIGTERM the
 * executor sent itself from one sent by another process.  A marker also
 * names the apiary.tasks its task id is of: a DROP and CREATE EXTENSION
 * before the count starts task ids over, and the id would name a task
 * that never ran.
 */
#define MARKER_DIR APIARY_DATA_DIR
#define MARKER_MAGIC 0x41504934	/* "API4" */
#define MARKER_SIGNAL 1			/* crashed: the executor died of a signal */
#define MARKER_FATAL 2			/* crashed: the task ended it with FATAL */

typedef struct Marker
{
	uint32		magic;
	Oid			database;
	Oid			tasks_relid;	/* apiary.tasks's OID: task ids are its */
	TimestampTz postmaster_started;	/* PgStartTime */
	int64		task;
	int64		check;			/* ~task */
	sig_atomic_t crashed;		/* MARKER_SIGNAL, MARKER_FATAL or 0 */
	int			fatal_sqlerrcode;	/* MARKER_FATAL: the error's SQLSTATE */
	char		fatal_message[256]; /* and the start of its message */
} Marker;

static volatile Marker *marker = NULL;
static int	executor_slot = -1;

/*
 * A SIGTERM the executor sent itself (a task terminating its backend), and
 * one another process sent (an operator, a shutdown, the launcher)
 */
static volatile sig_atomic_t terminated_itself = false;
static volatile sig_atomic_t terminated_by_other = false;
static emit_log_hook_type prev_emit_log_hook = NULL;

static void marker_write(int64 task);
static void marker_open(int slot);
static void marker_clear_at_exit(int code, Datum arg);

static void retry_or_fail(RunningTask *t, const char *function, ErrorData *edata,
						  int attempt, int max_attempts, bool retry, double first_delay);

/*
 * Tasks this executor's transaction made ready (queued, or released from
 * waiting): after the commit it runs the first itself, so a workflow under
 * way goes on before new ones start, and wakes idle executors for the rest.
 */
#define MAX_READY 8
static int64 ready_ids[MAX_READY];
static int	nready = 0;

/* A subtransaction rolled back while the task ran: what it queued may be gone. */
static bool queued_undone = false;

/*
 * apiary.max_queued counts the tasks that survive: for each open
 * subtransaction that queued (innermost last), the running task's count
 * when it began, restored if it rolls back.
 */
#define MAX_QUEUED_MARKS 512
typedef struct QueuedMark
{
	SubTransactionId subid;
	int			before;
} QueuedMark;
static QueuedMark queued_marks[MAX_QUEUED_MARKS];
static int	nqueued_marks = 0;

/*
 * The task this executor's transaction claimed (0: none) and when its
 * attempt began.  When that transaction fails outside the task's
 * subtransaction, they stay set, with the error in failed_error, until
 * settle_failed takes them.
 */
static int64 claimed_id = 0;
static TimestampTz claimed_started = 0;
static ErrorData *failed_error = NULL;
static MemoryContext failed_cxt = NULL;

static void
note_ready(int64 id)
{
	if (nready < MAX_READY)
		ready_ids[nready] = id;
	nready++;
}

static void
note_subxact_end(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	QueuedMark *top;

	if (event == SUBXACT_EVENT_ABORT_SUB)
		queued_undone = true;
	if (nqueued_marks == 0 || queued_marks[nqueued_marks - 1].subid != mySubid)
		return;
	top = &queued_marks[nqueued_marks - 1];
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		if (running_task != NULL)
			running_task->queued = top->before;
		nqueued_marks--;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		/* its tasks are its parent's now: the parent began with as many */
		if (parentSubid == TopSubTransactionId ||
			(nqueued_marks > 1 && top[-1].subid == parentSubid))
			nqueued_marks--;
		else
			top->subid = parentSubid;
	}
}

/* Count a task the running task queues, against apiary.max_queued. */
static void
count_queued(void)
{
	SubTransactionId sub = GetCurrentSubTransactionId();

	if (sub != TopSubTransactionId &&
		(nqueued_marks == 0 || queued_marks[nqueued_marks - 1].subid != sub))
	{
		if (nqueued_marks == MAX_QUEUED_MARKS)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("cannot queue tasks in more than %d nested subtransactions",
							MAX_QUEUED_MARKS)));
		queued_marks[nqueued_marks].subid = sub;
		queued_marks[nqueued_marks].before = running_task->queued;
		nqueued_marks++;
	}
	if (running_task->queued >= apiary_max_queued)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("a task may queue at most %d tasks", apiary_max_queued),
				 errhint("Raise apiary.max_queued, or queue the work in stages.")));
	running_task->queued++;
}

/* Did the running task queue future itself, ready, and nothing undo it? */
static bool
queued_here(int64 future)
{
	if (queued_undone)
		return false;
	for (int i = 0; i < Min(nready, MAX_READY); i++)
		if (ready_ids[i] == future)
			return true;
	return false;
}

/* ---------------------------------------------------------------------
 * Futures
 * ---------------------------------------------------------------------
 */

/*
 * A future's id is an integer that fits a task id; any other number (5.7,
 * 1e30) under the key is plain data, not a future.
 */
static bool
is_task_id(Numeric n, int64 *id)
{
	char	   *s;
	char	   *end;
	long long	v;

	if (numeric_is_nan(n) || numeric_is_inf(n))
		return false;
	s = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(n)));
	if (strspn(s + (*s == '-'), "0123456789") != strlen(s + (*s == '-')))
		return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0')
		return false;
	*id = (int64) v;
	return true;
}

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
	return is_task_id(idv->val.numeric, id);
}

bool
apiary_jsonb_is_future(Jsonb *jb, int64 *id)
{
	JsonbValue	v;
	int64		ignored;

	/* NULL is what apiary_invoke_jsonb returns for SQL NULL: no future */
	if (jb == NULL || !JB_ROOT_IS_OBJECT(jb))
		return false;
	v.type = jbvBinary;
	v.val.binary.data = &jb->root;
	v.val.binary.len = VARSIZE(jb) - VARHDRSZ;
	return value_is_future(&v, id != NULL ? id : &ignored);
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

void
apiary_check_no_futures(const char *caller, Jsonb *args)
{
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	v;
	int64		id;

	if (JB_ROOT_IS_SCALAR(args))
		return;
	it = JsonbIteratorInit(&args->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if ((tok == WJB_VALUE || tok == WJB_ELEM) && value_is_future(&v, &id))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s cannot take future %lld as an argument", caller, (long long) id),
					 errdetail("Only tasks queued with apiary_queue wait for futures."),
					 errhint("Pass the future to apiary_queue inside a running task, or return it.")));
	}
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
			QueueState st = queue_future(id, t->role, t->workflow, false, NULL, &out, NULL);

			if (st != QS_DONE)
				elog(ERROR, "future %lld of task %lld is %s, not done",
					 (long long) id, (long long) t->id, queue_state_name(st));
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
	List	   *foreign_futures = NIL;
	int64		id;
	int64		task;
	Oid			fn_owner;

	bind_require_name_args(name, args, NULL);
	bind_require_not_parallel("apiary_queue");
	if (running_task == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apiary_queue can only be called by a function running as an apiary task"),
				 errhint("Start a workflow with apiary_start; the functions it runs may queue tasks.")));
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot queue a task in a read-only transaction"),
				 apiary_xact_read_only() ?
				 errhint("The task's transaction is read-only: see default_transaction_read_only of apiary.database (ALTER DATABASE) and of the role the executors connect as.") :
				 errhint("A readonly function cannot queue tasks; register the function that queues as transactional.")));
	bind_check_limits(name, args);

	/* callable now, with these arguments; checked again when it runs */
	fn_owner = bind_check_queued(name, args);
	count_queued();

	/* futures among the top-level values: wait for those not done yet */
	if (!JB_ROOT_IS_SCALAR(args))
	{
		it = JsonbIteratorInit(&args->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			QueueState	st;
			ListCell   *lc;
			bool		seen = false;
			bool		foreign;

			if ((tok != WJB_VALUE && tok != WJB_ELEM) || !value_is_future(&v, &id))
				continue;
			st = queue_future(id, running_task->role, running_task->workflow,
							  false, &foreign, NULL, NULL);
			if (st == QS_DONE)
				continue;

			/*
			 * Failed already, its waiters cancelled: the new task is
			 * cancelled with them at this task's end, as a future of
			 * another workflow's that failed is, so that the workflow
			 * reports the failure itself and not that it came early.
			 */
			if (st == QS_FAILED || st == QS_CANCELLED)
				foreign = true;
			/* the same future twice is one wait */
			foreach(lc, waits)
				seen |= *(int64 *) lfirst(lc) == id;
			if (!seen)
			{
				int64	   *future = palloc_object(int64);

				*future = id;
				waits = lappend(waits, future);
				if (foreign)
					foreign_futures = lappend(foreign_futures, future);
			}
		}
	}

	task = queue_add_task(running_task->role, running_task->workflow,
						  running_task->id, name, fn_owner, args, waits);
	if (waits == NIL)
		note_ready(task);
	else
	{
		ListCell   *lc;
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

		foreach(lc, foreign_futures)
		{
			WaitPair   *w = palloc_object(WaitPair);

			w->future = *(int64 *) lfirst(lc);
			w->child = task;
			running_task->foreign_waits = lappend(running_task->foreign_waits, w);
		}
		MemoryContextSwitchTo(old);
	}
	return apiary_future_jsonb(task);
}

Datum
apiary_queue(PG_FUNCTION_ARGS)
{
	bind_require_call_args(fcinfo);
	PG_RETURN_JSONB_P(apiary_queue_jsonb(text_to_cstring(PG_GETARG_TEXT_PP(0)),
										 PG_GETARG_JSONB_P(1)));
}

bool
apiary_in_task(text **workflow, int64 *task, Oid *role)
{
	if (running_task == NULL)
		return false;
	*workflow = running_task->workflow;
	*task = running_task->id;
	if (role != NULL)
		*role = running_task->role;
	return true;
}

/*
 * A key for the running task that stays the same across its attempts: what
 * an external function hands to the service it calls, so that a retry after
 * a crash or timeout is not a second charge.  "<workflow>/<task>"; inside
 * the nth apiary_invoke call the task made (counted in the order they
 * began, at any depth), "<workflow>/<task>.<n>" (a workflow id may hold
 * '/', so the number must not look like a task's), so that two external
 * calls of one task are two calls to the service: the same across attempts
 * as long as the function makes its calls in the same order.
 */
char *
apiary_task_key_cstring(void)
{
	int			call;

	/* a parallel worker knows nothing of its leader's task */
	if (IsParallelWorker())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("apiary_task_key cannot be called in a parallel worker"),
				 errhint("Mark the function that calls it PARALLEL RESTRICTED or UNSAFE.")));
	if (running_task == NULL)
		return NULL;
	call = apiary_invoke_ordinal();
	if (call == 0)
		return psprintf("%s/%lld", text_to_cstring(running_task->workflow),
						(long long) running_task->id);
	return psprintf("%s/%lld.%d", text_to_cstring(running_task->workflow),
					(long long) running_task->id, call);
}

/* The ordinal of an apiary_invoke call the running task begins; 0 outside. */
int
apiary_next_call(void)
{
	return running_task == NULL ? 0 : ++running_task->calls;
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

/*
 * Which attempt of the running task this is: 1 at the first (and after a
 * resume), up to its max_attempts; so a function can tell its last.
 */
Datum
apiary_task_attempt(PG_FUNCTION_ARGS)
{
	if (running_task == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apiary_task_attempt can only be called by a function running as an apiary task")));
	PG_RETURN_INT32(running_task->attempt);
}

/* ---------------------------------------------------------------------
 * Running a task
 * ---------------------------------------------------------------------
 */

/*
 * Longest text of a recorded error's field (message, detail, hint,
 * context): a longer one is cut at a character boundary, and says so.
 * Five such fields keep the error far below jsonb's 256 MB, past which it
 * could not be recorded at all.
 */
#define ERROR_FIELD_MAX (1024 * 1024)

/*
 * Where the WAL inserted so far ends.  GetXLogInsertRecPtr gives where the
 * next record would begin: at a page boundary, past the next page's
 * header, which XLogFlush refuses ("xlog flush request ... is not
 * satisfied") while that page has not been written.
 */
static XLogRecPtr
inserted_wal_end(void)
{
	XLogRecPtr	lsn = GetXLogInsertRecPtr();
	uint32		header = XLogSegmentOffset(lsn, wal_segment_size) < XLOG_BLCKSZ ?
		SizeOfXLogLongPHD : SizeOfXLogShortPHD;

	if (lsn % XLOG_BLCKSZ == header)
		lsn -= header;
	return lsn;
}

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
		if (v.val.string.len > ERROR_FIELD_MAX)
		{
			int			keep = pg_mbcliplen(vals[i], v.val.string.len, ERROR_FIELD_MAX);

			v.val.string.val = psprintf("%.*s... (%d bytes cut)", keep, vals[i],
										v.val.string.len - keep);
			v.val.string.len = strlen(v.val.string.val);
		}
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
 * Record a task's outcome (and what follows from it); started is when the
 * attempt that produced it began, or 0 when none ran (a crash counted).
 */
static void
record_outcome(int64 task, QueueState state, Jsonb *value, TimestampTz started)
{
	int64		released[MAX_READY];
	int			n = queue_finish(task, state, value, started, released,
								 MAX_READY);

	for (int i = 0; i < n; i++)
		note_ready(i < MAX_READY ? released[i] : 0);
}

/* A cancel found task t running: it is cancelled, however it ended. */
static void
record_cancelled(RunningTask *t, bool timed_out)
{
	Datum		error = DirectFunctionCall1(jsonb_in,
											CStringGetDatum(timed_out ?
															"{\"sqlstate\": \"57014\", "
															"\"cancelled\": \"by the workflow's timeout, while running\"}" :
															"{\"sqlstate\": \"57014\", "
															"\"cancelled\": \"by apiary_cancel, while running\"}"));

	record_outcome(t->id, QS_CANCELLED, DatumGetJsonbP(error), t->started);
}

/*
 * The task's function has returned: hold the futures of other transactions
 * that it made tasks wait for, to its commit, so that their finish sees the
 * waits (queue_future).  Held only now, so that a future's finish waits at
 * most for this commit, not for the rest of the function.  One that
 * finished meanwhile could not see the waits: its waiters are released, or
 * cancelled, here instead, as its finish would have done.  (A waiter a
 * rolled-back subtransaction took back is simply not found.)
 */
static void
hold_waits(RunningTask *t, Datum out, bool isnull)
{
	ListCell   *lc;
	int64		returned;

	/*
	 * A task returning a future takes the link lock before any held row,
	 * as everywhere.  (check_returned_future comes after this, so that it
	 * sees what this releases or cancels.)
	 */
	if (t->foreign_waits != NIL && !isnull &&
		apiary_jsonb_is_future(DatumGetJsonbP(out), &returned) && !queued_here(returned))
		queue_lock_links(t->role, t->workflow);

	foreach(lc, t->foreign_waits)
	{
		WaitPair   *w = lfirst(lc);
		Jsonb	   *failure = NULL;
		QueueState	st = queue_future(w->future, t->role, t->workflow, true,
									  NULL, NULL, &failure);

		if (st == QS_DONE)
		{
			if (queue_release(w->child))
				note_ready(w->child);
		}
		else if (st == QS_FAILED || st == QS_CANCELLED)
			queue_cancel_waiter(w->child, w->future, failure);
	}
}

/* A future a task returned, looked at before its subtransaction ends. */
typedef struct ReturnedFuture
{
	bool		is_future;		/* else the output is no future */
	int64		id;
	QueueState	state;
	Jsonb	   *output;
	Jsonb	   *error;
} ReturnedFuture;

/*
 * Is the task's output a future, and in what state?  One that is not of
 * its workflow raises an error, inside the task's subtransaction, which
 * fails the task like any error of its function.  Results go in cxt.
 */
static void
check_returned_future(RunningTask *t, Datum out, bool isnull,
					  ReturnedFuture *r, MemoryContext cxt)
{
	MemoryContext old;

	memset(r, 0, sizeof(*r));
	r->is_future = !isnull && apiary_jsonb_is_future(DatumGetJsonbP(out), &r->id);
	if (!r->is_future)
		return;
	/* a task it queued itself is pending still: no need to read it */
	if (queued_here(r->id))
	{
		r->state = QS_PENDING;
		return;
	}
	queue_lock_links(t->role, t->workflow);
	old = MemoryContextSwitchTo(cxt);
	r->state = queue_future(r->id, t->role, t->workflow, true, NULL,
							&r->output, &r->error);
	MemoryContextSwitchTo(old);
	if (!queue_finished_state(r->state) && queue_depends_on(r->id, t->id))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a task cannot return a future that waits for its own output"),
				 errdetail("Future %lld waits, itself or through other futures, for the output of task %lld, which returned it: neither could ever finish.",
						   (long long) r->id, (long long) t->id)));
}

/* The task returned a future: take its output, now or once it is done. */
static void
link_to_future(RunningTask *t, const ReturnedFuture *r)
{
	if (r->state == QS_DONE)
		record_outcome(t->id, QS_DONE, r->output, t->started);
	else
		queue_link(t->id, r->id, t->started,
				   r->state == QS_FAILED || r->state == QS_CANCELLED, r->error);
}

/*
 * What outlives a transaction in a session: a task's session-level
 * advisory locks, its prepared statements, its sequences' last values and
 * its random() seed, released, deallocated, forgotten and reseeded however
 * the task ended, for the next task may be another role's.
 */
static void
end_session_state(void)
{
	LockReleaseSession(USER_LOCKMETHOD);
	DropAllPreparedStatements();
	/* lastval() would name its sequence, and setseed() fix random() */
	ResetSequenceCaches();
	(void) DirectFunctionCall1(setseed,
							   Float8GetDatum(pg_prng_double(&pg_global_prng_state) * 2.0 - 1.0));
}

/*
 * What a transaction leaves for its commit is done when the task returns,
 * still in its subtransaction and as its role, not at the commit as this
 * worker (only apiary's own rows are written after this); and nothing it
 * did to this session outlives it.  Its deferred constraints are checked:
 * a violation fails the task, where at the commit it would undo the whole
 * transaction and put the task back in the queue, to fail again.  A
 * constraint trigger that defers more (SET CONSTRAINTS ... DEFERRED) has
 * that checked too, once more, as a security-restricted operation, which
 * refuses to defer anything further (42501): it would run at the commit,
 * as this worker.  Then the cursors it left open, including any those
 * triggers opened, are closed: at the commit, one WITH HOLD would run the
 * rest of its query as this worker.  Its temporary tables are dropped:
 * they come first in every search_path.  Its settings (SET, not only SET
 * LOCAL) are undone, from guc_level.  (A task that fails has all of that
 * undone by its subtransaction's rollback, but end_session_state.)
 */
static void
end_task_work(int guc_level)
{
	ConstraintsSetStmt all_immediate = {.type = T_ConstraintsSetStmt,
	.constraints = NIL,.deferred = false};
	Oid			user;
	int			sec;

	AfterTriggerSetState(&all_immediate);
	GetUserIdAndSecContext(&user, &sec);
	SetUserIdAndSecContext(user, sec | SECURITY_RESTRICTED_OPERATION);
	AfterTriggerSetState(&all_immediate);
	SetUserIdAndSecContext(user, sec);
	PortalHashTableDeleteAll();
	ResetTempTableNamespace();
	end_session_state();
	AtEOXact_GUC(false, guc_level);
}

/*
 * Seconds before retry n (1-based), doubling from first, jittered by +-50%
 * so that retries of conflicting tasks spread out: at most an hour before
 * the jitter, an hour and a half after it.
 */
static double
retry_delay(double first, int attempt)
{
	double		base = Min(first * pow(2.0, Min(attempt - 1, 30)), 3600.0);

	return base * (0.5 + pg_prng_double(&pg_global_prng_state));
}

/* Has the function run for its timeout (timeout_ms > 0) since from? */
static bool
past_timeout(int64 timeout_ms, TimestampTz from)
{
	return timeout_ms > 0 && GetCurrentTimestamp() - from >= timeout_ms * 1000;
}

/*
 * The function's timeout ends a task through statement_timeout's timer,
 * whose message would name that setting, which never reaches tasks: a
 * cancel once the timeout has passed says which timeout it was.  Returns
 * whether it was that timeout.
 */
static bool
timed_out(ErrorData *edata, const char *function, int64 timeout_ms,
		  TimestampTz from)
{
	if (edata->sqlerrcode != ERRCODE_QUERY_CANCELED || !past_timeout(timeout_ms, from))
		return false;
	edata->message = psprintf("function \"%s\" ran longer than its timeout of %lld ms",
							  function, (long long) timeout_ms);
	edata->detail = NULL;
	edata->hint = pstrdup("Register the function again with apiary_register and a longer timeout.");
	return true;
}

/*
 * Take on the settings the task was queued with (for this transaction),
 * those that differ from this worker's.  (A task queued before 0.15 has
 * none, and runs with the worker's.)
 */
static void
apply_settings(const QueueTask *task)
{
	for (int i = 0; i < Min(task->nsettings, QUEUE_NSETTINGS); i++)
	{
		const char *name = queue_setting_names[i];

		if (task->settings[i] != NULL &&
			strcmp(task->settings[i], GetConfigOption(name, false, false)) != 0)
			(void) set_config_option(name, task->settings[i], PGC_USERSET,
									 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
	}
}

static void
run_task(RunningTask *t, const QueueTask *task, int attempt)
{
	const char *function = task->function;
	Oid			fn_owner = task->fn_owner;
	Jsonb	   *args = task->args;
	const char *search_path = task->search_path;
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	Oid			save_user;
	int			save_sec;
	Jsonb	   *resolved = resolve_futures(args, t);
	Datum		out = (Datum) 0;
	bool		isnull = false;
	bool		cancelled = false;
	bool		wf_timed_out = false;
	ReturnedFuture returned;
	bool		retry;
	ErrorData  *edata = NULL;
	/* set in PG_TRY, read after it */
	volatile ApiaryKind kind = APIARY_KIND_TRANSACTIONAL;
	volatile int max_attempts = apiary_max_attempts;
	volatile int64 timeout_ms = 0;
	volatile TimestampTz timeout_from = 0;
	volatile bool refused = false;	/* by the checks: no retry cures it */
	volatile bool late_timeout = false;	/* fired after the function returned */
	volatile bool checking_output = false;	/* of a function that returned */
	ApiaryFunction *volatile held = NULL;	/* released at the end of the call */
	bool		interrupted = false;
	bool		unbound = false;
	ProvenanceFrame prov;

	GetUserIdAndSecContext(&save_user, &save_sec);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	running_task = t;
	PG_TRY();
	{
		ApiaryFunction *f;

		/*
		 * The task runs as the role that queued it, never as this worker
		 * (session_user too, and is_superuser as that role's), with the
		 * search_path and settings it was queued with (for this
		 * transaction; usually they are this worker's own already).  A
		 * role dropped since has no rights left to run it with.
		 */
		if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(t->role)))
		{
			refused = true;
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("role with OID %u, which queued this task, no longer exists",
							t->role),
					 errdetail("A task runs as the role that queued it.")));
		}
		SetSessionAuthorization(t->role, superuser_arg(t->role));
		SetUserIdAndSecContext(t->role, save_sec | SECURITY_LOCAL_USERID_CHANGE);
		if (search_path != NULL && strcmp(search_path, namespace_search_path) != 0)
			(void) set_config_option("search_path", search_path, PGC_USERSET,
									 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
		refused = true;			/* a setting this server no longer takes */
		apply_settings(task);
		refused = false;
		f = held = registry_acquire(function);
		kind = f->kind;
		/* its own budget, also for what fails before it runs */
		if (f->max_attempts > 0)
			max_attempts = f->max_attempts;

		/*
		 * The name may have been freed since the task was queued (its
		 * function dropped or unregistered) and taken by another role's
		 * function, which would run here with this task's rights: only a
		 * function of the owner it had then runs.  (Tasks queued before
		 * 0.12 did not record it.)
		 */
		if (OidIsValid(fn_owner) && f->owner != fn_owner)
		{
			char	   *then = GetUserNameFromId(fn_owner, true);
			char	   *now = GetUserNameFromId(f->owner, true);

			refused = true;
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("apiary function \"%s\" is now %s, owned by %s, not by %s as when this task was queued",
							function, f->signature,
							now ? quote_identifier(now) : "a dropped role",
							then ? quote_identifier(then) : "a role since dropped"),
					 errdetail("A task runs only a function of the owner its function had when it was queued: another role's function under the same name would run with the task's rights."),
					 errhint("Start the work again to run the function registered now, or give the function back to its owner with ALTER FUNCTION ... OWNER TO.")));
		}

		/*
		 * What an external function does outside cannot be taken back, so
		 * the transaction that queued it must be durable first: it may
		 * have committed without waiting for its flush (a client's
		 * synchronous_commit = off, apiary.synchronous_steps = off), and a
		 * crash would then queue the call again under another task key.
		 */
		if (kind == APIARY_KIND_EXTERNAL)
			XLogFlush(inserted_wal_end());
		/* as apiary_register allows (one registered by an older library may be more) */
		timeout_ms = Min(f->timeout_ms, INT_MAX);
		timeout_from = GetCurrentTimestamp();
		if (timeout_ms > 0)
			enable_timeout_after(STATEMENT_TIMEOUT, (int) timeout_ms);
		provenance_begin(&prov);
		PG_TRY();
		{
			int			guc_level = NewGUCNestLevel();

			bind_binding_task = false;
			out = apiary_call(f, resolved, true, cxt, &isnull);
			/* a function that caught its timeout's cancel still timed out */
			if (past_timeout(timeout_ms, timeout_from))
				ereport(ERROR,
						(errcode(ERRCODE_QUERY_CANCELED),
						 errmsg("canceling statement due to statement timeout")));
			checking_output = true;
			bind_check_output(f->name, out, isnull);
			checking_output = false;
			end_task_work(guc_level);
			provenance_note(&prov, t->role, t->workflow, t->id, function);
		}
		PG_FINALLY();
		{
			provenance_pop(&prov);
			disable_timeout(STATEMENT_TIMEOUT, true);
			late_timeout = get_timeout_indicator(STATEMENT_TIMEOUT, true);
			registry_release(f);
			held = NULL;
		}
		PG_END_TRY();

		/*
		 * The timeout fired after the function returned in time, and
		 * before anything looked for interrupts: its cancel, still
		 * pending, would undo the task's success as an operator's cancel
		 * (and retry it).
		 */
		if (late_timeout)
			QueryCancelPending = false;
		/* the session user can change only outside a restricted context */
		SetUserIdAndSecContext(save_user, save_sec);
		SetSessionAuthorization(save_user, true);
		hold_waits(t, out, isnull);
		checking_output = true;
		check_returned_future(t, out, isnull, &returned, cxt);
		checking_output = false;

		/* a workflow cancelled meanwhile takes the task's effects back */
		cancelled = queue_workflow_cancelled(t->role, t->workflow, t->id, &wf_timed_out);
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
		/* an error between the acquire and the call (a refused owner, say) */
		if (held != NULL)
		{
			registry_release(held);
			held = NULL;
		}
		unbound = bind_binding_task;
		bind_binding_task = false;
		/* another cancel, by PostgreSQL's interrupt handling (not a RAISE) */
		interrupted = !timed_out(edata, function, timeout_ms, timeout_from) &&
			edata->sqlerrcode == ERRCODE_QUERY_CANCELED &&
			edata->funcname != NULL && strcmp(edata->funcname, "ProcessInterrupts") == 0;
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		SetUserIdAndSecContext(save_user, save_sec);
		SetSessionAuthorization(save_user, true);
		end_session_state();
	}
	PG_END_TRY();
	running_task = NULL;

	/*
	 * Retry what retrying can cure: conflicts with other transactions, and
	 * a cancel that was not the function's timeout (pg_cancel_backend of
	 * this executor, say: an operator's, not the function's doing), for
	 * any task; anything at all for an external one (its effects are
	 * outside, and it has a stable apiary_task_key for them), but for
	 * arguments that do not bind to its parameters (the function never
	 * ran) and for an output apiary refuses (too large, a future that
	 * could never finish: it would come again, after the function's
	 * effects outside had been repeated).
	 */
	if (checking_output && edata != NULL &&
		(edata->sqlerrcode == ERRCODE_PROGRAM_LIMIT_EXCEEDED ||
		 edata->sqlerrcode == ERRCODE_INVALID_PARAMETER_VALUE))
		refused = true;
	retry = edata != NULL && attempt < max_attempts && !refused && !unbound &&
		(kind == APIARY_KIND_EXTERNAL || interrupted ||
		 edata->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
		 edata->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED);

	/* a task cancelled while it ran is cancelled, however it ended */
	if (edata != NULL && queue_workflow_cancelled(t->role, t->workflow, t->id, &wf_timed_out))
	{
		cancelled = true;
		retry = false;
	}
	apiary_stats_record(function, t->started, edata != NULL, retry);

	if (cancelled || edata != NULL)
		nready = 0;				/* what it queued is gone */

	if (cancelled)
	{
		record_cancelled(t, wf_timed_out);
		return;
	}

	if (edata == NULL)
	{
		if (returned.is_future)
			link_to_future(t, &returned);
		else
			record_outcome(t->id, QS_DONE, isnull ? NULL : DatumGetJsonbP(out), t->started);
		return;
	}

	retry_or_fail(t, function, edata, attempt, max_attempts, retry,
				  kind == APIARY_KIND_EXTERNAL ? 0.5 : 0.01);
}

/*
 * A workflow id as the log and pg_stat_activity show it, between double
 * quotes: any role may choose its ids, and one with a quote or a line
 * break of its own must not make the line say another role's task runs.
 * Quotes and backslashes are escaped with a backslash, control
 * characters (C1 too, in UTF-8) as \xNN or \uNNNN.
 */
static char *
escaped_id(text *id)
{
	const unsigned char *s = (const unsigned char *) VARDATA_ANY(id);
	int			len = VARSIZE_ANY_EXHDR(id);
	bool		utf8 = GetDatabaseEncoding() == PG_UTF8;
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < len; i++)
	{
		if (s[i] == '"' || s[i] == '\\')
			appendStringInfo(&buf, "\\%c", s[i]);
		else if (s[i] < 0x20 || s[i] == 0x7f)
			appendStringInfo(&buf, "\\x%02x", s[i]);
		else if (utf8 && s[i] == 0xc2 && i + 1 < len && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f)
			appendStringInfo(&buf, "\\u%04x", s[++i]);
		else
			appendStringInfoChar(&buf, (char) s[i]);
	}
	return buf.data;
}

/*
 * Attempt number attempt of task t failed with edata: when retry, the
 * task runs again after first_delay seconds, doubled for each attempt
 * before (retry_delay); else it fails.
 */
static void
retry_or_fail(RunningTask *t, const char *function, ErrorData *edata,
			  int attempt, int max_attempts, bool retry, double first_delay)
{
	/* logged once recorded: recording fails in a transaction SSI doomed */
	if (retry)
	{
		double		delay = retry_delay(first_delay, attempt);

		/* an executor idle at the commit naps until it is due (queue.c) */
		queue_retry(t->id, delay, t->started, error_jsonb(edata, t->id, function));
		ereport(LOG,
				(errcode(edata->sqlerrcode),
				 errmsg("apiary task %lld (%s) failed, retrying in %.3f s (attempt %d of %d): %s",
						(long long) t->id, function, delay, attempt, max_attempts,
						edata->message)));
		return;
	}

	record_outcome(t->id, QS_FAILED, error_jsonb(edata, t->id, function), t->started);
	ereport(LOG,
			(errcode(edata->sqlerrcode),
			 errmsg("apiary task %lld (%s) of workflow \"%s\" failed: %s",
					(long long) t->id, function, escaped_id(t->workflow),
					edata->message)));
}

/*
 * Whether this executor's last look found only tasks due later (a retry's
 * backoff), and it naps until the first of them: no one else does.
 */
static bool watching_due = false;

/*
 * Claim and run one ready task, in a transaction of its own; prefer is a
 * task to try first (0: none).  Returns false when there was none, with
 * *nap_ms set to when to look again.
 */
static bool
run_one_task(int64 prefer, long *nap_ms)
{
	QueueTask	task;
	RunningTask t;
	TimestampTz next_due;

	*nap_ms = 60 * 1000L;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());

	if (!queue_installed())
	{
		/* the extension is gone, or not at version 0.2 yet */
		*nap_ms = 1000L;
		PopActiveSnapshot();
		CommitTransactionCommand();
		return false;
	}

	if (!queue_claim(prefer, &task, &next_due))
	{
		watching_due = next_due != 0;
		if (next_due != 0)
		{
			long		secs;
			int			usecs;

			TimestampDifference(GetCurrentTimestamp(), next_due, &secs, &usecs);
			*nap_ms = Max(1L, Min(secs * 1000L + usecs / 1000 + 1, *nap_ms));
		}
		PopActiveSnapshot();
		CommitTransactionCommand();
		return false;
	}
	apiary_executor_busy(executor_slot, task.id, watching_due);
	watching_due = false;

	t.id = task.id;
	t.role = task.role;
	t.workflow = task.workflow;
	t.started = GetCurrentTimestamp();
	t.queued = 0;
	t.calls = 0;
	t.attempt = task.attempts + 1;
	t.foreign_waits = NIL;
	claimed_id = t.id;
	claimed_started = t.started;
	nready = 0;
	queued_undone = false;
	nqueued_marks = 0;

	/* what a DBA sees in pg_stat_activity: whose task, of which workflow */
	{
		char	   *role = GetUserNameFromId(task.role, true);

		pgstat_report_activity(STATE_RUNNING,
							   psprintf("apiary task %lld of workflow \"%s\" as %s: %s",
										(long long) t.id, escaped_id(task.workflow),
										role != NULL ? quote_identifier(role) : "(dropped role)",
										task.function));
	}
	marker_write(t.id);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	run_task(&t, &task, task.attempts + 1);
	SPI_finish();

	/* this executor runs the first task made ready next; others the rest */
	for (int i = 1; i < Min(nready, MAX_READY); i++)
		apiary_hand_at_commit(ready_ids[i]);
	if (nready > MAX_READY)
		apiary_wake_at_commit(nready - MAX_READY);

	/*
	 * apiary.synchronous_steps = off: a step that does not end its
	 * workflow need not wait for its WAL flush.  A crash before the flush
	 * undoes the whole step, which is then pending again and runs again:
	 * still once in the history that survives.  The step that ends a
	 * workflow, which apiary_result reports, waits, and its flush makes
	 * every step before it durable too.
	 */
	if (!apiary_synchronous_steps && !apiary_finishes_at_commit())
		(void) set_config_option("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
	PopActiveSnapshot();
	CommitTransactionCommand();
	claimed_id = 0;
	marker_write(0);
	pgstat_report_activity(STATE_IDLE, NULL);
	return true;
}

/*
 * The transaction of an attempt failed outside the task's subtransaction:
 * at its commit (under SERIALIZABLE, a serialization failure found then,
 * or one that doomed the whole transaction, so that even apiary's own
 * writes after the function failed), or in apiary's work around the
 * function.  The rollback undid the attempt's count with the rest, and
 * the task is pending again.  Count the attempt in a transaction of its
 * own, and retry the task, whatever the error (the function did not raise
 * it), after about a second, doubling, until max_attempts; then it fails
 * with that error.  If another executor has claimed the task meanwhile,
 * that attempt goes on uncounted.  This executor then sleeps until woken
 * or a second has passed: executors that failed each other at commit
 * under SERIALIZABLE failed again ten to twenty times as often when the
 * one that failed went straight on to its next task.
 */
static void
settle_failed(void)
{
	QueueTask	task;
	ErrorData  *edata = failed_error;	/* in failed_cxt, kept to the next error */
	int64		id = claimed_id;

	/* once: an error while settling is only logged */
	failed_error = NULL;
	claimed_id = 0;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	/* only apiary's own rows: no part in serializable snapshot isolation */
	XactIsoLevel = XACT_READ_COMMITTED;
	PushActiveSnapshot(GetTransactionSnapshot());
	if (queue_installed() && queue_take(id, &task))
	{
		ApiaryFunction *f = registry_acquire(task.function);
		int			max_attempts = f->max_attempts > 0 ? f->max_attempts : apiary_max_attempts;
		int			attempt = task.attempts + 1;
		RunningTask t = {task.id, task.role, task.workflow, claimed_started, 0, 0, 0, NIL};
		bool		timed_out;

		registry_release(f);
		/* a cancel that came meanwhile, as at the end of a task */
		if (queue_workflow_cancelled(task.role, task.workflow, task.id, &timed_out))
			record_cancelled(&t, timed_out);
		else
			retry_or_fail(&t, task.function, edata, attempt, max_attempts,
						  attempt < max_attempts, 1.0);
		if (nready > 0)
			apiary_wake_at_commit(nready);
		nready = 0;
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/* ---------------------------------------------------------------------
 * Crash counting
 * ---------------------------------------------------------------------
 */

/* Name the task this executor runs (0: none) in its marker. */
static void
marker_write(int64 task)
{
	if (marker == NULL)
		return;
	if (task != 0)
		marker->tasks_relid = queue_tasks_relid();
	marker->task = task;
	marker->check = ~task;
	/* and for apiary_status, which shows the task running */
	pg_atomic_write_u64(&apiary_shared->slots[executor_slot].running, (uint64) task);
}

/*
 * A fatal signal of the executor's own making: say so in the marker, then
 * let the signal take its default course (the handler is reset on entry).
 */
static void
marker_crash_handler(int sig)
{
	if (marker != NULL)
		marker->crashed = MARKER_SIGNAL;
	raise(sig);
}

static void
marker_catch_crashes(void)
{
	static const int fatal[] = {SIGSEGV, SIGBUS, SIGILL, SIGABRT};
	struct sigaction act;

	memset(&act, 0, sizeof(act));
	act.sa_handler = marker_crash_handler;
	act.sa_flags = SA_RESETHAND | SA_NODEFER;
	sigemptyset(&act.sa_mask);
	for (int i = 0; i < lengthof(fatal); i++)
		(void) sigaction(fatal[i], &act, NULL);
}

/* Note in the marker a FATAL error, which ends the executor. */
static void
note_fatal(ErrorData *edata)
{
	if (edata->elevel == FATAL && marker != NULL)
	{
		const char *msg = edata->message ? edata->message : "";
		int			len = pg_mbcliplen(msg, strlen(msg), sizeof(marker->fatal_message) - 1);

		marker->fatal_sqlerrcode = edata->sqlerrcode;
		memcpy((char *) marker->fatal_message, msg, len);
		marker->fatal_message[len] = '\0';
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/* SIGTERM: as die(), noting whether the executor sent it itself. */
static void
executor_sigterm(int sig, siginfo_t *info, void *context)
{
	if (info != NULL && info->si_pid == MyProcPid)
		terminated_itself = true;
	else
		terminated_by_other = true;
	die(sig);
}

/*
 * Clear the marker at an orderly exit, unless the running task ended the
 * executor itself: then it names the task still, for the next executor of
 * the slot to count.  An exit with an error while a task runs is the
 * task's doing, but for one that a SIGTERM from another process (an
 * operator, a shutdown, the launcher) or the postmaster's death brought
 * about, or a FATAL error of class 57 (operator intervention) that the
 * executor did not send itself.  The FATAL error is in the marker if it
 * was logged (note_fatal), which log_min_messages may prevent.
 */
static void
marker_clear_at_exit(int code, Datum arg)
{
	if (code != 0 && marker != NULL && marker->task != 0 &&
		(terminated_itself ||
		 (!terminated_by_other && PostmasterIsAlive() &&
		  ERRCODE_TO_CATEGORY(marker->fatal_sqlerrcode) != ERRCODE_OPERATOR_INTERVENTION)))
	{
		marker->crashed = MARKER_FATAL;
		pg_atomic_write_u64(&apiary_shared->slots[executor_slot].running, 0);
		return;
	}
	marker_write(0);
}

/*
 * Read a marker file into *m; returns the task it names, or 0 (none, or
 * not one to count).  m->crashed says how its executor ended itself.
 */
static int64
marker_read(const char *path, Marker *m)
{
	int			fd = open(path, O_RDONLY | PG_BINARY, 0);
	ssize_t		len;

	if (fd < 0)
		return 0;
	len = read(fd, m, sizeof(*m));
	close(fd);
	if (len != sizeof(*m) || m->magic != MARKER_MAGIC || m->database != MyDatabaseId ||
		(m->postmaster_started != PgStartTime && !m->crashed) ||
		m->task <= 0 || m->check != ~m->task)
		return 0;
	m->fatal_message[sizeof(m->fatal_message) - 1] = '\0';
	return m->task;
}

/*
 * Create this slot's marker file, naming no task yet, and map it.  The
 * launcher counted what the last one named before starting this executor.
 */
static void
marker_open(int slot)
{
	Marker		m = {MARKER_MAGIC, MyDatabaseId, InvalidOid, PgStartTime, 0, ~INT64CONST(0), 0, 0, ""};
	char		marker_path[MAXPGPATH];
	int			fd;
	void	   *p;

	snprintf(marker_path, MAXPGPATH, "%s/executor.%d", MARKER_DIR, slot);
	if (MakePGDirectory(MARKER_DIR) != 0 && errno != EEXIST)
		ereport(FATAL,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", MARKER_DIR)));
	fd = open(marker_path, O_RDWR | O_CREAT | O_TRUNC | PG_BINARY, pg_file_create_mode);
	if (fd < 0)
		ereport(FATAL,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", marker_path)));
	errno = 0;
	if (write(fd, &m, sizeof(m)) != sizeof(m))
	{
		if (errno == 0)
			errno = ENOSPC;		/* a short write: most likely a full disk */
		ereport(FATAL,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", marker_path)));
	}
	p = mmap(NULL, sizeof(m), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		ereport(FATAL,
				(errcode_for_file_access(),
				 errmsg("could not map file \"%s\": %m", marker_path)));
	close(fd);
	marker = p;
}

/*
 * A task that was running when the server went down, or that ended its
 * executor itself, gets a crash counted (m: the marker that named it); at
 * max_attempts crashes it fails instead of taking the server down again,
 * and everything else goes on.  bounded: the launcher's count, before it
 * starts any executor, waits at most a second for a lock (the workflow's,
 * held by a cancel or resume left prepared, say): everything else must go
 * on, and the crash goes uncounted.
 */
static void
count_crash(int64 task, const Marker *m, bool bounded)
{
	bool		fatal = m->crashed == MARKER_FATAL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (bounded)
		(void) set_config_option("lock_timeout", "1000", PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
	PushActiveSnapshot(GetTransactionSnapshot());
	/*
	 * Not a task of the tables the marker's were: the extension was dropped
	 * and created again since, and task ids started over.
	 */
	if (queue_installed() && m->tasks_relid == queue_tasks_relid())
	{
		char	   *function = NULL;
		int			crashes = queue_count_crash(task, &function);
		int			max = apiary_max_attempts;

		if (crashes > 0)
		{
			Oid			types[1] = {TEXTOID};
			Datum		values[1] = {CStringGetTextDatum(function)};
			bool		isnull;

			/* the function's own limit, if it is still registered */
			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "SPI_connect failed");
			journal_execute("SELECT max_attempts FROM apiary.functions"
							" WHERE name OPERATOR(pg_catalog.=) $1",
							NULL, 1, types, values, NULL, SPI_OK_SELECT);
			if (SPI_processed == 1)
			{
				Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

				if (!isnull)
					max = DatumGetInt32(d);
			}
			SPI_finish();

			/* an attempt, failed, whose duration is unknown */
			apiary_stats_record(function, 0, true, crashes < max);
			ereport(LOG,
					(errmsg(fatal ? "apiary task %lld (%s) ended its executor with a FATAL error (%d of %d)" :
							"apiary task %lld (%s) was running when the server went down (%d of %d)",
							(long long) task, function, crashes, max)));
			if (crashes >= max)
			{
				ErrorData	edata = {0};

				if (fatal)
				{
					/* the FATAL error itself, as far as the marker kept it */
					edata.sqlerrcode = m->fatal_sqlerrcode != 0 ? m->fatal_sqlerrcode :
						ERRCODE_INTERNAL_ERROR;
					edata.message = m->fatal_sqlerrcode != 0 ? pstrdup(m->fatal_message) :
						"the task ended its executor with an error that was not logged (log_min_messages)";
					edata.detail = psprintf("The task ended its executor with this FATAL error; "
											"%d of its attempts ended their executor or the server.",
											crashes);
					edata.hint = "apiary will not run it again. Fix the function, then call apiary_resume.";
				}
				else
				{
					edata.sqlerrcode = ERRCODE_INTERNAL_ERROR;
					edata.message = crashes == 1 ?
						psprintf("task %lld was running when the server went down", (long long) task) :
						psprintf("task %lld was running each of the %d times the server went down",
								 (long long) task, crashes);
					edata.hint = "apiary will not run it again: it may have taken the server down. "
						"Fix the function if so, then call apiary_resume.";
				}
				record_outcome(task, QS_FAILED, error_jsonb(&edata, task, function), 0);
				if (nready > 0)
					apiary_wake_at_commit(nready);
				nready = 0;
			}
		}
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/* count_crash, logging an error instead of raising it: the caller goes on */
static void
count_crash_logged(int64 task, const Marker *m, bool bounded)
{
	PG_TRY();
	{
		count_crash(task, m, bounded);
	}
	PG_CATCH();
	{
		EmitErrorReport();
		AbortCurrentTransaction();
		FlushErrorState();
	}
	PG_END_TRY();
}

/*
 * Called by the launcher before it starts executors: count a crash for
 * each task a marker names, in the slots no executor holds (after a crash
 * restart, all of them), and remove those markers.  Counting before any
 * executor runs keeps one from claiming the task first.
 */
void
apiary_count_crashes(void)
{
	int64		tasks[APIARY_MAX_WORKERS] = {0};
	Marker		markers[APIARY_MAX_WORKERS];
	bool		any_crashed = false;

	if (MakePGDirectory(MARKER_DIR) != 0 && errno != EEXIST)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", MARKER_DIR)));

	/*
	 * When an executor crashed itself, only its task is counted: the tasks
	 * beside it were rolled back by the restart, through no fault of
	 * their own.  Else (another backend crashed, or an executor was killed
	 * outright) every task that was running is.
	 */
	for (int slot = 0; slot < APIARY_MAX_WORKERS; slot++)
	{
		char		path[MAXPGPATH];
		bool		held;

		SpinLockAcquire(&apiary_shared->mutex);
		held = apiary_shared->slots[slot].pid != 0 &&
			kill(apiary_shared->slots[slot].pid, 0) == 0;
		SpinLockRelease(&apiary_shared->mutex);
		if (held)
			continue;

		snprintf(path, MAXPGPATH, "%s/executor.%d", MARKER_DIR, slot);
		tasks[slot] = marker_read(path, &markers[slot]);
		any_crashed |= tasks[slot] != 0 && markers[slot].crashed == MARKER_SIGNAL;
		if (unlink(path) != 0 && errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not remove file \"%s\": %m", path)));
	}
	for (int slot = 0; slot < APIARY_MAX_WORKERS; slot++)
		if (tasks[slot] != 0 && (!any_crashed || markers[slot].crashed))
			count_crash_logged(tasks[slot], &markers[slot], true);
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
	/* not while the extension is being dropped (launcher.c) */
	ok = !apiary_drop_pending_locked() &&
		(apiary_shared->slots[slot].pid == 0 ||
		 kill(apiary_shared->slots[slot].pid, 0) != 0);
	if (ok)
	{
		apiary_shared->slots[slot].pid = MyProcPid;
		apiary_shared->slots[slot].latch = MyLatch;
		apiary_shared->slots[slot].handed = 0;
		apiary_shared->slots[slot].retire = false;
	}
	SpinLockRelease(&apiary_shared->mutex);
	return ok;
}

/*
 * Has this executor outgrown apiary.executor_max_memory?  What the
 * sessions of its tasks cache stays (plans, catalog entries, and the time
 * zones of PostgreSQL, one for each TimeZone a task ran with, which
 * nothing evicts), and it runs every role's tasks, for days: past the
 * limit it makes way, between tasks, for a fresh one, which the launcher
 * starts at once.  Looked at every OUTGROWN_EVERY tasks.
 */
#define OUTGROWN_EVERY 64

static bool
outgrown(void)
{
	Size		held;

	if (apiary_executor_max_memory <= 0)
		return false;
	held = MemoryContextMemAllocated(TopMemoryContext, true) / 1024;
	if (held <= (Size) apiary_executor_max_memory)
		return false;
	ereport(LOG,
			(errmsg("apiary executor %d makes way for a fresh one: it holds %zu kB, more than apiary.executor_max_memory",
					executor_slot, held)));
	return true;
}

void
apiary_executor_main(Datum main_arg)
{
	int			slot = DatumGetInt32(main_arg);
	int			tasks_run = 0;	/* since outgrown() last looked */
	struct sigaction term;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	/* die(), noting who sent the signal */
	memset(&term, 0, sizeof(term));
	term.sa_sigaction = executor_sigterm;
	term.sa_flags = SA_SIGINFO | SA_RESTART;
	sigfillset(&term.sa_mask);
	(void) sigaction(SIGTERM, &term, NULL);
	BackgroundWorkerUnblockSignals();

	if (slot < 0 || slot >= APIARY_MAX_WORKERS || !claim_slot(slot))
		proc_exit(0);
	before_shmem_exit(release_slot, Int32GetDatum(slot));

	BackgroundWorkerInitializeConnection(apiary_database, NULL, 0);
	pgstat_report_appname("apiary executor");

	executor_slot = slot;
	/* the task the slot's last executor ended itself with, if any */
	{
		char		path[MAXPGPATH];
		Marker		m;
		int64		task;

		snprintf(path, MAXPGPATH, "%s/executor.%d", MARKER_DIR, slot);
		task = marker_read(path, &m);
		if (task != 0 && m.crashed == MARKER_FATAL)
			count_crash_logged(task, &m, false);
	}
	marker_open(slot);
	marker_catch_crashes();
	/* an orderly exit is no crash, nor a FATAL that is not the task's */
	before_shmem_exit(marker_clear_at_exit, (Datum) 0);
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = note_fatal;
	RegisterSubXactCallback(note_subxact_end, NULL);
	queue_keep_open();
	failed_cxt = AllocSetContextCreate(TopMemoryContext, "apiary failed attempt",
									   ALLOCSET_SMALL_SIZES);

	for (;;)
	{
		volatile bool ran = false;
		long		nap_ms = 1000L;
		bool		own = nready > 0 && nready <= MAX_READY;
		int64		handed = 0;
		int64		prefer;
		bool		retire = false;

		/*
		 * A cancel (pg_cancel_backend) that comes between tasks has no
		 * task to cancel: raised here, outside any task, it would end the
		 * executor.
		 */
		QueryCancelPending = false;
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/*
		 * Idle before the snapshot: a commit after it wakes us (launcher.c),
		 * and one before it handed us its task, unless we have our own next
		 * step to run.  Fewer executors wanted, or this one outgrown: it
		 * goes, between tasks (outgrown, before it is idle: no wake-up is
		 * handed to it).
		 */
		if (failed_error == NULL && tasks_run >= OUTGROWN_EVERY)
		{
			tasks_run = 0;
			retire = outgrown();
		}
		if (!retire)
			retire = apiary_executor_idle(slot, own ? NULL : &handed);
		prefer = own ? ready_ids[0] : handed;
		if (retire && failed_error == NULL)
		{
			/*
			 * what this executor would have run next (handed, or its own,
			 * also one of more than it noted), or watched for
			 */
			if (prefer != 0 || nready > 0 || watching_due)
				apiary_pass_on(prefer);
			proc_exit(0);
		}
		nready = 0;
		PG_TRY();
		{
			if (failed_error != NULL)
				settle_failed();
			else
				ran = run_one_task(prefer, &nap_ms);
		}
		PG_CATCH();
		{
			/*
			 * An error outside the task's own subtransaction: start over,
			 * and settle the attempt it undid first.
			 */
			MemoryContextReset(failed_cxt);
			failed_error = NULL;
			if (claimed_id != 0)
			{
				MemoryContextSwitchTo(failed_cxt);
				failed_error = CopyErrorData();
				ran = true;
			}
			EmitErrorReport();
			AbortCurrentTransaction();
			FlushErrorState();
			/* the abort restored the user, not the session user */
			SetSessionAuthorization(GetAuthenticatedUserId(), true);
			marker_write(0);
			running_task = NULL;
			nready = 0;
			nap_ms = 1000L;
		}
		PG_END_TRY();

		if (ran)
			tasks_run++;

		/*
		 * Background workers report their statistics themselves, at most
		 * once a second, also while busy: autovacuum goes by them.
		 */
		pgstat_report_stat(false);
		if (ran)
			continue;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 nap_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
