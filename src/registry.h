/*-------------------------------------------------------------------------
 *
 * registry.h
 *	  Registered functions: the apiary.functions table and a per-backend
 *	  cache of everything needed to call them.
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_REGISTRY_H
#define APIARY_REGISTRY_H

#include "fmgr.h"
#include "executor/spi.h"

#include "bindrules.h"
#include "guc.h"

/* How a JSON value becomes a value of a parameter's type. */
typedef enum ParamConversion
{
	PARAM_SCALAR,				/* JSON scalar through the type's input function */
	PARAM_JSONB,				/* passed as it is */
	PARAM_JSON,					/* the JSON text */
	PARAM_STRUCTURED,			/* arrays and composites: jsonb_to_record's rules */
} ParamConversion;

typedef struct ApiaryParam
{
	char	   *name;			/* NULL when unnamed */
	Oid			type;
	ParamConversion conversion;
	FmgrInfo	input;			/* PARAM_SCALAR, PARAM_JSON */
	Oid			ioparam;
	SPIPlanPtr	convert;		/* PARAM_STRUCTURED, once prepared */
} ApiaryParam;

/* A prepared call for one set of bound parameters. */
typedef struct ApiaryCallPlan
{
	struct ApiaryCallPlan *next;
	BindMask	mask;
	SPIPlanPtr	plan;
} ApiaryCallPlan;

typedef struct ApiaryFunction
{
	char		name[NAMEDATALEN];	/* registered name */
	Oid			fn;
	ApiaryKind	kind;
	int			max_attempts;	/* 0: apiary.max_attempts */
	int64		timeout_ms;		/* 0: none */

	/* from pg_proc */
	Oid			namespace;		/* its schema */
	Oid			owner;			/* its owner */
	char	   *qualified_name; /* schema.name, quoted, for SQL */
	char	   *signature;		/* regprocedure text, for messages */
	int			nargs;			/* input parameters */
	ApiaryParam *params;
	const char **param_names;	/* for the binding rules */
	int			ndefaults;
	bool		variadic;
	bool		retset;
	bool		returns_void;
	Oid			rettype;

	/* the direct call (bind_call), set up at its first use */
	int			direct;			/* 0: not yet looked at, 1: possible, -1: not */
	FmgrInfo	call;
	FmgrInfo	to_jsonb;		/* unless it returns jsonb or void */
	Oid			collation;		/* of its collatable parameters */

	ApiaryCallPlan *plans;
	MemoryContext cxt;			/* holds all of the above */
	uint32		proc_hash;		/* syscache hash of fn, to match invalidations */
	bool		valid;
	int			refcount;
} ApiaryFunction;

extern void registry_init(void);

/*
 * The launcher's upkeep of the registry (registry.c), in a transaction of
 * its own; true when it found the cluster just upgraded.
 */
extern bool registry_upkeep(void);

/* After an upgrade, a worker that resolves another database's registrations. */
extern PGDLLEXPORT void apiary_registry_worker_main(Datum main_arg);

/* Before a DDL statement: resolve the registrations first if it may rename. */
extern void registry_before_ddl(Node *stmt);

/*
 * Look up a registered function by name, pinned until registry_release;
 * raises "does not exist" with a hint when there is none.
 */
extern ApiaryFunction *registry_acquire(const char *name);
extern void registry_release(ApiaryFunction *f);

#endif							/* APIARY_REGISTRY_H */
