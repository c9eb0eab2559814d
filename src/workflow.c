/*-------------------------------------------------------------------------
 *
 * workflow.c
 *	  The workflow API: apiary_start, apiary_result, apiary_status.
 *
 * apiary_start queues a workflow's root task in the caller's transaction;
 * executors (executor.c) run it after the caller commits.  Workflow ids are
 * the caller's key, or a generated UUID, and belong to the calling role:
 * two roles may use the same id without meeting.  Starting an id again
 * returns the existing workflow, provided it is the same call.
 *
 * apiary_result waits for a workflow to finish.  It rereads the workflow
 * with a fresh snapshot each time executors broadcast the shared condition
 * variable, so it only works in READ COMMITTED: a REPEATABLE READ snapshot
 * could never see the result, and neither can the transaction that started
 * the workflow, whose tasks cannot run before it commits.  Both are refused
 * at once rather than left to hang.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "bind.h"
#include "executor.h"
#include "guc.h"
#include "invoke.h"
#include "journal.h"
#include "launcher.h"
#include "queue.h"
#include "registry.h"
#include "workflow.h"

PG_FUNCTION_INFO_V1(apiary_start);
PG_FUNCTION_INFO_V1(apiary_result);
PG_FUNCTION_INFO_V1(apiary_status);
PG_FUNCTION_INFO_V1(apiary_cancel);
PG_FUNCTION_INFO_V1(apiary_resume);


static SPIPlanPtr result_plan = NULL;

static void
require_workers(const char *function)
{
	if (apiary_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s requires apiary's background workers", function),
				 errhint("Add apiary to shared_preload_libraries in postgresql.conf, set apiary.database to this database, and restart the server.")));
	if (apiary_database == NULL || apiary_database[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s requires apiary's background workers, which apiary.database = '' turns off",
						function),
				 errhint("Set apiary.database to this database and restart the server.")));
	/* the executors run workflows in one database: elsewhere none would */
	if (!apiary_in_database())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s works only in database \"%s\", where apiary's executors run",
						function, apiary_database),
				 errhint("Connect to database \"%s\", or set apiary.database to this database and restart the server.",
						 apiary_database)));
}

static void
prepare_plans(void)
{
	if (result_plan != NULL)
		return;
	{
		Oid			t[2] = {OIDOID, TEXTOID};

		result_plan = journal_prepare("SELECT state, output, error, xmin FROM apiary.workflows"
									  " WHERE role OPERATOR(pg_catalog.=) $1::pg_catalog.regrole"
									  " AND id OPERATOR(pg_catalog.=) $2", 2, t);
	}
}

static text *
generate_id(void)
{
	pg_uuid_t  *uuid = palloc(sizeof(pg_uuid_t));

	if (!pg_strong_random(uuid->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	/* version 4, variant RFC 4122, as gen_random_uuid() */
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x40;
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;
	return cstring_to_text(DatumGetCString(DirectFunctionCall1(uuid_out,
															   UUIDPGetDatum(uuid))));
}

/*
 * An interval in microseconds, months counted as 30 days as interval
 * comparison counts them (a double: no overflow).
 */
static double
interval_usecs(Interval *i)
{
	return i->time + (double) i->day * USECS_PER_DAY +
		(double) i->month * DAYS_PER_MONTH * USECS_PER_DAY;
}

static void
check_id(text *id)
{
	if (VARSIZE_ANY_EXHDR(id) > apiary_max_key_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("workflow id is too long"),
				 errdetail("Workflow ids are at most %d bytes (apiary.max_key_size); this one has %zu.",
						   apiary_max_key_size, VARSIZE_ANY_EXHDR(id))));
}

Datum
apiary_start(PG_FUNCTION_ARGS)
{
	char	   *name;
	Jsonb	   *args;
	text	   *id;
	Interval   *timeout = NULL;
	char	   *fn;
	Oid			fn_owner;
	Jsonb	   *recorded;
	int64		root;

	require_workers("apiary_start");
	if (apiary_xact_read_only())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot execute apiary_start() in a read-only transaction")));
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot execute apiary_start() in a readonly apiary function"),
				 errhint("Starting a workflow is a write: register the function as transactional.")));
	bind_require_call_args(fcinfo);
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	args = PG_GETARG_JSONB_P(1);
	id = PG_ARGISNULL(2) ? generate_id() : PG_GETARG_TEXT_PP(2);
	check_id(id);
	/* a new id (0.6 took empty ones: those stay readable) */
	if (VARSIZE_ANY_EXHDR(id) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("workflow id must not be empty"),
				 errhint("Pass NULL to have one generated.")));
	bind_check_limits(name, args);
	/* the SQL function of 0.10 and earlier has no timeout */
	if (PG_NARGS() > 3 && !PG_ARGISNULL(3))
	{
		timeout = PG_GETARG_INTERVAL_P(3);
		/* a negative part would make its length depend on the date */
		if (interval_usecs(timeout) <= 0 ||
			timeout->month < 0 || timeout->day < 0 || timeout->time < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("workflow timeout must be positive"),
					 errhint("Pass NULL for a workflow without a timeout.")));
		/*
		 * (its deadline must be a timestamp, after a resume too); a year
		 * of DAYS_PER_YEAR days, as the limit's, not interval's 360
		 */
		if ((timeout->month / (double) MONTHS_PER_YEAR * DAYS_PER_YEAR + timeout->day) * USECS_PER_DAY +
			timeout->time >= 1000.0 * DAYS_PER_YEAR * USECS_PER_DAY)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("workflow timeout must be less than 1000 years"),
					 errhint("Pass NULL for a workflow without a timeout.")));
	}

	/*
	 * An id started already is this call again, whatever became of the
	 * function since (dropped, revoked), or another call: looked for first.
	 */
	if (!PG_ARGISNULL(2) && queue_find_workflow(GetUserId(), id, &fn, &recorded))
	{
		if (strcmp(fn, name) != 0 ||
			!DatumGetBool(DirectFunctionCall2(jsonb_eq, JsonbPGetDatum(recorded),
											  JsonbPGetDatum(args))))
			ereport(ERROR,
					(errcode(ERRCODE_UNIQUE_VIOLATION),
					 errmsg("workflow \"%s\" was already started with another call",
							text_to_cstring(id)),
					 errdetail("It runs %s with arguments %s.", fn,
							   JsonbToCString(NULL, &recorded->root, 0)),
					 errhint("Use a new key for a different workflow.")));
		PG_RETURN_TEXT_P(id);
	}

	/* callable now, with these arguments; checked again when it runs */
	fn_owner = bind_check_queued(name, args);
	apiary_check_no_futures("apiary_start", args);

	root = queue_add_workflow(GetUserId(), id, name, fn_owner, args, timeout);
	apiary_hand_at_commit(root);
	PG_RETURN_TEXT_P(id);
}

/*
 * Whose workflow is id: the caller's own.  Members of apiary_admin may also
 * name another role's workflow, when they have none by that id and exactly
 * one role has.  Anyone else learns nothing of other roles' ids: they are
 * simply not found.  Requires an SPI connection.
 */
static Oid
workflow_role(text *id)
{
	Oid			me = GetUserId();
	Oid			admin = get_role_oid("apiary_admin", true);
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {PointerGetDatum(id)};
	Oid			role = me;
	bool		isnull;

	if (!OidIsValid(admin) || !is_member_of_role(me, admin))
		return me;
	/* the caller's own, through the primary key (role, id) */
	prepare_plans();
	{
		Datum		own[2] = {ObjectIdGetDatum(me), PointerGetDatum(id)};

		journal_execute(NULL, result_plan, 2, NULL, own, NULL, SPI_OK_SELECT);
		if (SPI_processed > 0)
			return me;
	}
	/* another role's, by id alone: no index helps, but this is rare */
	journal_execute("SELECT role::pg_catalog.oid FROM apiary.workflows"
					" WHERE id OPERATOR(pg_catalog.=) $1",
					NULL, 1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed > 1)
		ereport(ERROR,
				(errcode(ERRCODE_AMBIGUOUS_PARAMETER),
				 errmsg("workflow id \"%s\" is used by %llu roles", text_to_cstring(id),
						(unsigned long long) SPI_processed),
				 errhint("apiary.workflows shows their roles; a call made as the workflow's own role names it (a superuser may SET ROLE to it).")));
	if (SPI_processed == 1)
		role = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return role;
}

/*
 * Raise a workflow's recorded failure as the error it was, with the
 * function's own context line(s) first, then the task's.
 */
static void
raise_failure(text *id, Jsonb *error)
{
	JsonbValue *v;
	char	   *fields[7] = {0};
	const char *keys[7] = {"sqlstate", "message", "detail", "hint", "function", "task", "context"};
	int			sqlstate = ERRCODE_INTERNAL_ERROR;
	char	   *where;

	/* (NULL or not an object: only a hand-edited row; "workflow failed") */
	for (int i = 0; error != NULL && JB_ROOT_IS_OBJECT(error) && i < lengthof(keys); i++)
	{
		v = getKeyJsonValueFromContainer(&error->root, keys[i], strlen(keys[i]), NULL);
		if (v == NULL)
			continue;
		if (v->type == jbvString)
			fields[i] = pnstrdup(v->val.string.val, v->val.string.len);
		else if (v->type == jbvNumeric)
			fields[i] = DatumGetCString(DirectFunctionCall1(numeric_out,
															NumericGetDatum(v->val.numeric)));
	}
	if (fields[0] && strlen(fields[0]) == 5)
		sqlstate = MAKE_SQLSTATE(fields[0][0], fields[0][1], fields[0][2],
								 fields[0][3], fields[0][4]);
	if (fields[5] && fields[4])
		where = psprintf("task %s (%s) of workflow \"%s\"",
						 fields[5], fields[4], text_to_cstring(id));
	else
		where = psprintf("workflow \"%s\"", text_to_cstring(id));
	if (fields[6])
		where = psprintf("%s\n%s", fields[6], where);
	ereport(ERROR,
			(errcode(sqlstate),
			 errmsg_internal("%s", fields[1] ? fields[1] : "workflow failed"),
			 fields[2] ? errdetail_internal("%s", fields[2]) : 0,
			 fields[3] ? errhint("%s", fields[3]) : 0,
			 errcontext("%s", where)));
}

/* Is this a task of workflow id of role? */
static bool
in_own_workflow(Oid role, text *id)
{
	text	   *task_workflow;
	int64		task;
	Oid			task_role;

	return apiary_in_task(&task_workflow, &task, &task_role) && role == task_role &&
		DatumGetBool(DirectFunctionCall2Coll(texteq, C_COLLATION_OID,
											 PointerGetDatum(task_workflow),
											 PointerGetDatum(id)));
}

Datum
apiary_result(PG_FUNCTION_ARGS)
{
	text	   *id;
	Oid			role;
	Datum		values[2];
	ConditionVariable *finished;
	TimestampTz deadline = 0;
	Jsonb	   *output = NULL;
	bool		done = false;
	bool		polls = false;
	text	   *task_workflow;
	int64		task;

	require_workers("apiary_result");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("workflow id must not be null")));
	id = PG_GETARG_TEXT_PP(0);
	check_id(id);
	if (!PG_ARGISNULL(1))
	{
		double		usecs = interval_usecs(PG_GETARG_INTERVAL_P(1));

		if (usecs < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("timeout must not be negative"),
					 errhint("A timeout of 0 returns the result if the workflow has finished, and times out at once if not.")));
		/* beyond a thousand years it is no deadline (nor an overflow) */
		if (usecs < 1000.0 * DAYS_PER_YEAR * USECS_PER_DAY)
			deadline = GetCurrentTimestamp() + (int64) usecs;
		polls = usecs == 0;
	}

	/*
	 * A task that waits holds its executor, and what it waits for may need
	 * that executor: with every executor so held, nothing runs again.
	 */
	if (apiary_in_task(&task_workflow, &task, NULL) && !polls)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apiary_result cannot wait in a function running as an apiary task"),
				 errdetail("A waiting task holds its executor, which the workflow it waits for may need."),
				 errhint("Queue the work with apiary_queue and pass or return its future; or read a finished workflow's result with a timeout of 0.")));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	prepare_plans();
	/* the caller's own workflow, unless workflow_role finds another's */
	role = GetUserId();
	values[1] = PointerGetDatum(id);
	finished = apiary_finished_cv(role, id);

	ConditionVariablePrepareToSleep(finished);
	for (;;)
	{
		char	   *state;
		bool		isnull;
		long		wait_ms = -1;

		/* in READ COMMITTED each execution takes a fresh snapshot */
		values[0] = ObjectIdGetDatum(role);
		journal_execute(NULL, result_plan, 2, NULL, values, NULL, SPI_OK_SELECT);
		if (SPI_processed == 0)
		{
			Oid			other = workflow_role(id);

			if (other == role)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_OBJECT),
						 errmsg("workflow \"%s\" does not exist", text_to_cstring(id))));
			/* an apiary_admin member naming another role's workflow */
			role = other;
			finished = apiary_finished_cv(role, id);
			ConditionVariablePrepareToSleep(finished);
			continue;
		}
		state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		if (strcmp(state, "done") == 0)
		{
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);

			if (!isnull)
				output = (Jsonb *) SPI_datumTransfer(d, false, -1);
			done = true;
			break;
		}
		if (strcmp(state, "running") != 0)
		{
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);

			raise_failure(id, isnull ? NULL : DatumGetJsonbP(d));
		}

		/* refuse to wait for what can never become visible */
		if (TransactionIdIsCurrentTransactionId(DatumGetTransactionId(
																	  SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull))))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot wait for workflow \"%s\" in the transaction that started or changed it",
							text_to_cstring(id)),
					 errdetail("Its tasks run only after that transaction commits (a start, or a resume)."),
					 errhint("Commit first, then call apiary_result.")));
		if (IsolationUsesXactSnapshot())
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot wait for workflow \"%s\" in a %s transaction",
							text_to_cstring(id),
							IsolationIsSerializable() ? "SERIALIZABLE" : "REPEATABLE READ"),
					 errdetail("The transaction's snapshot would never see the workflow finish."),
					 errhint("Call apiary_result in a READ COMMITTED transaction.")));

		/*
		 * A drop of the extension stands the executors down, and waits for
		 * our lock on apiary.workflows: the workflow would never finish.
		 */
		if (apiary_drop_pending())
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot wait for workflow \"%s\": extension apiary is being dropped",
							text_to_cstring(id)),
					 errdetail("DROP EXTENSION apiary has stood the executors down.")));

		/*
		 * On a hot standby no commit here wakes us: replay does not.  Look
		 * again every 100 ms.
		 */
		if (RecoveryInProgress())
			wait_ms = 100;
		if (deadline != 0)
		{
			long		secs;
			int			usecs;

			TimestampDifference(GetCurrentTimestamp(), deadline, &secs, &usecs);
			/* an hour at most (WaitLatch takes an int): the loop goes on */
			wait_ms = Min(Min(secs, 3600) * 1000 + usecs / 1000,
						  wait_ms < 0 ? LONG_MAX : wait_ms);
			if (GetCurrentTimestamp() >= deadline)
			{
				bool		own = in_own_workflow(role, id);

				ereport(ERROR,
						(errcode(ERRCODE_QUERY_CANCELED),
						 errmsg("timed out waiting for workflow \"%s\"", text_to_cstring(id)),
						 own ? errdetail("The workflow is this task's own: while its output waits for this task, it cannot finish before this task has.") : 0,
						 own ? errhint("Return the value, or a future of it, to make it the task's output.") :
						 errhint("The workflow goes on; call apiary_result again, or see apiary_status('%s').",
								 text_to_cstring(id))));
			}
		}
		(void) ConditionVariableTimedSleep(finished, wait_ms,
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	SPI_finish();

	if (!done || output == NULL)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(output);
}

/* Is an executor running this task now? */
static bool
task_running(int64 task)
{
	if (apiary_shared == NULL)
		return false;
	for (int i = 0; i < APIARY_MAX_WORKERS; i++)
		if (pg_atomic_read_u64(&apiary_shared->slots[i].running) == (uint64) task)
			return true;
	return false;
}

Datum
apiary_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		values[2];

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("workflow id must not be null")));
	check_id(PG_GETARG_TEXT_PP(0));
	InitMaterializedSRF(fcinfo, 0);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	values[0] = ObjectIdGetDatum(workflow_role(PG_GETARG_TEXT_PP(0)));
	values[1] = PG_GETARG_DATUM(0);
	journal_execute("SELECT id, parent, function, state, attempts, waiting_for, linked_to,"
					" output, error, queued_at, started_at, finished_at"
					" FROM apiary.tasks"
					" WHERE role OPERATOR(pg_catalog.=) $1::pg_catalog.regrole"
					" AND workflow OPERATOR(pg_catalog.=) $2 ORDER BY id",
					NULL, 2, types, values, NULL, SPI_OK_SELECT);
	/* every workflow has its root task: none, no such workflow of ours */
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("workflow \"%s\" does not exist",
						TextDatumGetCString(PG_GETARG_DATUM(0)))));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		Datum		row[12];
		bool		nulls[12];

		for (int c = 0; c < 12; c++)
			row[c] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, c + 1, &nulls[c]);
		/* a task an executor has claimed is pending until it commits */
		if (!nulls[3] && strcmp(TextDatumGetCString(row[3]), "pending") == 0 &&
			task_running(DatumGetInt64(row[0])))
			row[3] = CStringGetTextDatum("running");
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, row, nulls);
	}
	SPI_finish();
	return (Datum) 0;
}

/*
 * Run apiary.cancel_workflow or resume_workflow for the caller's workflow,
 * first taking the lock running tasks hold from their cancel check to
 * their commit (queue.h): a task that saw the workflow cancelled commits
 * as cancelled before a resume looks at it, and one that saw it running
 * commits before a cancel does.  A cancel from a task of the same
 * workflow is refused.  Returns the workflow's role.
 */
static Oid
change_workflow(FunctionCallInfo fcinfo, const char *sql, bool cancel)
{
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		values[2];
	bool		isnull;
	Oid			role;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("workflow id must not be null")));
	check_id(PG_GETARG_TEXT_PP(0));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* (on a standby too: its transactions are read-only) */
	PreventCommandIfReadOnly(cancel ? "apiary_cancel()" : "apiary_resume()");
	role = workflow_role(PG_GETARG_TEXT_PP(0));
	/*
	 * A cancel would be rolled back with the task's own effects; a resume
	 * would undo a cancel made while the task runs, which then commits.
	 */
	if (in_own_workflow(role, PG_GETARG_TEXT_PP(0)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg(cancel ? "a task cannot cancel its own workflow" :
						"a task cannot resume its own workflow"),
				 errhint(cancel ? "Raise an error to fail the workflow, or return." :
						 "Queue the work again with apiary_queue.")));

	/*
	 * Both go by the workflow's tasks as they are once the lock is held: a
	 * snapshot older than the lock would miss tasks queued since (a cancel
	 * would leave them to run) or finished since (a resume would have a
	 * task wait for good for a future that is done).
	 */
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg(cancel ? "cannot cancel workflow \"%s\" in a %s transaction" :
						"cannot resume workflow \"%s\" in a %s transaction",
						text_to_cstring(PG_GETARG_TEXT_PP(0)),
						IsolationIsSerializable() ? "SERIALIZABLE" : "REPEATABLE READ"),
				 errdetail("Its snapshot may not show the tasks queued or finished since it began."),
				 errhint("Call %s in a READ COMMITTED transaction.",
						 cancel ? "apiary_cancel" : "apiary_resume")));
	queue_lock_workflow(role, PG_GETARG_TEXT_PP(0));
	values[0] = ObjectIdGetDatum(role);
	values[1] = PG_GETARG_DATUM(0);
	journal_execute(sql, NULL, 2, types, values, NULL, SPI_OK_SELECT);
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("workflow \"%s\" does not exist",
						TextDatumGetCString(PG_GETARG_DATUM(0)))));
	SPI_finish();
	return role;
}

Datum
apiary_cancel(PG_FUNCTION_ARGS)
{
	Oid			role = change_workflow(fcinfo, "SELECT apiary.cancel_workflow($1, $2)", true);

	apiary_finished_at_commit(role, PG_GETARG_TEXT_PP(0));
	PG_RETURN_VOID();
}

Datum
apiary_resume(PG_FUNCTION_ARGS)
{
	change_workflow(fcinfo, "SELECT apiary.resume_workflow($1, $2)", false);
	apiary_wake_at_commit(APIARY_WAKE_ALL);
	PG_RETURN_VOID();
}

/*
 * The launcher's, once a second: cancel the running workflows whose
 * deadline has come, as apiary_cancel does (their waiters learn they timed
 * out), and clear the deadlines that have passed, a batch per transaction
 * and a subtransaction per workflow.  A task between its cancel check and
 * its commit holds the workflow's lock: the launcher waits for it, but not
 * long (lock_timeout), and leaves a workflow it could not lock for the
 * next round.  Waiting, it queues new lockers behind it, so a busy
 * workflow's tasks cannot keep it out.  A round ends after a second of
 * such waits, so that the launcher goes on to its other work.  Returns
 * whether more may be due: a full batch, all of it done.
 */
#define EXPIRE_BATCH 100
#define EXPIRE_ROUND_MS 1000

bool
apiary_expire_workflows(void)
{
	Oid			types[2] = {OIDOID, TEXTOID};
	uint64		due = 0;
	uint64		done = 0;
	TimestampTz round_end = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   EXPIRE_ROUND_MS);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* not before ALTER EXTENSION UPDATE has added the deadlines */
	if (queue_installed())
	{
		SPITupleTable *rows;
		MemoryContext cxt = CurrentMemoryContext;
		ResourceOwner owner = CurrentResourceOwner;

		(void) set_config_option("lock_timeout", "100", PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
		journal_execute("SELECT role::pg_catalog.oid, id FROM apiary.workflows"
						" WHERE deadline OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()"
						" ORDER BY deadline LIMIT " CppAsString2(EXPIRE_BATCH),
						NULL, 0, NULL, NULL, NULL, SPI_OK_SELECT);
		rows = SPI_tuptable;
		due = SPI_processed;
		for (uint64 i = 0; i < due && GetCurrentTimestamp() < round_end; i++)
		{
			bool		isnull;
			Datum		values[2];

			values[0] = SPI_getbinval(rows->vals[i], rows->tupdesc, 1, &isnull);
			values[1] = SPI_getbinval(rows->vals[i], rows->tupdesc, 2, &isnull);
			BeginInternalSubTransaction(NULL);
			MemoryContextSwitchTo(cxt);
			PG_TRY();
			{
				queue_lock_workflow(DatumGetObjectId(values[0]), DatumGetTextPP(values[1]));
				journal_execute("SELECT apiary.expire_workflow($1, $2)", NULL, 2, types,
								values, NULL, SPI_OK_SELECT);
				if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
					apiary_finished_at_commit(DatumGetObjectId(values[0]),
											  DatumGetTextPP(values[1]));
				ReleaseCurrentSubTransaction();
				done++;
			}
			PG_CATCH();
			{
				ErrorData  *edata;

				MemoryContextSwitchTo(cxt);
				edata = CopyErrorData();
				FlushErrorState();
				RollbackAndReleaseCurrentSubTransaction();
				/* a cancel (pg_cancel_backend) ends the round */
				if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
					ReThrowError(edata);
				/* a lock held too long: the next round; anything else is logged */
				if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
				{
					edata->elevel = LOG;
					ThrowErrorData(edata);
				}
				FreeErrorData(edata);
			}
			PG_END_TRY();
			MemoryContextSwitchTo(cxt);
			CurrentResourceOwner = owner;
		}
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return due == EXPIRE_BATCH && done == due;
}
