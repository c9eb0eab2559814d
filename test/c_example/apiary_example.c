/*-------------------------------------------------------------------------
 *
 * apiary_example.c
 *	  Example C functions for apiary, using only its public header.
 *
 * example_countdown(n) calls the registered function "square" synchronously
 * (apiary_invoke_jsonb), then queues itself for n - 1 (apiary_queue_jsonb)
 * and returns that future, so the workflow's output is the last step's: a
 * text naming its task key.  example_crash() takes its backend down with
 * SIGSEGV, as a buggy C function would; the recovery tests use it to check
 * that such a task is given up after max_attempts crashes.
 * example_fatal() ends its backend with a FATAL error instead, in an
 * orderly way; such a task is given up after max_attempts too.
 * example_try(name, args) calls name and catches its error, as a C
 * function may: the call ran in a subtransaction of its own, which apiary
 * rolled back before raising the error.
 * example_fragile_in and example_fragile_out are the input and output
 * functions of a type of text whose output fails for the value 'fragile',
 * as a buggy type's might; the recovery tests use it to check that such a
 * row does not stop provenance.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/elog.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "apiary.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(example_countdown);
PG_FUNCTION_INFO_V1(example_crash);
PG_FUNCTION_INFO_V1(example_fatal);
PG_FUNCTION_INFO_V1(example_try);
PG_FUNCTION_INFO_V1(example_fragile_in);
PG_FUNCTION_INFO_V1(example_fragile_out);

static Jsonb *
int_jsonb(int32 n)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
											  CStringGetDatum(psprintf("%d", n))));
}

Datum
example_countdown(PG_FUNCTION_ARGS)
{
	int32		n = PG_GETARG_INT32(0);
	Jsonb	   *squared;
	Jsonb	   *next;
	int64		task;

	if (n <= 0)
	{
		char	   *key = apiary_task_key_cstring();
		StringInfoData json;

		/* a JSON string: the key holds the workflow id, any text */
		initStringInfo(&json);
		escape_json(&json, psprintf("done in task %s", key ? key : "(none)"));
		PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(json.data)));
	}

	/* a synchronous call, in this task's transaction */
	squared = apiary_invoke_jsonb("square", int_jsonb(n), NULL);
	if (squared == NULL)
		elog(ERROR, "square returned NULL");

	/* the next step, as a child task; its output becomes ours */
	next = apiary_queue_jsonb("example_countdown", int_jsonb(n - 1));
	if (!apiary_jsonb_is_future(next, &task))
		elog(ERROR, "apiary_queue_jsonb did not return a future");
	PG_RETURN_JSONB_P(apiary_future_jsonb(task));
}

Datum
example_crash(PG_FUNCTION_ARGS)
{
	raise(SIGSEGV);
	PG_RETURN_INT32(0);
}

Datum
example_fatal(PG_FUNCTION_ARGS)
{
	ereport(FATAL,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("example_fatal gives up its backend")));
	PG_RETURN_INT32(0);
}

Datum
example_try(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Jsonb	   *args = PG_GETARG_JSONB_P(1);
	MemoryContext cxt = CurrentMemoryContext;
	char	   *volatile outcome = NULL;

	PG_TRY();
	{
		Jsonb	   *out = apiary_invoke_jsonb(name, args, NULL);

		outcome = psprintf("returned %s", out ? JsonbToCString(NULL, &out->root, VARSIZE(out)) : "NULL");
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		outcome = psprintf("caught: %s", edata->message);
	}
	PG_END_TRY();
	PG_RETURN_TEXT_P(cstring_to_text(outcome));
}

Datum
example_fragile_in(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(PG_GETARG_CSTRING(0)));
}

Datum
example_fragile_out(PG_FUNCTION_ARGS)
{
	char	   *s = text_to_cstring(PG_GETARG_TEXT_PP(0));

	if (strcmp(s, "fragile") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("example_fragile cannot show \"%s\"", s)));
	PG_RETURN_CSTRING(s);
}
