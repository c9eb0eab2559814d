/*-------------------------------------------------------------------------
 *
 * apiary_paper.c
 *	  The hot paths of the paper benchmark's workloads, in C against
 *	  apiary's public header.
 *
 * paper_increment(id) is the write microbenchmark: read and increment one
 * counter, through a kept SPI plan.  paper_timeline(uid) is the root task
 * of a retwis timeline: it queues one retwis_posts_of task per followee
 * (apiary_queue_jsonb) and a retwis_merge task that takes their futures as
 * arguments, and returns the merge's future, so the workflow's output is
 * the merged timeline.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type_d.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "apiary.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(paper_increment);
PG_FUNCTION_INFO_V1(paper_timeline);

/* retwis_merge's parameters: p1 .. p16 */
#define MAX_FOLLOWEES 16

static SPIPlanPtr increment_plan;
static SPIPlanPtr followees_plan;

/* Plan once per backend; SPI_keepplan moves it out of the SPI context. */
static SPIPlanPtr
kept_plan(SPIPlanPtr *slot, const char *sql)
{
	if (*slot == NULL)
	{
		Oid			argtypes[1] = {INT4OID};
		SPIPlanPtr	plan = SPI_prepare(sql, 1, argtypes);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		*slot = plan;
	}
	return *slot;
}

static Jsonb *
cstring_jsonb(const char *json)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
}

Datum
paper_increment(PG_FUNCTION_ARGS)
{
	Datum		args[1] = {PG_GETARG_DATUM(0)};
	bool		isnull;
	int64		n;

	SPI_connect();
	if (SPI_execute_plan(kept_plan(&increment_plan,
								   "UPDATE counters SET n = n + 1 WHERE id = $1 RETURNING n"),
						 args, NULL, false, 1) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "increment failed");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("counter %d does not exist", PG_GETARG_INT32(0))));
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									1, &isnull));
	SPI_finish();
	PG_RETURN_INT64(n);
}

Datum
paper_timeline(PG_FUNCTION_ARGS)
{
	Datum		args[1] = {PG_GETARG_DATUM(0)};
	int32		followees[MAX_FOLLOWEES];
	int			nfollowees;
	StringInfoData merge;
	int			i;

	SPI_connect();
	if (SPI_execute_plan(kept_plan(&followees_plan,
								   "SELECT followee FROM follows WHERE follower = $1 ORDER BY followee"),
						 args, NULL, true, MAX_FOLLOWEES + 1) != SPI_OK_SELECT)
		elog(ERROR, "reading followees failed");
	if (SPI_processed > MAX_FOLLOWEES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("user %d follows more than %d users", PG_GETARG_INT32(0),
						MAX_FOLLOWEES)));
	nfollowees = (int) SPI_processed;
	for (i = 0; i < nfollowees; i++)
	{
		bool		isnull;

		followees[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
												   SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();

	/* one read per followee, and the merge that waits for all of them */
	initStringInfo(&merge);
	appendStringInfoChar(&merge, '{');
	for (i = 0; i < nfollowees; i++)
	{
		Jsonb	   *future = apiary_queue_jsonb("retwis_posts_of",
												cstring_jsonb(psprintf("{\"author\": %d}", followees[i])));

		appendStringInfo(&merge, "%s\"p%d\": %s", i > 0 ? ", " : "", i + 1,
						 JsonbToCString(NULL, &future->root, VARSIZE(future)));
	}
	appendStringInfoChar(&merge, '}');
	PG_RETURN_JSONB_P(apiary_queue_jsonb("retwis_merge", cstring_jsonb(merge.data)));
}
