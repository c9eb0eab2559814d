/*-------------------------------------------------------------------------
 *
 * registry.c
 *	  Registering functions with apiary, and finding them again fast.
 *
 * A registration is a row of apiary.functions: a name, the function, its
 * kind and its retry/timeout settings.  Rows are written three ways, all
 * here:
 *
 *	- apiary_register() / apiary_unregister(), by the function's owner;
 *	- declaratively: an event trigger at ddl_command_end reads
 *	  "SET apiary.kind = ..." back from pg_proc.proconfig after CREATE
 *	  FUNCTION and ALTER FUNCTION, and registers, updates or (when the
 *	  setting is gone) unregisters the function;
 *	- an event trigger at sql_drop removes the registration of every
 *	  function dropped, also by DROP SCHEMA ... CASCADE, DROP OWNED or the
 *	  drop of another extension.
 *
 * Event triggers rather than a ProcessUtility hook: they fire in every
 * session, whether or not this library was loaded there beforehand, and
 * sql_drop reports functions dropped by cascade, which a utility hook never
 * sees.  As a last line, a lookup that finds a registration whose function
 * is gone says so.
 *
 * The function is kept twice (apiary--0.9--0.10.sql): by OID (fn_oid),
 * which names it in this cluster and follows renames by itself, and by
 * its schema-qualified signature (fn), which names it in another: after
 * pg_upgrade, which does not keep function OIDs, and in a restored dump.
 * Lookups use the OID while apiary.registry_cluster says it is this
 * cluster's, the signature otherwise (until apiary.adopt_registrations
 * has resolved them all again); changes adopt first.  The event trigger
 * at ddl_command_end brings the signatures up to date after a rename, and
 * the launcher once a minute (registry_upkeep).
 *
 * Each backend caches, per registered name, everything needed to call the
 * function: its parameters and how JSON converts to each, and the prepared
 * call statements (bind.c).  The cache is invalidated by syscache callbacks
 * on pg_proc and pg_namespace (a renamed schema changes the qualified name
 * in the statements), and by relcache invalidations of apiary.functions, which the
 * table's statement trigger sends whenever a row changes.  Entries in use
 * (a call may re-enter the registry through a nested call) are pinned and
 * freed only once released.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "journal.h"
#include "launcher.h"
#include "names.h"
#include "registry.h"
#include "stats.h"

PG_FUNCTION_INFO_V1(apiary_register);
PG_FUNCTION_INFO_V1(apiary_unregister);
PG_FUNCTION_INFO_V1(apiary_registry_changed);
PG_FUNCTION_INFO_V1(apiary_on_ddl_command_end);
PG_FUNCTION_INFO_V1(apiary_system_identifier);
PG_FUNCTION_INFO_V1(apiary_on_sql_drop);

typedef struct RegistryEntry
{
	char		name[NAMEDATALEN];	/* hash key */
	ApiaryFunction *f;
} RegistryEntry;

static HTAB *registry_cache = NULL;
static bool registry_invalidated = false;	/* entries may await freeing */
static Oid	registry_relid = InvalidOid;	/* apiary.functions, once known */
static Oid	registry_fn_type = InvalidOid;	/* the type of its column fn */

#define KIND_SETTING "apiary.kind="

/*
 * The function's signature, as apiary.functions.fn holds it.  Never in the
 * quoted-everything form, which any session may ask for: signatures are
 * compared as text.
 */
static char *
signature_of(Oid fn)
{
	bool		save = quote_all_identifiers;
	char	   *signature;

	quote_all_identifiers = false;
	signature = format_procedure_qualified(fn);
	quote_all_identifiers = save;
	return signature;
}

/*
 * Before ALTER EXTENSION apiary UPDATE to 0.10, apiary.functions.fn is a
 * regprocedure and there is no fn_oid, and registrations go on working
 * until the update: the statements here are put together for either.
 */
static bool
fn_is_signature(void)
{
	if (!OidIsValid(registry_fn_type))
	{
		Oid			rel = get_relname_relid("functions", journal_namespace());

		registry_fn_type = get_atttype(rel, get_attnum(rel, "fn"));
		registry_relid = rel;
	}
	return registry_fn_type == TEXTOID;
}

/* The function as an OID, once the registry is this cluster's (adopt). */
static const char *
fn_oid_sql(void)
{
	return fn_is_signature() ? "fn_oid" : "fn::pg_catalog.oid";
}

/*
 * The function as an OID, NULL when it names none: the registry's OID
 * while it is this cluster's and names the function the signature does,
 * else the signature's function.  A row that came in without the insert
 * trigger (a data-only restore with --disable-triggers) brings another
 * database's OID, which may name another function here, or none: then the
 * signature's function, if the role that registered it may register it
 * (it owns it, as apiary_register requires), else none.  A signature that
 * names no function is a rename not seen yet, and the OID stands.  As in
 * apiary.refresh_signatures.
 */
static const char *
fn_lookup_sql(void)
{
	return fn_is_signature() ?
		"CASE WHEN ((SELECT system_identifier FROM apiary.registry_cluster)"
		"           OPERATOR(pg_catalog.=) apiary.system_identifier()) IS NOT TRUE"
		"  THEN apiary.resolve_signature(fn)"
		" WHEN (pg_catalog.pg_identify_object('pg_catalog.pg_proc'::pg_catalog.regclass,"
		"       fn_oid, 0)).identity OPERATOR(pg_catalog.=) fn"
		"  THEN fn_oid"
		" WHEN apiary.resolve_signature(fn) IS NULL THEN fn_oid"
		" ELSE (SELECT sig.oid FROM pg_catalog.pg_proc sig"
		"        WHERE sig.oid OPERATOR(pg_catalog.=) apiary.resolve_signature(fn)"
		"          AND pg_catalog.pg_has_role(registered_by::pg_catalog.oid, sig.proowner, 'USAGE'))"
		" END" :
		"fn::pg_catalog.oid";
}

/*
 * After pg_upgrade, the registry's OIDs are the old cluster's: resolve
 * every signature again before a change compares OIDs (a no-op once
 * done).  Returns whether it was done now.
 */
static bool
adopt_registrations(void)
{
	bool		isnull;

	if (!fn_is_signature())
		return false;
	journal_execute("SELECT apiary.adopt_registrations()", NULL, 0, NULL, NULL,
					NULL, SPI_OK_SELECT);
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

Datum
apiary_system_identifier(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64((int64) GetSystemIdentifier());
}

/* ---------------------------------------------------------------------
 * Cache invalidation
 * ---------------------------------------------------------------------
 */

/*
 * Invalidations seen so far: one that arrives while an entry is built
 * (its catalog lookups accept them) finds it not yet in the cache, so
 * registry_acquire compares the count before and after.
 */
static uint64 registry_invalidations = 0;

static void
invalidate_matching(uint32 hashvalue, bool all)
{
	HASH_SEQ_STATUS seq;
	RegistryEntry *entry;

	registry_invalidations++;
	if (registry_cache == NULL)
		return;
	hash_seq_init(&seq, registry_cache);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		if (entry->f && (all || entry->f->proc_hash == hashvalue))
		{
			entry->f->valid = false;
			registry_invalidated = true;
		}
	}
}

static void
proc_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	invalidate_matching(hashvalue, hashvalue == 0);
}

/* A schema renamed: the qualified names in cached call statements change. */
static void
namespace_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	invalidate_matching(0, true);
}

static void
relation_changed(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == registry_relid)
	{
		invalidate_matching(0, true);
		registry_relid = InvalidOid;
		registry_fn_type = InvalidOid;
	}
}

void
registry_init(void)
{
	CacheRegisterSyscacheCallback(PROCOID, proc_changed, (Datum) 0);
	CacheRegisterSyscacheCallback(NAMESPACEOID, namespace_changed, (Datum) 0);
	CacheRegisterRelcacheCallback(relation_changed, (Datum) 0);
}

static void
free_function(ApiaryFunction *f)
{
	for (ApiaryCallPlan *p = f->plans; p != NULL; p = p->next)
		SPI_freeplan(p->plan);
	for (int i = 0; i < f->nargs; i++)
		if (f->params[i].convert != NULL)
			SPI_freeplan(f->params[i].convert);
	MemoryContextDelete(f->cxt);
}

/*
 * Free the entries invalidated since the last sweep that nobody uses.
 * An invalid entry is otherwise freed only when its name is looked up
 * again, and a function dropped (or a name unregistered) is not: an
 * executor, which runs for days, would keep every one it ever called.
 * Entries in use are freed by their last registry_release.
 */
static void
sweep_invalidated(void)
{
	HASH_SEQ_STATUS seq;
	RegistryEntry *entry;

	if (!registry_invalidated)
		return;
	registry_invalidated = false;
	hash_seq_init(&seq, registry_cache);
	while ((entry = hash_seq_search(&seq)) != NULL)
		if (!entry->f->valid && entry->f->refcount == 0)
		{
			free_function(entry->f);
			hash_search(registry_cache, entry->name, HASH_REMOVE, NULL);
		}
}

/* ---------------------------------------------------------------------
 * Checks shared by apiary_register and the declarative form
 * ---------------------------------------------------------------------
 */

static ApiaryKind
parse_kind(const char *name)
{
	ApiaryKind	kind;

	if (!apiary_kind_parse(name, &kind))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid apiary kind \"%s\"", name),
				 errhint("Valid kinds are " APIARY_KIND_NAMES ".")));
	return kind;
}

/* Is the type (or its element type) one session's? */
static bool
is_temp_type(Oid type)
{
	HeapTuple	tup;
	bool		temp = false;
	Oid			elem = get_element_type(type);

	if (OidIsValid(elem))
		type = elem;
	tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(type));
	if (HeapTupleIsValid(tup))
	{
		temp = isAnyTempNamespace(((Form_pg_type) GETSTRUCT(tup))->typnamespace);
		ReleaseSysCache(tup);
	}
	return temp;
}

/* May apiary call this type as a parameter (or return it)? */
static void
check_type(Oid fn, Oid type, bool is_result)
{
	if (IsPolymorphicType(type))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot register polymorphic function %s",
						format_procedure(fn)),
				 errhint("Wrap it in a function with concrete parameter and result types.")));
	/* a result may be void or a record; no argument can be either */
	if (get_typtype(type) == TYPTYPE_PSEUDO &&
		!(is_result && (type == VOIDOID || type == RECORDOID)))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot register function %s", format_procedure(fn)),
				 errdetail(is_result ? "It returns pseudo-type %s." :
						   "It takes an argument of pseudo-type %s.",
						   format_type_be(type))));
	if (is_temp_type(type))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot register function %s", format_procedure(fn)),
				 errdetail("It uses temporary type %s: registrations belong to the database, and tasks run in sessions of their own.",
						   format_type_be(type))));
}

/*
 * Can apiary call this function?  Plain functions only, with types that JSON
 * can reach.  Returns the function's name and owner.
 */
static void
check_callable(Oid fn, char **proname, Oid *owner)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	Form_pg_proc proc;
	bool		has_out;

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", fn)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	if (proc->prokind != PROKIND_FUNCTION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("%s is not a function", format_procedure(fn)),
				 errdetail("apiary runs plain functions, not procedures, aggregates or window functions.")));
	/* registrations are the database's; a temporary function, one session's */
	if (isAnyTempNamespace(proc->pronamespace))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot register temporary function \"%s\"", NameStr(proc->proname)),
				 errdetail("Registrations belong to the database, and tasks run in sessions of their own.")));
	for (int i = 0; i < proc->pronargs; i++)
		check_type(fn, proc->proargtypes.values[i], false);
	check_type(fn, proc->prorettype, true);
	has_out = !heap_attisnull(tup, Anum_pg_proc_proallargtypes, NULL);
	if (proc->prorettype == RECORDOID && !has_out)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot register function %s", format_procedure(fn)),
				 errdetail("It returns record without OUT parameters, so its columns are unknown."),
				 errhint("Declare OUT parameters or RETURNS TABLE.")));
	*proname = pstrdup(NameStr(proc->proname));
	*owner = proc->proowner;
	ReleaseSysCache(tup);
}

/* ---------------------------------------------------------------------
 * Lookup
 * ---------------------------------------------------------------------
 */

/* Raise "does not exist" for name, with the most useful hint there is. */
static void
report_not_found(const char *name)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	char	   *hint = NULL;
	int			rc;

	/* no registered name is empty (apiary.functions checks) */
	if (name[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apiary function name must not be empty")));

	/* a function of that name that was never registered? */
	rc = journal_execute(psprintf("SELECT p.oid,"
									" (SELECT pg_catalog.substr(c, 13) FROM pg_catalog.unnest(p.proconfig) c"
									"  WHERE pg_catalog.starts_with(c, 'apiary.kind=')"
									"  AND pg_catalog.length(c) OPERATOR(pg_catalog.>) 12),"
									" (SELECT name FROM apiary.functions"
									"  WHERE %s OPERATOR(pg_catalog.=) p.oid)"
									" FROM pg_catalog.pg_proc p"
									" WHERE p.proname OPERATOR(pg_catalog.=) $1::pg_catalog.name"
									" AND p.prokind OPERATOR(pg_catalog.=) 'f'"
									" ORDER BY 1 LIMIT 1", fn_lookup_sql()),
						 NULL, 1, argtypes, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 1)
	{
		bool		isnull;
		/* named as the caller's search_path shows it, not the journal's */
		char	   *sig = format_procedure(DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
																		   SPI_tuptable->tupdesc,
																		   1, &isnull)));
		char	   *declared = SPI_getvalue(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 2);
		char	   *registered_as = SPI_getvalue(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 3);

		if (registered_as != NULL)
			hint = psprintf("Function %s is registered as \"%s\".", sig, registered_as);
		/* declared while apiary was not installed, or unregistered since */
		else if (declared != NULL)
			hint = psprintf("Function %s declares SET apiary.kind = '%s' but is not registered: "
							"ALTER FUNCTION %s SET apiary.kind = '%s' registers it.",
							sig, declared, sig, declared);
		else
			hint = psprintf("Function %s exists but is not registered with apiary: "
							"register it with apiary_register('%s'), or add "
							"SET apiary.kind = 'transactional' to its definition.",
							sig, sig);
	}

	/* else a registered name that is close */
	if (hint == NULL)
		rc = SPI_execute_with_args("SELECT name FROM apiary.functions ORDER BY name",
								   0, NULL, NULL, NULL, true, 0);
	if (hint == NULL && rc == SPI_OK_SELECT && SPI_processed > 0)
	{
		int			n = (int) SPI_processed;
		const char **candidates = palloc(n * sizeof(char *));
		int			nearest[3];
		int			found;

		for (int i = 0; i < n; i++)
			candidates[i] = SPI_getvalue(SPI_tuptable->vals[i],
										 SPI_tuptable->tupdesc, 1);
		found = names_nearest(name, strlen(name), candidates, n, nearest, 3);
		if (found > 0)
		{
			StringInfoData buf;

			initStringInfo(&buf);
			for (int i = 0; i < found; i++)
				appendStringInfo(&buf, "%s\"%s\"",
								 i == 0 ? "" : (i == found - 1 ? " or " : ", "),
								 candidates[nearest[i]]);
			hint = psprintf("Perhaps you meant %s.", buf.data);
		}
	}

	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_FUNCTION),
			 errmsg("apiary function \"%s\" does not exist", name),
			 hint ? errhint("%s", hint) : 0));
}

static ParamConversion
conversion_for(Oid type)
{
	Oid			base;

	if (type == JSONBOID)
		return PARAM_JSONB;
	if (type == JSONOID)
		return PARAM_JSON;
	base = getBaseType(type);
	/* a domain over either: the JSON text, through the domain's input */
	if (base == JSONBOID || base == JSONOID)
		return PARAM_JSON;
	if (type_is_array(base) || get_typtype(base) == TYPTYPE_COMPOSITE)
		return PARAM_STRUCTURED;
	return PARAM_SCALAR;
}

/* Read a registration and its function's signature into a new cache entry. */
static ApiaryFunction *
build_function(const char *name)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	char	   *sql;
	MemoryContext cxt;
	MemoryContext old;
	ApiaryFunction *f;
	HeapTuple	tup;
	Form_pg_proc proc;
	Oid		   *types;
	char	  **names;
	char	   *modes;
	int			nall;
	bool		isnull;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/*
	 * With a snapshot of now, as the function's own catalog rows are read:
	 * an entry built from a REPEATABLE READ snapshot would outlive its
	 * transaction, and the invalidation that made it stale is already seen.
	 * A parallel operation can take no new snapshot: its entry is built
	 * from the transaction's, for this use only (registry_acquire).
	 */
	sql = psprintf("SELECT %s, kind, max_attempts,"
				   " (pg_catalog.date_part('epoch', timeout)"
				   "  OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8, fn"
				   " FROM apiary.functions WHERE name OPERATOR(pg_catalog.=) $1",
				   fn_lookup_sql());
	if (IsInParallelMode())
		journal_execute(sql, NULL, 1, argtypes, values, NULL, SPI_OK_SELECT);
	else
		journal_execute_latest(sql, 1, argtypes, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		report_not_found(name);

	/* a child of the caller's context until complete, so errors free it */
	cxt = AllocSetContextCreate(CurrentMemoryContext, "apiary function",
								ALLOCSET_SMALL_SIZES);
	MemoryContextCopyAndSetIdentifier(cxt, name);
	old = MemoryContextSwitchTo(cxt);

	f = palloc0(sizeof(ApiaryFunction));
	f->cxt = cxt;
	strlcpy(f->name, name, NAMEDATALEN);
	f->fn = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
	if (isnull)
		f->fn = InvalidOid;
	f->kind = parse_kind(SPI_getvalue(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 2));
	f->max_attempts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
												  SPI_tuptable->tupdesc, 3, &isnull));
	if (isnull)
		f->max_attempts = 0;
	f->timeout_ms = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												SPI_tuptable->tupdesc, 4, &isnull));
	if (isnull)
		f->timeout_ms = 0;
	f->proc_hash = GetSysCacheHashValue1(PROCOID, ObjectIdGetDatum(f->fn));

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(f->fn));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("the function registered as \"%s\" no longer exists", name),
				 errdetail("It was registered as %s.",
						   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5)),
				 errhint("Register the function under this name again with apiary_register(..., name => '%s'), or remove the registration with apiary_unregister('%s').",
						 name, name)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	f->namespace = proc->pronamespace;
	f->owner = proc->proowner;
	f->qualified_name = quote_qualified_identifier(get_namespace_name(proc->pronamespace),
												   NameStr(proc->proname));
	f->signature = format_procedure(f->fn);
	f->ndefaults = proc->pronargdefaults;
	f->variadic = OidIsValid(proc->provariadic);
	f->retset = proc->proretset;
	f->returns_void = proc->prorettype == VOIDOID;
	f->rettype = proc->prorettype;

	nall = get_func_arg_info(tup, &types, &names, &modes);
	f->params = palloc0(nall * sizeof(ApiaryParam));
	f->param_names = palloc0(nall * sizeof(char *));
	for (int i = 0; i < nall; i++)
	{
		char		mode = modes ? modes[i] : PROARGMODE_IN;
		ApiaryParam *p;

		if (mode == PROARGMODE_OUT || mode == PROARGMODE_TABLE)
			continue;
		p = &f->params[f->nargs];
		p->name = (names && names[i][0] != '\0') ? names[i] : NULL;
		p->type = types[i];
		p->conversion = conversion_for(p->type);
		if (IsPolymorphicType(p->type))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot call polymorphic function %s", f->signature)));
		if (p->conversion == PARAM_SCALAR || p->conversion == PARAM_JSON)
		{
			Oid			input;

			getTypeInputInfo(p->type, &input, &p->ioparam);
			fmgr_info_cxt(input, &p->input, cxt);
		}
		f->param_names[f->nargs] = p->name;
		f->nargs++;
	}
	ReleaseSysCache(tup);

	f->valid = true;
	MemoryContextSwitchTo(old);
	MemoryContextSetParent(cxt, CacheMemoryContext);
	SPI_finish();
	return f;
}

ApiaryFunction *
registry_acquire(const char *name)
{
	RegistryEntry *entry;
	ApiaryFunction *f;
	ApiaryFunction *old;
	bool		found;
	uint64		invalidations;

	if (registry_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(RegistryEntry);
		ctl.hcxt = CacheMemoryContext;
		registry_cache = hash_create("apiary registry", 64, &ctl,
									 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}

	if (strlen(name) >= NAMEDATALEN)
	{
		/* no registered name is that long (apiary.functions checks) */
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("apiary function \"%s...\" does not exist",
						pnstrdup(name, pg_mbcliplen(name, strlen(name), NAMEDATALEN - 1))),
				 errdetail("Registered names are at most %d bytes; this one has %zu.",
						   NAMEDATALEN - 1, strlen(name))));
	}

	sweep_invalidated();
	entry = hash_search(registry_cache, name, HASH_FIND, NULL);
	if (entry != NULL && entry->f->valid)
	{
		entry->f->refcount++;
		return entry->f;
	}

	/* Build first: if that fails, the cache is left as it was. */
	invalidations = registry_invalidations;
	f = build_function(name);
	/*
	 * What it read may be older than a change seen meanwhile, or than one
	 * committed since the transaction began (parallel mode): this use only.
	 */
	if (registry_invalidations != invalidations || IsInParallelMode())
	{
		f->valid = false;
		registry_invalidated = true;
	}

	entry = hash_search(registry_cache, name, HASH_ENTER, &found);
	old = found ? entry->f : NULL;
	entry->f = f;
	if (old != NULL && old->refcount == 0)
		free_function(old);
	else if (old != NULL)
		old->valid = false;		/* freed by its last registry_release */

	f->refcount++;
	return f;
}

void
registry_release(ApiaryFunction *f)
{
	RegistryEntry *entry;

	Assert(f->refcount > 0);
	if (--f->refcount > 0 || f->valid)
		return;
	entry = hash_search(registry_cache, f->name, HASH_FIND, NULL);
	if (entry != NULL && entry->f == f)
		hash_search(registry_cache, f->name, HASH_REMOVE, NULL);
	free_function(f);
}

/* ---------------------------------------------------------------------
 * Writing registrations
 * ---------------------------------------------------------------------
 */

/*
 * Registrations are made one at a time: each reads the registry, decides
 * and writes, and one committed in between would be missed (a name taken
 * twice, a declaration written over an apiary_register, a registration
 * outliving a concurrent DROP FUNCTION).  Calls, which only read it, are
 * not held up.
 */
static void
lock_registry(void)
{
	LockRelationOid(get_relname_relid("functions", get_namespace_oid("apiary", false)),
					ShareRowExclusiveLock);
}

/*
 * Insert or update the registration of fn under name, as the journal's
 * owner.  A name held by another function, or a function registered under
 * another name, is an error.
 */
static void
store_registration(Oid fn, const char *name, ApiaryKind kind,
				   Datum max_attempts, bool max_attempts_null,
				   Datum timeout, bool timeout_null,
				   bool declared, Oid registered_by)
{
	Oid			lookup_types[2] = {OIDOID, TEXTOID};
	Datum		lookup_values[2] = {ObjectIdGetDatum(fn), CStringGetTextDatum(name)};
	Oid			types[8] = {TEXTOID, TEXTOID, TEXTOID, INT4OID, INTERVALOID, BOOLOID, OIDOID, OIDOID};
	Datum		values[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	const char *oid_sql;

	/*
	 * The function first, as a DROP FUNCTION takes it before the registry:
	 * one that was dropped since it was looked up is gone now.
	 */
	LockDatabaseObject(ProcedureRelationId, fn, 0, AccessShareLock);
	if (!SearchSysCacheExists1(PROCOID, ObjectIdGetDatum(fn)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function to register no longer exists"),
				 errdetail("It was dropped while the registration waited for it.")));
	lock_registry();
	adopt_registrations();
	/* and signatures left behind by a rename that raced a registration */
	if (fn_is_signature())
		journal_execute("SELECT apiary.refresh_signatures()", NULL, 0, NULL, NULL,
						NULL, SPI_OK_SELECT);
	oid_sql = fn_oid_sql();
	/*
	 * A registration under this name whose function is not in this
	 * cluster (its signature named nothing after pg_upgrade) gives way.
	 */
	if (fn_is_signature())
		journal_execute("DELETE FROM apiary.functions"
						" WHERE name OPERATOR(pg_catalog.=) $1 AND fn_oid IS NULL",
						NULL, 1, &lookup_types[1], &lookup_values[1], NULL, SPI_OK_DELETE);
	journal_execute(psprintf("SELECT name, %s, fn::pg_catalog.text,"
							 " COALESCE(%s OPERATOR(pg_catalog.=) $1, false)"
							 " FROM apiary.functions"
							 " WHERE %s OPERATOR(pg_catalog.=) $1 OR name OPERATOR(pg_catalog.=) $2",
							 oid_sql, oid_sql, oid_sql),
					NULL, 2, lookup_types, lookup_values, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *other_name = SPI_getvalue(row, desc, 1);
		Oid			other_oid = DatumGetObjectId(SPI_getbinval(row, desc, 2, &isnull));
		char	   *other_fn = isnull ? SPI_getvalue(row, desc, 3) : format_procedure(other_oid);
		bool		same_fn = DatumGetBool(SPI_getbinval(row, desc, 4, &isnull));

		if (same_fn && strcmp(other_name, name) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("function %s is already registered as \"%s\"",
							format_procedure(fn), other_name),
					 errhint("Unregister it with apiary_unregister('%s') first.",
							 other_name)));
		if (!same_fn)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_FUNCTION),
					 errmsg("apiary function \"%s\" is already registered for %s",
							name, other_fn),
					 errhint("Register this function under another name with apiary_register(..., name => '...'), or unregister the other one first.")));
	}

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(signature_of(fn));
	values[2] = CStringGetTextDatum(apiary_kind_name(kind));
	values[3] = max_attempts;
	nulls[3] = max_attempts_null ? 'n' : ' ';
	values[4] = timeout;
	nulls[4] = timeout_null ? 'n' : ' ';
	values[5] = BoolGetDatum(declared);
	values[6] = ObjectIdGetDatum(registered_by);
	values[7] = ObjectIdGetDatum(fn);

	journal_execute(psprintf("INSERT INTO apiary.functions AS f"
							 " (name, fn, kind, max_attempts, timeout, declared, registered_by%s)"
							 " VALUES ($1, $2%s, $3, $4, $5, $6, $7::pg_catalog.regrole%s)"
							 " ON CONFLICT (name) DO UPDATE SET kind = excluded.kind,"
							 " max_attempts = excluded.max_attempts, timeout = excluded.timeout,"
							 " declared = excluded.declared, registered_by = excluded.registered_by,"
							 " registered_at = pg_catalog.now()"
							 " WHERE f.%s OPERATOR(pg_catalog.=) excluded.%s",
							 fn_is_signature() ? ", fn_oid" : "",
							 fn_is_signature() ? "" : "::pg_catalog.regprocedure",
							 fn_is_signature() ? ", $8" : "",
							 oid_sql, oid_sql),
					NULL, fn_is_signature() ? 8 : 7, types, values, nulls, SPI_OK_INSERT);
}

/* May name be an apiary function's name? */
static void
check_name(const char *name)
{
	if (name[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apiary function name must not be empty")));
	if (names_has_control(name, GetDatabaseEncoding() == PG_UTF8))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apiary function name must not contain control characters"),
				 errdetail("Names appear in logs, in pg_stat_activity and in workflow graphs.")));
	if (strcmp(name, APIARY_STATS_OTHER) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apiary function name \"%s\" is reserved", name),
				 errdetail("apiary.stats names its row for the functions beyond apiary.stats_max so.")));
	if (strlen(name) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("apiary function name is too long"),
				 errdetail("Names are at most %d bytes; this one has %zu.",
						   NAMEDATALEN - 1, strlen(name))));
}

Datum
apiary_register(PG_FUNCTION_ARGS)
{
	Oid			fn;
	ApiaryKind	kind;
	char	   *proname;
	Oid			owner;
	char	   *name;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("function to register must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("kind must not be null"),
				 errhint("Valid kinds are " APIARY_KIND_NAMES ".")));
	/* (on a standby too: its transactions are read-only) */
	PreventCommandIfReadOnly("apiary_register()");
	fn = PG_GETARG_OID(0);
	kind = parse_kind(text_to_cstring(PG_GETARG_TEXT_PP(1)));

	check_callable(fn, &proname, &owner);
	if (!pg_proc_ownercheck(fn, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_FUNCTION, format_procedure(fn));

	name = PG_ARGISNULL(2) ? proname : text_to_cstring(PG_GETARG_TEXT_PP(2));
	check_name(name);
	if (!PG_ARGISNULL(3) && PG_GETARG_INT32(3) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_attempts must be at least 1")));
	if (!PG_ARGISNULL(4))
	{
		/* timeouts are kept to the millisecond, and timed as statement_timeout */
		Interval	one_ms = {.time = 1000};
		Interval	max_ms = {.time = INT64CONST(1000) * INT_MAX};

		if (DatumGetInt32(DirectFunctionCall2(interval_cmp, PG_GETARG_DATUM(4),
											  IntervalPGetDatum(&one_ms))) < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("timeout must be at least 1 millisecond")));
		if (DatumGetInt32(DirectFunctionCall2(interval_cmp, PG_GETARG_DATUM(4),
											  IntervalPGetDatum(&max_ms))) > 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("timeout must be at most %d milliseconds", INT_MAX),
					 errhint("That is about 24 days, the longest statement_timeout too; register the function without a timeout to let it run longer.")));
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	store_registration(fn, name, kind,
					   PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3), PG_ARGISNULL(3),
					   PG_ARGISNULL(4) ? (Datum) 0 : PG_GETARG_DATUM(4), PG_ARGISNULL(4),
					   false, GetUserId());
	SPI_finish();

	PG_RETURN_TEXT_P(cstring_to_text(name));
}

Datum
apiary_unregister(PG_FUNCTION_ARGS)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	char	   *name;
	bool		isnull;
	Oid			fn;
	Oid			registered_by;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("function name must not be null")));
	PreventCommandIfReadOnly("apiary_unregister()");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	values[0] = PG_GETARG_DATUM(0);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* what the check below finds is what the delete deletes */
	lock_registry();
	journal_execute(psprintf("SELECT %s, registered_by::pg_catalog.oid"
							 " FROM apiary.functions WHERE name OPERATOR(pg_catalog.=) $1",
							 fn_lookup_sql()),
					NULL, 1, argtypes, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		report_not_found(name);
	fn = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (isnull)
		fn = InvalidOid;
	registered_by = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));

	/* The function's owner may; so may its registrant once it is gone. */
	if (SearchSysCacheExists1(PROCOID, ObjectIdGetDatum(fn))
		? !pg_proc_ownercheck(fn, GetUserId())
		: !has_privs_of_role(GetUserId(), registered_by))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_FUNCTION, name);

	journal_execute("DELETE FROM apiary.functions WHERE name OPERATOR(pg_catalog.=) $1",
					NULL, 1, argtypes, values, NULL, SPI_OK_DELETE);
	SPI_finish();

	PG_RETURN_VOID();
}

/* Statement trigger on apiary.functions: every backend drops its cache. */
Datum
apiary_registry_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" was not called by trigger manager",
						"apiary.registry_changed")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	PG_RETURN_POINTER(NULL);
}

/* ---------------------------------------------------------------------
 * Declarative registration (event triggers)
 * ---------------------------------------------------------------------
 */

/* The value of "SET apiary.kind" in a function's definition, or NULL. */
static char *
declared_kind(HeapTuple proctup)
{
	bool		isnull;
	Datum		config = SysCacheGetAttr(PROCOID, proctup,
										 Anum_pg_proc_proconfig, &isnull);
	Datum	   *items;
	bool	   *nulls;
	int			n;
	char	   *kind = NULL;

	if (isnull)
		return NULL;
	deconstruct_array(DatumGetArrayTypeP(config), TEXTOID, -1, false,
					  TYPALIGN_INT, &items, &nulls, &n);
	for (int i = 0; i < n; i++)
	{
		char	   *item = TextDatumGetCString(items[i]);

		if (strncmp(item, KIND_SETTING, strlen(KIND_SETTING)) == 0)
			kind = item + strlen(KIND_SETTING);
	}
	return kind;
}

static void
sync_declared(Oid fn)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	char	   *kind_name;

	if (!HeapTupleIsValid(tup))
		return;
	kind_name = declared_kind(tup);
	ReleaseSysCache(tup);

	/*
	 * An empty kind declares nothing, as RESET would; said, not refused:
	 * an error here would refuse every later ALTER of such a function.
	 */
	if (kind_name != NULL && kind_name[0] == '\0')
	{
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("SET apiary.kind = '' registers nothing: function %s is not registered by it",
						format_procedure(fn)),
				 errhint("Give it a kind (valid kinds are " APIARY_KIND_NAMES "), or ALTER FUNCTION ... RESET apiary.kind.")));
		kind_name = NULL;
	}

	if (kind_name != NULL)
	{
		ApiaryKind	kind = parse_kind(kind_name);
		Oid			argtypes[1] = {OIDOID};
		Datum		values[1] = {ObjectIdGetDatum(fn)};
		char	   *proname;
		char	   *name;
		Oid			owner;
		int			rc;

		check_callable(fn, &proname, &owner);

		/*
		 * An existing registration keeps its name.  One made with
		 * apiary_register is the user's word and stays as it is: the clause
		 * only says so when the two disagree.
		 */
		lock_registry();
		adopt_registrations();
		rc = SPI_execute_with_args(psprintf("SELECT name, declared, kind FROM apiary.functions"
											" WHERE %s OPERATOR(pg_catalog.=) $1", fn_oid_sql()),
								   1, argtypes, values, NULL, false, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(rc));
		if (SPI_processed == 1)
		{
			HeapTuple	row = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			bool		declared = DatumGetBool(SPI_getbinval(row, desc, 2, &isnull));
			char	   *registered_kind = SPI_getvalue(row, desc, 3);

			name = SPI_getvalue(row, desc, 1);
			if (!declared && strcmp(registered_kind, kind_name) != 0)
				ereport(WARNING,
						(errmsg("apiary function \"%s\" stays %s, as registered with apiary_register",
								name, registered_kind),
						 errdetail("Its SET apiary.kind = '%s' has no effect on a function registered with apiary_register.",
								   kind_name),
						 errhint("Change the kind with apiary_register('%s', '%s').",
								 format_procedure(fn), kind_name)));
			if (!declared)
				return;
		}
		else
		{
			name = proname;
			check_name(name);
		}
		store_registration(fn, name, kind, (Datum) 0, true, (Datum) 0, true,
						   true, owner);
	}
	else
	{
		Oid			argtypes[1] = {OIDOID};
		Datum		values[1] = {ObjectIdGetDatum(fn)};

		/*
		 * Looked for first: a DELETE would wait for any registration in
		 * progress, and invalidate every session's registry, on every
		 * CREATE FUNCTION in the database.
		 */
		adopt_registrations();
		journal_execute(psprintf("SELECT FROM apiary.functions"
								 " WHERE %s OPERATOR(pg_catalog.=) $1 AND declared", fn_oid_sql()),
						NULL, 1, argtypes, values, NULL, SPI_OK_SELECT);
		if (SPI_processed > 0)
			journal_execute(psprintf("DELETE FROM apiary.functions"
									 " WHERE %s OPERATOR(pg_catalog.=) $1 AND declared", fn_oid_sql()),
							NULL, 1, argtypes, values, NULL, SPI_OK_DELETE);
	}
}

/*
 * With check_function_bodies off, as in a restore, a declaration apiary
 * cannot act on (a name taken, a procedure) is a warning: the function is
 * created or altered all the same, and a restore then copies the
 * registrations.
 */
static void
sync_declared_leniently(Oid fn)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		sync_declared(fn);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		/* what a declaration can get wrong; a cancel or a timeout stays one */
		if (edata->sqlerrcode != ERRCODE_DUPLICATE_FUNCTION &&
			edata->sqlerrcode != ERRCODE_DUPLICATE_OBJECT &&
			edata->sqlerrcode != ERRCODE_WRONG_OBJECT_TYPE &&
			edata->sqlerrcode != ERRCODE_FEATURE_NOT_SUPPORTED &&
			edata->sqlerrcode != ERRCODE_INVALID_PARAMETER_VALUE)
			ReThrowError(edata);
		edata->elevel = WARNING;
		edata->hint = pstrdup("check_function_bodies is off, as in a restore: the declaration is not acted on.");
		ThrowErrorData(edata);
	}
	PG_END_TRY();
}

/*
 * Should the registry's event triggers act?  Not before apiary's tables
 * exist, nor on apiary's own install and update scripts, which change no
 * registration.
 */
static bool
registry_watches(void)
{
	return OidIsValid(get_namespace_oid("apiary", true)) &&
		!(creating_extension &&
		  CurrentExtensionObject == get_extension_oid("apiary", true));
}

static void
check_event_trigger(FunctionCallInfo fcinfo, const char *name)
{
	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" was not called by event trigger manager",
						name)));
}

/* Can the statement change a function's signature? */
static bool
may_rename_signature(Node *stmt)
{
	if (IsA(stmt, AlterObjectSchemaStmt))
		return true;
	if (!IsA(stmt, RenameStmt))
		return false;
	/* a rename of the function, of its schema or of a type (not a column) */
	switch (((RenameStmt *) stmt)->renameType)
	{
		case OBJECT_FUNCTION:
		case OBJECT_PROCEDURE:
		case OBJECT_ROUTINE:
		case OBJECT_SCHEMA:
		case OBJECT_TYPE:
		case OBJECT_DOMAIN:
		case OBJECT_TABLE:
		case OBJECT_VIEW:
		case OBJECT_MATVIEW:
		case OBJECT_FOREIGN_TABLE:
		case OBJECT_SEQUENCE:
		case OBJECT_INDEX:		/* ALTER INDEX renames tables too */
			return true;
		default:
			return false;
	}
}

static void sync_declarations(void);

Datum
apiary_on_ddl_command_end(PG_FUNCTION_ARGS)
{
	CommandTag	tag;
	bool		declares;
	bool		renames;

	check_event_trigger(fcinfo, "apiary.on_ddl_command_end");
	tag = ((EventTriggerData *) fcinfo->context)->tag;
	declares = tag == CMDTAG_CREATE_FUNCTION || tag == CMDTAG_ALTER_FUNCTION ||
		tag == CMDTAG_CREATE_PROCEDURE || tag == CMDTAG_ALTER_PROCEDURE ||
		tag == CMDTAG_ALTER_ROUTINE;
	renames = may_rename_signature(((EventTriggerData *) fcinfo->context)->parsetree);
	/* most ALTERs rename nothing and declare nothing */
	if ((!declares && !renames) || !registry_watches())
		PG_RETURN_VOID();

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (declares)
		sync_declarations();
	/*
	 * After the declarations: a registration of the renamed function made
	 * meanwhile by another session holds the registry, and they wait for
	 * it; then this sees it, and its signature from before the rename.
	 */
	if (renames && fn_is_signature())
		journal_execute("SELECT apiary.refresh_signatures()", NULL, 0, NULL, NULL,
						NULL, SPI_OK_SELECT);
	SPI_finish();
	PG_RETURN_VOID();
}

/* CREATE or ALTER FUNCTION: register, update or unregister what it declares. */
static void
sync_declarations(void)
{
	Oid		   *fns;
	int			nfns;
	int			rc;

	rc = SPI_execute("SELECT DISTINCT objid FROM pg_catalog.pg_event_trigger_ddl_commands()"
					 " WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass",
					 false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(rc));

	/* copy out: sync_declared runs statements of its own */
	nfns = (int) SPI_processed;
	fns = palloc(Max(nfns, 1) * sizeof(Oid));
	for (int i = 0; i < nfns; i++)
	{
		bool		isnull;

		fns[i] = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
												SPI_tuptable->tupdesc, 1, &isnull));
	}
	for (int i = 0; i < nfns; i++)
	{
		if (check_function_bodies)
			sync_declared(fns[i]);
		else
			sync_declared_leniently(fns[i]);
	}
}

Datum
apiary_on_sql_drop(PG_FUNCTION_ARGS)
{
	check_event_trigger(fcinfo, "apiary.on_sql_drop");
	/* (after DROP EXTENSION apiary, nothing is left to clean) */
	if (!registry_watches())
		PG_RETURN_VOID();

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/*
	 * Only a drop that took functions with it touches apiary.functions: a
	 * registration that has not committed yet locks that table, and must
	 * hold up no other DROP.
	 */
	if (SPI_execute("SELECT FROM pg_catalog.pg_event_trigger_dropped_objects()"
					" WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass"
					" LIMIT 1", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed");
	if (SPI_processed > 0)
	{
		/*
		 * Before adoption (pg_upgrade), the signatures say which
		 * registrations were of the functions just dropped: adoption, which
		 * finds no function for them, comes after.
		 */
		if (fn_is_signature())
			journal_execute("DELETE FROM apiary.functions"
							" WHERE (SELECT system_identifier FROM apiary.registry_cluster)"
							" OPERATOR(pg_catalog.<>) apiary.system_identifier()"
							" AND fn OPERATOR(pg_catalog.=) ANY (ARRAY("
							"  SELECT object_identity FROM pg_catalog.pg_event_trigger_dropped_objects()"
							"  WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass))",
							NULL, 0, NULL, NULL, NULL, SPI_OK_DELETE);
		adopt_registrations();

		/*
		 * With a snapshot of now: under REPEATABLE READ, the drop's own
		 * would miss a registration committed since it was taken.
		 */
		journal_execute_latest(psprintf("DELETE FROM apiary.functions"
										" WHERE %s OPERATOR(pg_catalog.=) ANY (ARRAY("
										"  SELECT objid FROM pg_catalog.pg_event_trigger_dropped_objects()"
										"  WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass))",
										fn_oid_sql()),
							   0, NULL, NULL, NULL, SPI_OK_DELETE);
	}
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * Before a statement that may rename what a signature names: the
 * signatures must be resolved while they still name what they named
 * (after pg_upgrade, before adoption, a rename would move them).  Called
 * by the ddl_command_start event trigger (launcher.c).
 */
void
registry_before_ddl(Node *stmt)
{
	if (!may_rename_signature(stmt) || !registry_watches())
		return;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	adopt_registrations();
	SPI_finish();
}

/*
 * The launcher's upkeep of the registry, once a minute: after pg_upgrade,
 * resolve the registrations in the new cluster; and bring the signatures
 * up to date with renames the event trigger did not see (made while
 * event triggers were off, or by a transaction that raced a registration).
 * Returns whether it resolved them now: the cluster was just upgraded.
 */
bool
registry_upkeep(void)
{
	bool		adopted = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (OidIsValid(get_namespace_oid("apiary", true)) && fn_is_signature())
	{
		/*
		 * Not held up for long by a session that holds the registry, and
		 * gone well before deadlock_timeout: a DROP EXTENSION waiting
		 * behind this would otherwise be the one to fail (40P01).
		 */
		(void) set_config_option("lock_timeout", "100", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
		adopted = adopt_registrations();
		journal_execute("SELECT apiary.refresh_signatures()", NULL, 0, NULL, NULL,
						NULL, SPI_OK_SELECT);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return adopted;
}

/*
 * A worker the launcher starts in each other database once the cluster has
 * been upgraded (it found its own registry another cluster's): resolve the
 * registrations there too, where no launcher runs.  main_arg is the
 * database's OID.
 */
void
apiary_registry_worker_main(Datum main_arg)
{
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(main_arg), InvalidOid, 0);
	pgstat_report_appname("apiary registry");
	apiary_housekeeping_session();

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (OidIsValid(get_namespace_oid("apiary", true)) && adopt_registrations())
		ereport(LOG,
				(errmsg("apiary resolved the registrations of database \"%s\" in this cluster",
						get_database_name(MyDatabaseId))));
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	proc_exit(0);
}
