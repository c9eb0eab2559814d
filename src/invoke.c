/*-------------------------------------------------------------------------
 *
 * invoke.c
 *	  apiary_invoke: run a registered function now, inside the caller's
 *	  transaction.
 *
 * A call runs the function through its prepared call statement (bind.c),
 * in the caller's transaction, so its writes commit or roll back with the
 * caller's.  Three things are added around it:
 *
 *	- kind: a readonly function runs with the transaction read-only for its
 *	  duration, so a write fails with SQLSTATE 25006, and on the current
 *	  snapshot, as a STABLE function would;
 *	- key: the call is journaled (journal.c) in the same transaction, so a
 *	  retry with the same key returns the recorded output instead of running
 *	  again;
 *	- nesting: a call made from inside another apiary call runs in a
 *	  subtransaction of its own.  If it fails, its effects and journal rows
 *	  are rolled back and the error goes on to the caller, which may catch
 *	  it and carry on.  Keyed nested calls record the enclosing call's key.
 * A key belongs to the role that makes the call (current_user there: the
 * owner, inside a SECURITY DEFINER function).
 *
 * The chain of calls in progress is a stack of frames on the C stack,
 * unwound in PG_FINALLY/PG_CATCH so that an error leaves no stale frame.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "apiary.h"
#include "bind.h"
#include "invoke.h"
#include "executor.h"
#include "journal.h"
#include "guc.h"
#include "provenance.h"
#include "registry.h"
#include "stats.h"

PG_FUNCTION_INFO_V1(apiary_invoke);


typedef struct InvokeFrame
{
	struct InvokeFrame *parent;
	Oid			role;			/* key namespace */
	text	   *key;			/* NULL when unkeyed */
	int			ordinal;		/* in its task (apiary_next_call); 0: none */
} InvokeFrame;

static InvokeFrame *current_frame = NULL;

/* The ordinal of the innermost call in progress, for its task key. */
int
apiary_invoke_ordinal(void)
{
	return current_frame == NULL ? 0 : current_frame->ordinal;
}

/*
 * While a readonly function runs, XactReadOnly is its kind's; the
 * transaction's own is kept here, for the journal of keyed calls it makes.
 */
static bool in_readonly_call = false;
static bool xact_read_only;

/*
 * Call f by the rules of its kind: a readonly function runs with the
 * transaction read-only, on the current snapshot.  Requires an SPI
 * connection.  direct: see bind_call.
 */
Datum
apiary_call(ApiaryFunction *f, Jsonb *args, bool direct,
			MemoryContext resultcxt, bool *isnull)
{
	bool		was_read_only = XactReadOnly;
	bool		was_in_readonly_call = in_readonly_call;
	Datum		result;

	if (f->kind != APIARY_KIND_READONLY)
		return bind_call(f, args, false, direct, resultcxt, isnull);

	if (!in_readonly_call)
		xact_read_only = XactReadOnly;
	in_readonly_call = true;
	XactReadOnly = true;
	PG_TRY();
	{
		result = bind_call(f, args, true, direct, resultcxt, isnull);
	}
	PG_FINALLY();
	{
		XactReadOnly = was_read_only;
		in_readonly_call = was_in_readonly_call;
	}
	PG_END_TRY();
	return result;
}

bool
apiary_xact_read_only(void)
{
	return in_readonly_call ? xact_read_only : XactReadOnly;
}

/*
 * A keyed call whose key is still running further up the stack would wait
 * for its own result: refuse it.  (Its lock is ours already, and its row is
 * not written until it returns.)
 */
static void
check_not_running(InvokeFrame *frame)
{
	for (InvokeFrame *up = frame->parent; up != NULL; up = up->parent)
	{
		if (up->key != NULL && up->role == frame->role &&
			VARSIZE_ANY_EXHDR(up->key) == VARSIZE_ANY_EXHDR(frame->key) &&
			memcmp(VARDATA_ANY(up->key), VARDATA_ANY(frame->key),
				   VARSIZE_ANY_EXHDR(frame->key)) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("key \"%s\" is already being executed by this transaction",
							text_to_cstring(frame->key)),
					 errdetail("A keyed call cannot call itself with its own key.")));
	}
}

/*
 * Run one call: the journal, the function (taken into *held, for the
 * caller to release), the read-only switch.  A key recorded already
 * returns its output before the function is looked up: the retry of a
 * call that committed, whatever became of its function since.
 */
static Datum
invoke_body(const char *name, ApiaryFunction *volatile *held, Jsonb *args,
			InvokeFrame *frame, MemoryContext resultcxt, bool *isnull)
{
	Datum		result = (Datum) 0;
	TimestampTz started_at = GetCurrentTimestamp();
	TimestampTz call_started;
	ApiaryFunction *f;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	if (frame->key != NULL &&
		!journal_claim(frame->role, frame->key, name, args,
					   resultcxt, &result, isnull))
	{
		SPI_finish();
		return result;
	}
	f = *held = registry_acquire(name);
	/*
	 * A call to run and journal: the journal is a write, which a readonly
	 * function may make (its kind binds its own writes), a read-only
	 * transaction not.
	 */
	if (frame->key != NULL && apiary_xact_read_only())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot journal a keyed call of apiary function \"%s\" in a read-only transaction",
						f->name),
				 errhint("Call it without a key, or in a read-write transaction.")));

	/* a failed call counts too, though its transaction rolls back */
	call_started = GetCurrentTimestamp();
	PG_TRY();
	{
		result = apiary_call(f, args, false, resultcxt, isnull);
	}
	PG_CATCH();
	{
		apiary_stats_record(f->name, call_started, true, false);
		PG_RE_THROW();
	}
	PG_END_TRY();
	apiary_stats_record(f->name, call_started, false, false);

	if (frame->key != NULL)
	{
		bind_check_output(f->name, result, *isnull);
		journal_record(frame->role, frame->key, f->name, args,
					   frame->parent ? frame->parent->key : NULL,
					   started_at, result, *isnull);
	}

	SPI_finish();
	return result;
}

/*
 * Provenance: the call's writes (and reads) are its own; inside a task,
 * they belong to the task's workflow too.
 */
static void
note_provenance(ProvenanceFrame *prov, InvokeFrame *frame, const char *name)
{
	text	   *workflow = NULL;
	int64		task = 0;

	if (!prov->active)
		return;
	(void) apiary_in_task(&workflow, &task, NULL);
	provenance_note(prov, frame->role, workflow, task, name);
}

/*
 * Is key the apiary_task_key() of the running task, as its caller has it?
 * That key may be longer than apiary.max_key_size by its suffix (a
 * workflow id may be as long as a key), and is accepted all the same.
 */
static bool
own_task_key(text *key)
{
	char	   *own = apiary_task_key_cstring();

	return own != NULL && strlen(own) == VARSIZE_ANY_EXHDR(key) &&
		memcmp(own, VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)) == 0;
}

Datum
apiary_invoke_internal(const char *name, Jsonb *args, text *key,
					   bool own_subxact, bool *isnull)
{
	MemoryContext callercxt = CurrentMemoryContext;
	ResourceOwner callerowner = CurrentResourceOwner;
	InvokeFrame frame;
	ProvenanceFrame prov;
	ApiaryFunction *volatile held = NULL;	/* taken inside PG_TRY */
	Datum		result = (Datum) 0;
	text	   *workflow;
	int64		task;
	bool		nested;

	/*
	 * A call made by an apiary function, one apiary_invoke runs or a task's,
	 * is nested: it runs in a subtransaction of its own, so that its caller
	 * may catch its error and go on without its effects, as the README
	 * promises.  So does every call through the C API (own_subxact): a C
	 * caller's PG_TRY has no subtransaction of its own, and catching there
	 * would keep the failed call's writes.
	 */
	nested = own_subxact || current_frame != NULL ||
		apiary_in_task(&workflow, &task, NULL);
	if (nested || key != NULL)
		bind_require_not_parallel(key != NULL ? "apiary_invoke with a key" : "apiary_invoke");
	check_stack_depth();
	bind_check_limits(name, args);
	apiary_check_no_futures("apiary_invoke", args);
	if (key != NULL && VARSIZE_ANY_EXHDR(key) > apiary_max_key_size && !own_task_key(key))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("key for apiary function \"%s\" is too long", name),
				 errdetail("Keys are at most %d bytes (apiary.max_key_size); this one has %zu.",
						   apiary_max_key_size, VARSIZE_ANY_EXHDR(key))));

	if (key != NULL && VARSIZE_ANY_EXHDR(key) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key for apiary function \"%s\" must not be empty", name),
				 errhint("Pass NULL to call it without a key.")));
	frame.parent = current_frame;
	frame.role = GetUserId();
	frame.key = key;
	frame.ordinal = apiary_next_call();
	if (key != NULL)
		check_not_running(&frame);

	if (!nested)
	{
		current_frame = &frame;
		provenance_begin(&prov);
		PG_TRY();
		{
			result = invoke_body(name, &held, args, &frame, callercxt, isnull);
			note_provenance(&prov, &frame, name);
		}
		PG_FINALLY();
		{
			provenance_pop(&prov);
			current_frame = frame.parent;
			if (held != NULL)
				registry_release(held);
		}
		PG_END_TRY();
		return result;
	}

	/*
	 * A nested call runs in a subtransaction of its own.  The function is
	 * taken inside it, so that whatever fails after the subtransaction
	 * began (the lookup itself: an unknown name) is caught below, which
	 * rolls the subtransaction back and releases what was taken.
	 */
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(callercxt);
	provenance_begin(&prov);
	PG_TRY();
	{
		current_frame = &frame;
		result = invoke_body(name, &held, args, &frame, callercxt, isnull);
		note_provenance(&prov, &frame, name);
		provenance_pop(&prov);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(callercxt);
		CurrentResourceOwner = callerowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		provenance_pop(&prov);
		current_frame = frame.parent;
		if (held != NULL)
			registry_release(held);

		/* roll the nested call back, then let the caller see its error */
		MemoryContextSwitchTo(callercxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(callercxt);
		CurrentResourceOwner = callerowner;
		ReThrowError(edata);
	}
	PG_END_TRY();

	current_frame = frame.parent;
	if (held != NULL)
		registry_release(held);
	return result;
}

Jsonb *
apiary_invoke_jsonb(const char *name, Jsonb *args, const char *key)
{
	bool		isnull;
	Datum		result;

	bind_require_name_args(name, args, key);
	result = apiary_invoke_internal(name, args, key ? cstring_to_text(key) : NULL,
									true, &isnull);
	return isnull ? NULL : DatumGetJsonbP(result);
}

Datum
apiary_invoke(PG_FUNCTION_ARGS)
{
	Datum		result;
	bool		isnull;

	bind_require_call_args(fcinfo);

	result = apiary_invoke_internal(text_to_cstring(PG_GETARG_TEXT_PP(0)),
									PG_GETARG_JSONB_P(1),
									PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2),
									false, &isnull);
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}
