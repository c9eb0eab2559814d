/*-------------------------------------------------------------------------
 *
 * bind.c
 *	  Calling a registered function with JSON arguments: binding values to
 *	  parameters (bindrules.c), converting each JSON value to its
 *	  parameter's type, and running a prepared call statement.
 *
 * Conversion rules, per parameter type:
 *	- JSON null is SQL NULL, whatever the type;
 *	- jsonb takes the value as it is, json takes its text;
 *	- arrays and composites (and domains over them) follow jsonb_to_record:
 *	  a JSON array fills an array, an object fills a composite by field name;
 *	- any other type takes a JSON string, number or boolean through its
 *	  input function, so '"2024-01-01"' is a date and '"42"' or 42 an int.
 *	  An object or array given for such a type is a datatype mismatch.
 *
 * The call itself is an SQL statement, "SELECT to_jsonb(s.f($1, $2))",
 * prepared once per function and per set of bound parameters and kept with
 * the cached registration.  Going through the planner is what makes every
 * function callable alike, whatever its language: defaults of omitted
 * parameters, named notation, VARIADIC, set-returning functions (collected
 * into a JSON array) and SQL functions that get inlined.  The statement text
 * is built from catalog names only, quoted; user values are parameters.
 * An executor, for which that statement's start-up is a good part of a
 * step, calls the function directly through fmgr when the call needs none
 * of it: every parameter given, none filled through jsonb_to_record, not
 * variadic, polymorphic or set-returning.  The direct call does what the
 * statement would around it: the EXECUTE check, a fresh snapshot, the
 * function's statistics, to_jsonb of the result.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/xact.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "nodes/makefuncs.h"
#include "pgstat.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "bind.h"
#include "bindrules.h"
#include "guc.h"
#include "names.h"

typedef struct ConvertErrorContext
{
	ApiaryFunction *f;
	int			param;
} ConvertErrorContext;

static char *
param_label(ApiaryFunction *f, int i)
{
	return f->params[i].name ? f->params[i].name : psprintf("$%d", i + 1);
}

/* Can every parameter of f be bound by name? */
static bool
all_named(ApiaryFunction *f)
{
	for (int i = 0; i < f->nargs; i++)
		if (f->params[i].name == NULL)
			return false;
	return true;
}

/* "item integer, qty integer DEFAULT", for hints. */
static char *
describe_params(ApiaryFunction *f)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < f->nargs; i++)
		appendStringInfo(&buf, "%s%s %s%s", i > 0 ? ", " : "",
						 param_label(f, i), format_type_be(f->params[i].type),
						 i >= f->nargs - f->ndefaults ? " DEFAULT" : "");
	return buf.data;
}

/*
 * Raise the error for err, found binding nvalues values to f (by name when
 * by_name; key is the name that matched no parameter).
 */
static void
report_bind_error(ApiaryFunction *f, BindError err, int bad,
				  const char *key, int keylen, int nvalues, bool by_name)
{
	switch (err)
	{
		case BIND_OK:
			return;
		case BIND_UNKNOWN_NAME:
			{
				char	   *name = pnstrdup(key, keylen);
				int			nearest[1];

				if (names_nearest(name, keylen, f->param_names, f->nargs, nearest, 1) == 1)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("apiary function \"%s\" has no parameter named \"%s\"",
									f->name, name),
							 errhint("Perhaps you meant \"%s\".", f->param_names[nearest[0]])));
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("apiary function \"%s\" has no parameter named \"%s\"",
								f->name, name),
						 f->nargs == 0
						 ? errhint("It takes no arguments: pass '{}'.")
						 : errhint("Its parameters are: %s.", describe_params(f))));
			}
			break;
		case BIND_MISSING:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("missing argument \"%s\" for apiary function \"%s\"",
							param_label(f, bad), f->name),
					 errdetail("The parameter has no default."),
					 by_name && f->params[bad].name == NULL
					 ? errhint("The parameter has no name: pass the arguments as a JSON array, by position.")
					 : errhint("Its parameters are: %s.", describe_params(f))));
			break;
		case BIND_TOO_MANY:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("too many arguments for apiary function \"%s\"", f->name),
					 errdetail("It takes %d, and %d were given.", f->nargs, nvalues),
					 f->nargs > 0 ? errhint("Its parameters are: %s.", describe_params(f)) : 0));
			break;
		case BIND_SCALAR_AMBIGUOUS:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a single value cannot be bound to apiary function \"%s\"",
							f->name),
					 f->nargs == 0 ?
					 errdetail("A JSON scalar binds a function's first parameter; it takes none.") :
					 errdetail("A JSON scalar binds the first parameter of a function with at most one parameter without a default; it has %d.",
							   f->nargs - f->ndefaults),
					 all_named(f)
					 ? errhint("Pass a JSON object to bind by name, or an array to bind by position.")
					 : errhint("Pass a JSON array to bind by position: not every parameter has a name.")));
			break;
	}
}

/* name and args, the first two arguments of every call API, are required. */
void
bind_require_call_args(FunctionCallInfo fcinfo)
{
	bind_require_name_args(PG_ARGISNULL(0) ? NULL : "", PG_ARGISNULL(1) ? NULL : "", NULL);
}

/*
 * The same for the C API (apiary.h), given the values.  Its strings come
 * unchecked, and must be in the database's encoding (22021), as every text
 * value is; key may be NULL.
 */
void
bind_require_name_args(const char *name, const void *args, const char *key)
{
	if (name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("function name must not be null")));
	if (args == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("arguments must not be null"),
				 errhint("Pass '{}' to call a function without arguments.")));
	(void) pg_verifymbstr(name, strlen(name), false);
	if (key != NULL)
		(void) pg_verifymbstr(key, strlen(key), false);
}

/*
 * What writes apiary's tables, or keeps state of the running task, cannot
 * run in a parallel worker, nor in its leader while the workers run: a
 * function marked PARALLEL SAFE or RESTRICTED that calls it.
 */
void
bind_require_not_parallel(const char *what)
{
	if (IsInParallelMode())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("%s cannot be called during a parallel operation", what),
				 errhint("Mark the function that calls it PARALLEL UNSAFE.")));
}

void
bind_check_output(const char *name, Datum output, bool isnull)
{
	/* as stored, whole: a function may return a value still toasted */
	Size		size = isnull ? 0 : toast_raw_datum_size(output);

	if (size > (Size) apiary_max_output_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("output of apiary function \"%s\" is too large to record", name),
				 errdetail("It takes %zu bytes; apiary.max_output_size is %d.",
						   size, apiary_max_output_size),
				 errhint("Store large results in a table and return a reference to them.")));
}

void
bind_check_limits(const char *name, Jsonb *args)
{
	Size		size = VARSIZE(args);

	if (size > (Size) apiary_max_args_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("arguments for apiary function \"%s\" are too large", name),
				 errdetail("They take %zu bytes; apiary.max_args_size is %d.",
						   size, apiary_max_args_size)));

	/* every level of nesting costs at least a header and an entry */
	if (size > (Size) apiary_max_args_depth * 2 * sizeof(uint32))
	{
		JsonbIterator *it = JsonbIteratorInit(&args->root);
		JsonbValue	v;
		JsonbIteratorToken tok;
		int			depth = 0;

		while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
		{
			if (tok == WJB_BEGIN_ARRAY || tok == WJB_BEGIN_OBJECT)
			{
				if (++depth > apiary_max_args_depth)
					ereport(ERROR,
							(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
							 errmsg("arguments for apiary function \"%s\" are nested too deeply", name),
							 errdetail("apiary.max_args_depth is %d.", apiary_max_args_depth)));
			}
			else if (tok == WJB_END_ARRAY || tok == WJB_END_OBJECT)
				depth--;
		}
	}
}

static void
convert_errcontext(void *arg)
{
	ConvertErrorContext *ctx = arg;

	errcontext("argument \"%s\" of apiary function \"%s\"",
			   param_label(ctx->f, ctx->param), ctx->f->name);
}

/*
 * An array or composite value, as jsonb_to_record makes it, before the
 * call: an error here is the arguments', never the function's (an
 * external task does not retry it).
 */
static Datum
convert_structured(ApiaryFunction *f, ApiaryParam *p, JsonbValue *v, bool *isnull)
{
	Oid			argtypes[1] = {JSONBOID};
	Datum		values[1] = {JsonbPGetDatum(JsonbValueToJsonb(v))};
	int			rc;

	if (p->convert == NULL)
	{
		/* the type without a typmod: char[] is not character(1)[] */
		char	   *sql = psprintf("SELECT x.v FROM pg_catalog.jsonb_to_record("
								   "pg_catalog.jsonb_build_object('v', $1)) AS x(v %s)",
								   format_type_extended(p->type, -1,
														FORMAT_TYPE_TYPEMOD_GIVEN |
														FORMAT_TYPE_FORCE_QUALIFY));
		SPIPlanPtr	plan = SPI_prepare(sql, 1, argtypes);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s",
				 sql, SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		p->convert = plan;
	}
	rc = SPI_execute_plan(p->convert, values, NULL, false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "unexpected result converting argument \"%s\" of %s: %s",
			 param_label(f, p - f->params), f->signature, SPI_result_code_string(rc));
	values[0] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, isnull);
	/* arrays and composites (and domains over them) are varlena */
	return *isnull ? (Datum) 0 : datumCopy(values[0], false, -1);
}

static Datum
convert_value(ApiaryFunction *f, int i, JsonbValue *v, bool *isnull)
{
	ApiaryParam *p = &f->params[i];
	char	   *str;

	*isnull = false;
	if (v->type == jbvNull)
	{
		/* a domain's NOT NULL or CHECK may refuse a null, as in a call */
		if (get_typtype(p->type) == TYPTYPE_DOMAIN)
			domain_check((Datum) 0, true, p->type, NULL, NULL);
		*isnull = true;
		return (Datum) 0;
	}

	switch (p->conversion)
	{
		case PARAM_STRUCTURED:
			/* arrays and records come from JSON arrays, objects or text */
			if (v->type == jbvNumeric || v->type == jbvBool)
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("argument \"%s\" of apiary function \"%s\" must be %s, not a JSON %s",
								param_label(f, i), f->name, format_type_be(p->type),
								v->type == jbvNumeric ? "number" : "boolean")));
			return convert_structured(f, p, v, isnull);
		case PARAM_JSONB:
			return JsonbPGetDatum(JsonbValueToJsonb(v));
		case PARAM_JSON:
			{
				Jsonb	   *jb = JsonbValueToJsonb(v);

				str = JsonbToCString(NULL, &jb->root, VARSIZE(jb));
				return InputFunctionCall(&p->input, str, p->ioparam, -1);
			}
		case PARAM_SCALAR:
			break;
	}

	switch (v->type)
	{
		case jbvString:
			str = pnstrdup(v->val.string.val, v->val.string.len);
			break;
		case jbvNumeric:
			if (p->type == NUMERICOID)
				return NumericGetDatum(v->val.numeric);
			str = DatumGetCString(DirectFunctionCall1(numeric_out,
													  NumericGetDatum(v->val.numeric)));
			break;
		case jbvBool:
			if (p->type == BOOLOID)
				return BoolGetDatum(v->val.boolean);
			str = v->val.boolean ? "true" : "false";
			break;
		default:
			{
				bool		is_object = v->type == jbvBinary &&
				JsonContainerIsObject(v->val.binary.data);

				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("argument \"%s\" of apiary function \"%s\" must be %s, not a JSON %s",
								param_label(f, i), f->name, format_type_be(p->type),
								is_object ? "object" : "array")));
				str = NULL;		/* keep compiler quiet */
			}
	}
	return InputFunctionCall(&p->input, str, p->ioparam, -1);
}

/*
 * The prepared call statements kept per function, one per set of bound
 * parameters: a function with many optional parameters has more sets than
 * any cache should hold, and callers choose which to name.
 */
#define MAX_CALL_PLANS 16

/*
 * The prepared call statement for this set of bound parameters: the most
 * recently used first, the least recently used dropped beyond
 * MAX_CALL_PLANS (unless a call of f in progress below us might be
 * running it).
 */
static SPIPlanPtr
call_plan(ApiaryFunction *f, const BindMask *mask)
{
	StringInfoData call;
	StringInfoData sql;
	Oid		   *argtypes;
	int			nparams = 0;
	int			prefix;
	int			nplans = 0;
	bool		positional;
	SPIPlanPtr	plan;
	ApiaryCallPlan *cp;
	ApiaryCallPlan **link;

	for (link = &f->plans; *link != NULL; link = &(*link)->next, nplans++)
		if (bind_mask_equal(&(*link)->mask, mask))
		{
			cp = *link;
			*link = cp->next;
			cp->next = f->plans;
			f->plans = cp;
			return cp->plan;
		}

	positional = bind_mask_is_prefix(mask, &prefix);
	argtypes = palloc(Max(f->nargs, 1) * sizeof(Oid));
	initStringInfo(&call);
	appendStringInfo(&call, "%s(", f->qualified_name);
	for (int i = 0; i < f->nargs; i++)
	{
		ApiaryParam *p = &f->params[i];

		if (!bind_mask_test(mask, i))
			continue;
		if (nparams > 0)
			appendStringInfoString(&call, ", ");
		if (f->variadic && i == f->nargs - 1)
			appendStringInfoString(&call, "VARIADIC ");
		if (!positional)
			appendStringInfo(&call, "%s => ", quote_identifier(p->name));
		nparams++;
		switch (p->conversion)
		{
			case PARAM_SCALAR:
			case PARAM_JSON:
			case PARAM_STRUCTURED:
				argtypes[nparams - 1] = p->type;
				appendStringInfo(&call, "$%d", nparams);
				break;
			case PARAM_JSONB:
				argtypes[nparams - 1] = JSONBOID;
				appendStringInfo(&call, "$%d", nparams);
				break;
		}
	}
	appendStringInfoChar(&call, ')');

	initStringInfo(&sql);
	if (f->retset)
		appendStringInfo(&sql,
						 "SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(r)),"
						 " '[]'::pg_catalog.jsonb) FROM %s AS r", call.data);
	else if (f->returns_void)
		appendStringInfo(&sql, "SELECT %s", call.data);
	else
		appendStringInfo(&sql, "SELECT pg_catalog.to_jsonb(%s)", call.data);

	plan = SPI_prepare(sql.data, nparams, argtypes);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s",
			 sql.data, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);

	if (nplans >= MAX_CALL_PLANS && f->refcount <= 1)
	{
		for (link = &f->plans; (*link)->next != NULL; link = &(*link)->next)
			;
		SPI_freeplan((*link)->plan);
		pfree(*link);
		*link = NULL;
	}
	cp = MemoryContextAlloc(f->cxt, sizeof(ApiaryCallPlan));
	cp->mask = *mask;
	cp->plan = plan;
	cp->next = f->plans;
	f->plans = cp;
	return plan;
}

/* Can f be called directly with these parameters bound?  Sets it up once. */
static bool
direct_possible(ApiaryFunction *f, const BindMask *mask)
{
	if (f->direct == 0)
	{
		bool		ok = !f->retset && !f->variadic &&
			!IsPolymorphicType(f->rettype) &&
			(f->returns_void || get_typtype(f->rettype) != TYPTYPE_PSEUDO);

		f->collation = InvalidOid;
		for (int i = 0; ok && i < f->nargs; i++)
		{
			Oid			coll = get_typcollation(f->params[i].type);

			ok = !IsPolymorphicType(f->params[i].type);
			if (OidIsValid(coll) && OidIsValid(f->collation) && coll != f->collation)
				ok = false;		/* the statement would fail, or pick one */
			if (OidIsValid(coll))
				f->collation = coll;
		}
		if (ok)
		{
			fmgr_info_cxt(f->fn, &f->call, f->cxt);
			if (f->rettype != JSONBOID && !f->returns_void)
			{
				MemoryContext old = MemoryContextSwitchTo(f->cxt);

				/* to_jsonb(anyelement) learns its argument's type from fn_expr */
				fmgr_info_cxt(F_TO_JSONB, &f->to_jsonb, f->cxt);
				f->to_jsonb.fn_expr = (Node *)
					makeFuncExpr(F_TO_JSONB, JSONBOID,
								 list_make1(makeNullConst(f->rettype, -1, InvalidOid)),
								 InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
				MemoryContextSwitchTo(old);
			}
		}
		f->direct = ok ? 1 : -1;
	}
	if (f->direct < 0)
		return false;
	for (int i = 0; i < f->nargs; i++)
		if (!bind_mask_test(mask, i))
			return false;		/* a default to fill in */
	return true;
}

/*
 * May the current user call f by its name, as the statement would: USAGE
 * on its schema and EXECUTE on it.  (A call through fmgr checks neither.)
 */
static void
check_may_call(ApiaryFunction *f)
{
	AclResult	acl = pg_namespace_aclcheck(f->namespace, GetUserId(), ACL_USAGE);

	if (acl != ACLCHECK_OK)
		aclcheck_error(acl, OBJECT_SCHEMA, get_namespace_name(f->namespace));
	acl = pg_proc_aclcheck(f->fn, GetUserId(), ACL_EXECUTE);
	if (acl != ACLCHECK_OK)
		aclcheck_error(acl, OBJECT_FUNCTION, get_func_name(f->fn));
}

/* The call as the statement would make it, with every parameter given. */
static Datum
direct_call(ApiaryFunction *f, Datum *values, char *nulls, bool read_only,
			bool *isnull)
{
	LOCAL_FCINFO(fcinfo, FUNC_MAX_ARGS);
	PgStat_FunctionCallUsage fcusage;
	Datum		result;

	InvokeFunctionExecuteHook(f->fn);

	InitFunctionCallInfoData(*fcinfo, &f->call, f->nargs, f->collation, NULL, NULL);
	for (int i = 0; i < f->nargs; i++)
	{
		fcinfo->args[i].value = values[i];
		fcinfo->args[i].isnull = nulls[i] == 'n';
		if (fcinfo->args[i].isnull && f->call.fn_strict)
		{
			*isnull = true;
			return (Datum) 0;
		}
	}

	/* as SPI runs a statement: a new command and snapshot, unless read-only */
	if (!read_only)
		CommandCounterIncrement();
	PushActiveSnapshot(read_only ? GetActiveSnapshot() : GetTransactionSnapshot());
	pgstat_init_function_usage(fcinfo, &fcusage);
	result = FunctionCallInvoke(fcinfo);
	pgstat_end_function_usage(&fcusage, true);
	PopActiveSnapshot();

	*isnull = fcinfo->isnull;
	if (*isnull || f->returns_void || f->rettype == JSONBOID)
		return result;
	return FunctionCall1(&f->to_jsonb, result);
}

/*
 * Which value binds which parameter: element i of the result is the value
 * for parameter i, or NULL when it takes its default.  Binding errors are
 * reported here.
 */
static JsonbValue **
bind_params(ApiaryFunction *f, Jsonb *args, BindMask *mask)
{
	int			count = JB_ROOT_IS_SCALAR(args) ? 1 : JB_ROOT_COUNT(args);
	JsonbValue *given = palloc(Max(count, 1) * sizeof(JsonbValue));
	JsonbValue **byparam = palloc0(Max(f->nargs, 1) * sizeof(JsonbValue *));
	BindSignature sig = {f->nargs, f->param_names, f->ndefaults};
	BindError	err;
	int			bad = 0;

	if (JB_ROOT_IS_SCALAR(args))
	{
		JsonbExtractScalar(&args->root, &given[0]);
		err = bind_scalar(&sig, mask, &bad);
		report_bind_error(f, err, bad, NULL, 0, 1, false);
		byparam[0] = &given[0];
	}
	else
	{
		JsonbIterator *it = JsonbIteratorInit(&args->root);
		JsonbIteratorToken tok;
		JsonbValue	v;
		const char **keys = palloc(Max(count, 1) * sizeof(char *));
		int		   *keylens = palloc(Max(count, 1) * sizeof(int));
		int		   *slot = palloc(Max(count, 1) * sizeof(int));
		int			n = 0;

		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
			{
				keys[n] = v.val.string.val;
				keylens[n] = v.val.string.len;
			}
			else if (tok == WJB_VALUE || tok == WJB_ELEM)
				given[n++] = v;
		}

		if (JB_ROOT_IS_OBJECT(args))
		{
			err = bind_by_name(&sig, n, keys, keylens, slot, mask, &bad);
			if (err == BIND_UNKNOWN_NAME)
				report_bind_error(f, err, bad, keys[bad], keylens[bad], n, true);
			report_bind_error(f, err, bad, NULL, 0, n, true);
			for (int k = 0; k < n; k++)
				byparam[slot[k]] = &given[k];
			/* PostgreSQL resolves no call that names a VARIADIC after a gap */
			if (f->variadic && bind_mask_test(mask, f->nargs - 1))
				for (int i = 0; i < f->nargs - 1; i++)
					if (!bind_mask_test(mask, i))
						ereport(ERROR,
								(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
								 errmsg("VARIADIC parameter \"%s\" of apiary function \"%s\" cannot be passed by name while parameter \"%s\" before it is left to its default",
										param_label(f, f->nargs - 1), f->name, param_label(f, i)),
								 errhint("Pass the parameters before it too.")));
		}
		else
		{
			err = bind_by_position(&sig, n, mask, &bad);
			report_bind_error(f, err, bad, NULL, 0, n, false);
			for (int k = 0; k < n; k++)
				byparam[k] = &given[k];
		}
	}
	return byparam;
}

Oid
bind_check_queued(const char *name, Jsonb *args)
{
	ApiaryFunction *f = registry_acquire(name);
	Oid			owner = f->owner;

	PG_TRY();
	{
		BindMask	mask;

		check_may_call(f);
		(void) bind_params(f, args, &mask);
	}
	PG_FINALLY();
	{
		registry_release(f);
	}
	PG_END_TRY();
	return owner;
}

bool		bind_binding_task = false;

Datum
bind_call(ApiaryFunction *f, Jsonb *args, bool read_only, bool direct,
		  MemoryContext resultcxt, bool *isnull)
{
	JsonbValue **byparam;
	Datum	   *values = palloc(Max(f->nargs, 1) * sizeof(Datum));
	char	   *nulls = palloc(Max(f->nargs, 1) * sizeof(char));
	BindMask	mask;
	int			nparams = 0;
	SPIPlanPtr	plan;
	ConvertErrorContext ctx = {f, 0};
	ErrorContextCallback errcallback;
	int			rc;
	Datum		result;

	/*
	 * Checked on every call, the statement's way included: a plan cached
	 * by another role's call checks neither again.
	 */
	check_may_call(f);

	/* only a task's own call is direct (executor.c) */
	bind_binding_task = direct;
	byparam = bind_params(f, args, &mask);

	/* convert, in parameter order: the plan's $n follow it */
	errcallback.callback = convert_errcontext;
	errcallback.arg = &ctx;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;
	for (int i = 0; i < f->nargs; i++)
	{
		bool		null;

		if (byparam[i] == NULL)
			continue;
		ctx.param = i;
		values[nparams] = convert_value(f, i, byparam[i], &null);
		nulls[nparams] = null ? 'n' : ' ';
		nparams++;
	}
	error_context_stack = errcallback.previous;
	bind_binding_task = false;

	if (direct && direct_possible(f, &mask))
		result = direct_call(f, values, nulls, read_only, isnull);
	else
	{
		plan = call_plan(f, &mask);
		rc = SPI_execute_plan(plan, values, nulls, read_only, 0);
		if (rc != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "unexpected result calling %s: %s",
				 f->signature, SPI_result_code_string(rc));
		if (!f->returns_void)
			result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, isnull);
	}

	if (f->returns_void)
	{
		JsonbValue	null = {.type = jbvNull};
		MemoryContext old = MemoryContextSwitchTo(resultcxt);

		*isnull = false;
		result = JsonbPGetDatum(JsonbValueToJsonb(&null));
		MemoryContextSwitchTo(old);
		return result;
	}

	if (!*isnull)
	{
		MemoryContext old = MemoryContextSwitchTo(resultcxt);

		result = datumCopy(result, false, -1);
		MemoryContextSwitchTo(old);
	}
	return result;
}
