/*-------------------------------------------------------------------------
 *
 * provenance.c
 *	  Which rows apiary functions wrote and read, from the WAL
 *	  (apiary.provenance = off | writes | all).
 *
 * Writes are not recorded by the functions at all: they are already in
 * the WAL, and logical decoding reads them back.  What the WAL does not
 * say is which invocation made a change, so each invocation that wrote
 * adds one small transactional logical-decoding message (prefix "apiary")
 * when it returns: its role, workflow, task and function, and the WAL
 * position at which it began.  The changes of its transaction between
 * that position and the message are its own; a nested call's message
 * covers a narrower range inside its caller's, and the innermost range
 * wins.  Writes outside any range (the client's own statements around a
 * synchronous call, the executors' bookkeeping) are nobody's and are
 * dropped.  A message in a rolled-back (sub)transaction is discarded by
 * decoding together with the changes it would have claimed.  The cost on
 * the hot path is that one WAL record per writing invocation.
 *
 * With apiary.provenance = all the message also carries the rows the
 * invocation read: an ExecutorStart hook wraps the scan nodes of every
 * query run while an invocation is in progress, and each row a scan
 * returns (once per row and invocation, up to apiary.provenance_max_reads)
 * is kept as JSON until the message is written.  A read-only invocation
 * then needs a transaction id for its message, so reading costs a commit.
 *
 * The collector is a background worker (started by the launcher while
 * provenance is on) that keeps a logical replication slot,
 * apiary_provenance, whose output plugin is this library: it keeps one
 * decoding context open and decodes the WAL as it is flushed, once, in
 * its own process.  The plugin's callbacks turn the changes of a
 * committed transaction into rows, attribute them by the messages, and
 * hold them; the worker inserts them into apiary.provenance_rows, commits,
 * and only then confirms the slot past them, so a crash in between
 * decodes them again (the slot keeps the WAL) and the key
 * (begin_lsn, n) keeps them once.  Its own inserts carry the
 * "do not replicate" origin, which the plugin filters out before decoding
 * assembles them.  It runs at apiary.provenance_nice, yielding CPU to the
 * work it records.  Turning provenance off drops the slot, so that it
 * never holds WAL back.
 *
 * A row's image is kept only for a role that may read its table (a
 * SECURITY DEFINER function may touch rows its caller may not see).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "access/detoast.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogutils.h"
#include "catalog/catalog.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "common/file_perm.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/planner.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/decode.h"
#include "replication/logical.h"
#include "replication/message.h"
#include "replication/origin.h"
#include "replication/output_plugin.h"
#include "replication/slot.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/xid8.h"

#include "guc.h"
#include "journal.h"
#include "launcher.h"
#include "provenance.h"

#define MESSAGE_PREFIX "apiary"
#define MESSAGE_VERSION 2

/*
 * A message, as written to the WAL: this header, the function's name and
 * the workflow id (each with its terminating zero; "" for none), then
 * nreads times a ReadHeader and the row as jsonb, then the HMAC-SHA-256 of
 * all that under the cluster's provenance key.  Any role may write a
 * logical decoding message with our prefix (pg_logical_emit_message):
 * the collector trusts only those that carry the key's signature.
 */
#define MAC_LEN PG_SHA256_DIGEST_LENGTH
#define KEY_DIR APIARY_DATA_DIR
#define KEY_FILE KEY_DIR "/provenance.key"

typedef struct MessageHeader
{
	uint32		version;
	Oid			role;
	int64		task;			/* 0: a synchronous call outside a task */
	uint64		xid;			/* full id of the top transaction */
	XLogRecPtr	start;
	int32		nreads;
	bool		has_workflow;
} MessageHeader;

typedef struct ReadHeader
{
	Oid			relid;
	uint32		size;			/* of the jsonb that follows */
} ReadHeader;

static ProvenanceFrame *current = NULL;

/* ---------------------------------------------------------------------
 * Signing messages
 * ---------------------------------------------------------------------
 */

/* Make a new key and write it to KEY_FILE, durably. */
static bool
make_key(uint8 *key)
{
	const char *tmp = KEY_FILE ".tmp";
	int			fd;
	bool		ok;

	if (!pg_strong_random(key, MAC_LEN))
	{
		ereport(LOG, (errmsg("apiary provenance: could not generate a random key")));
		return false;
	}
	if (MakePGDirectory(KEY_DIR) != 0 && errno != EEXIST)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", KEY_DIR)));
		return false;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, pg_file_create_mode);
	if (fd < 0)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", tmp)));
		return false;
	}
	errno = 0;
	ok = write(fd, key, MAC_LEN) == MAC_LEN && pg_fsync(fd) == 0;
	if (!ok)
	{
		if (errno == 0)
			errno = ENOSPC;
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", tmp)));
	}
	close(fd);
	if (ok && durable_rename(tmp, KEY_FILE, LOG) == 0)
		return true;
	(void) unlink(tmp);
	return false;
}

bool
provenance_load_key(uint8 *key)
{
	int			fd = open(KEY_FILE, O_RDONLY | PG_BINARY, 0);
	bool		ok = false;

	if (fd >= 0)
	{
		ok = read(fd, key, MAC_LEN) == MAC_LEN;
		close(fd);
		if (!ok)
		{
			ereport(LOG,
					(errmsg("apiary provenance: file \"%s\" is damaged: making a new key", KEY_FILE),
					 errdetail("Provenance messages written under the old key are ignored.")));
			ok = make_key(key);
		}
	}
	else if (errno == ENOENT)
		ok = make_key(key);
	else						/* there, but not ours to read: never replaced */
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", KEY_FILE)));
	if (!ok)
		ereport(WARNING,
				(errmsg("apiary provenance cannot be recorded: no key to sign its messages with"),
				 errhint("Check that the server may write the directory \"%s\" in its data directory, and restart it.",
						 KEY_DIR)));
	return ok;
}

/* The MAC of len bytes at data, into mac; false if it could not be made. */
static bool
message_mac(const char *data, size_t len, uint8 *mac)
{
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);
	bool		ok;

	if (ctx == NULL)
		return false;
	ok = pg_hmac_init(ctx, apiary_shared->provenance_key, MAC_LEN) == 0 &&
		pg_hmac_update(ctx, (const uint8 *) data, len) == 0 &&
		pg_hmac_final(ctx, mac, MAC_LEN) == 0;
	pg_hmac_free(ctx);
	return ok;
}

/* Is the message of size bytes at data (MAC last) one that apiary signed? */
static bool
message_signed(const char *data, size_t size)
{
	uint8		mac[MAC_LEN];
	uint8		differ = 0;

	if (size < MAC_LEN || !message_mac(data, size - MAC_LEN, mac))
		return false;
	/* in constant time */
	for (int i = 0; i < MAC_LEN; i++)
		differ |= mac[i] ^ (uint8) data[size - MAC_LEN + i];
	return differ == 0;
}

/* ---------------------------------------------------------------------
 * Rows as JSON
 * ---------------------------------------------------------------------
 */

/*
 * Bounds on the row images provenance keeps, so that no row a function
 * writes or reads, however large, makes the collector fail (it would then
 * decode the same transaction again at every restart, and its slot hold
 * the WAL for good) or run out of memory, nor the function's backend.
 * Sizes are of the values uncompressed, as the image holds them; the JSON
 * of a value is at most a few times its size (six for text that is all
 * escapes), well within jsonb's 256 MB and a string's 1 GB.
 */
#define IMAGE_VALUE_MAX (1024 * 1024)	/* a larger value is left out */
#define IMAGE_ROW_MAX (8 * 1024 * 1024) /* a row over this has no image */
#define IMAGE_JSONB_DEPTH 1000	/* a jsonb value nested deeper is left out */
#define READS_BYTES_MAX (64 * 1024 * 1024)	/* of the reads of an invocation */
#define TXN_IMAGES_MAX (64 * 1024 * 1024)	/* of the changes of a transaction */

/*
 * Does a column go into JSON as the text its type's output function makes?
 * So for a type of the database's own (past the bootstrap OIDs, a domain
 * by its base): row_to_json would convert its values with a cast to json,
 * which any role may create for a type it owns, and so run code of that
 * role's choosing as the collector (a superuser) or as whoever read the
 * row.  Output functions are C, which only a superuser may install.  And
 * so for json (and json[]): row_to_json embeds it as it is, and json
 * takes what jsonb refuses (a \u0000, a number past numeric's range), so
 * any role's row would stop the collector for good, or fail whichever
 * apiary function read it.  A jsonb column (or a domain over jsonb) has
 * its depth checked (jsonb_too_deep).  Worked out once per row image, as
 * it may look the type up.
 */
typedef enum ColumnKind
{
	COLUMN_PLAIN,				/* as row_to_json makes it */
	COLUMN_TEXT,				/* as text (see above) */
	COLUMN_JSONB				/* jsonb, or a domain over it: its depth checked */
} ColumnKind;

static ColumnKind
column_kind(Form_pg_attribute att)
{
	Oid			base = att->atttypid;

	if (att->attisdropped)
		return COLUMN_PLAIN;
	if (base >= FirstNormalObjectId)
		base = getBaseType(base);
	if (base >= FirstNormalObjectId || base == JSONOID || base == JSONARRAYOID)
		return COLUMN_TEXT;
	return base == JSONBOID ? COLUMN_JSONB : COLUMN_PLAIN;
}

/*
 * Is a jsonb value nested deeper than IMAGE_JSONB_DEPTH?  Any role may
 * store one nested deep enough that parsing its row's JSON (tuple_jsonb)
 * exceeds the stack depth limit: that would stop the collector at every
 * restart, or fail the function that read it.  The iterator keeps its
 * path on the heap.
 */
static bool
jsonb_too_deep(Datum value)
{
	Jsonb	   *jb = DatumGetJsonbP(value);
	JsonbIterator *it = JsonbIteratorInit(&jb->root);
	JsonbValue	v;
	JsonbIteratorToken token;
	int			depth = 0;

	while ((token = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if (token == WJB_BEGIN_ARRAY || token == WJB_BEGIN_OBJECT)
		{
			if (++depth > IMAGE_JSONB_DEPTH)
				return true;
		}
		else if (token == WJB_END_ARRAY || token == WJB_END_OBJECT)
			depth--;
	}
	return false;
}

/*
 * A heap tuple as a jsonb object of its columns, or NULL for a row over
 * IMAGE_ROW_MAX.  Left out (null) are values still on disk in TOAST (an
 * update's unchanged columns, as decoding gives them: they were not part
 * of the change), values over IMAGE_VALUE_MAX and jsonb values nested
 * deeper than IMAGE_JSONB_DEPTH, which set *trimmed, as does a row left
 * without an image.  Columns of the database's own types,
 * and json ones, are strings (column_kind).
 */
static Jsonb *
tuple_jsonb(TupleDesc desc, HeapTuple tuple, bool strip_nulls, bool *trimmed)
{
	Datum		json;
	Jsonb	   *jb;
	TupleDesc	recdesc;
	ColumnKind *kinds = palloc(desc->natts * sizeof(ColumnKind));
	bool		as_text = false;

	/*
	 * As an anonymous record: row_to_json would look a relation's row type
	 * up by opening the relation, and wait for any lock on it (a DBA's
	 * ALTER TABLE, anyone's LOCK TABLE), holding every later row back.
	 */
	recdesc = CreateTupleDescCopy(desc);
	recdesc->tdtypeid = RECORDOID;
	recdesc->tdtypmod = -1;
	for (int i = 0; i < desc->natts; i++)
	{
		kinds[i] = column_kind(TupleDescAttr(desc, i));
		if (kinds[i] == COLUMN_TEXT)
		{
			TupleDescInitEntry(recdesc, i + 1, NameStr(TupleDescAttr(desc, i)->attname),
							   TEXTOID, -1, 0);
			as_text = true;
		}
	}
	recdesc = BlessTupleDesc(recdesc);
	if (HeapTupleHasVarWidth(tuple) || as_text)
	{
		Datum	   *values = palloc(desc->natts * sizeof(Datum));
		bool	   *nulls = palloc(desc->natts * sizeof(bool));
		bool		changed = as_text;
		Size		total = 0;

		heap_deform_tuple(tuple, desc, values, nulls);
		for (int i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			if (nulls[i] || att->attisdropped)
				continue;
			if (att->attlen == -1)
			{
				Size		size;

				if (VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(values[i])))
				{
					nulls[i] = changed = true;
					continue;
				}
				size = toast_raw_datum_size(values[i]);
				if (size > IMAGE_VALUE_MAX ||
					(kinds[i] == COLUMN_JSONB && jsonb_too_deep(values[i])))
				{
					nulls[i] = changed = *trimmed = true;
					continue;
				}
				total += size;
			}
			if (kinds[i] == COLUMN_TEXT)
			{
				Oid			output;
				bool		varlena;

				getTypeOutputInfo(att->atttypid, &output, &varlena);
				values[i] = CStringGetTextDatum(OidOutputFunctionCall(output, values[i]));
			}
		}
		if (total > IMAGE_ROW_MAX)
		{
			*trimmed = true;
			return NULL;
		}
		if (changed)
			tuple = heap_form_tuple(recdesc, values, nulls);
	}
	json = DirectFunctionCall1(row_to_json,
							   heap_copy_tuple_as_datum(tuple, recdesc));
	jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
											CStringGetDatum(TextDatumGetCString(json))));
	if (strip_nulls)
		jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_strip_nulls,
												JsonbPGetDatum(jb)));
	return jb;
}

/* ---------------------------------------------------------------------
 * Invocations: frames and their messages
 * ---------------------------------------------------------------------
 */

void
provenance_begin(ProvenanceFrame *pf)
{
	memset(pf, 0, sizeof(*pf));
	pf->parent = current;
	pf->active = apiary_provenance != APIARY_PROVENANCE_OFF &&
		wal_level >= WAL_LEVEL_LOGICAL && !RecoveryInProgress() &&
		apiary_shared != NULL && apiary_shared->provenance_keyed;
	if (pf->active)
		pf->start = GetXLogInsertRecPtr();
	current = pf;
}

void
provenance_pop(ProvenanceFrame *pf)
{
	current = pf->parent;
	if (pf->cxt != NULL)
		MemoryContextDelete(pf->cxt);
	pf->cxt = NULL;
}

/*
 * The invocation returned: in its transaction, say that the changes since
 * it began are its own (and, with provenance = all, what it read).  An
 * invocation that read nothing recorded and wrote nothing since it began
 * (this backend wrote no WAL since: a call in a loop of thousands that
 * only computes, say) needs no message.
 */
void
provenance_note(ProvenanceFrame *pf, Oid role, text *workflow, int64 task,
				const char *function)
{
	StringInfoData buf;
	MessageHeader hdr;

	if (!pf->active)
		return;
	if (pf->nreads == 0 &&
		(!TransactionIdIsValid(GetTopTransactionIdIfAny()) || XactLastRecEnd <= pf->start))
		return;

	memset(&hdr, 0, sizeof(hdr));
	hdr.version = MESSAGE_VERSION;
	hdr.role = role;
	hdr.task = task;
	hdr.start = pf->start;
	hdr.nreads = pf->nreads;
	hdr.has_workflow = workflow != NULL;
	/* a read-only invocation gets its transaction id here */
	hdr.xid = U64FromFullTransactionId(GetTopFullTransactionId());

	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, (char *) &hdr, sizeof(hdr));
	appendBinaryStringInfo(&buf, function, strlen(function) + 1);
	if (workflow != NULL)
		appendBinaryStringInfo(&buf, VARDATA_ANY(workflow), VARSIZE_ANY_EXHDR(workflow));
	appendStringInfoChar(&buf, '\0');
	if (pf->nreads > 0)
		appendBinaryStringInfo(&buf, pf->reads.data, pf->reads.len);
	enlargeStringInfo(&buf, MAC_LEN);
	if (!message_mac(buf.data, buf.len, (uint8 *) buf.data + buf.len))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not sign the provenance of \"%s\"", function)));
	buf.len += MAC_LEN;
	if (pf->skipped > 0)
		ereport(NOTICE,
				(errmsg("provenance of \"%s\" records the first %d rows it read, not the other %d",
						function, pf->nreads, pf->skipped),
				 pf->reads.len >= READS_BYTES_MAX ?
				 errhint("An invocation records at most %d MB of the rows it read.",
						 READS_BYTES_MAX >> 20) :
				 errhint("Raise apiary.provenance_max_reads to record more.")));
	(void) LogLogicalMessage(MESSAGE_PREFIX, buf.data, buf.len, true);
	pfree(buf.data);
}

/* ---------------------------------------------------------------------
 * Reads (apiary.provenance = all): taps on scan nodes
 * ---------------------------------------------------------------------
 */

typedef struct ReadTap
{
	struct ReadTap *next;
	PlanState  *ps;
	EState	   *estate;
	ExecProcNodeMtd real;
	Oid			relid;
	TupleDesc	desc;			/* index-only scans: columns named */
} ReadTap;

/* the taps of every query being executed; few, and found by address */
static ReadTap *taps = NULL;

typedef struct SeenKey
{
	Oid			relid;
	ItemPointerData tid;
} SeenKey;

static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static planner_hook_type prev_planner = NULL;

static bool
recording_reads(void)
{
	return current != NULL && current->active &&
		apiary_provenance == APIARY_PROVENANCE_ALL;
}

static void
note_read(ReadTap *tap)
{
	ProvenanceFrame *pf = current;
	ScanState  *ss = (ScanState *) tap->ps;
	TupleTableSlot *slot = ss->ss_ScanTupleSlot;
	ItemPointerData tid;
	SeenKey		key;
	bool		found;
	MemoryContext old;
	HeapTuple	tuple;
	Jsonb	   *jb;
	ReadHeader	rh;
	bool		trimmed = false;

	if (pf == NULL || !pf->active || TupIsNull(slot))
		return;
	if (IsA(tap->ps, IndexOnlyScanState))
		tid = ((IndexOnlyScanState *) tap->ps)->ioss_ScanDesc->xs_heaptid;
	else
		tid = slot->tts_tid;

	if (pf->cxt == NULL)
	{
		HASHCTL		ctl;

		/* freed by provenance_pop, which may come after an abort */
		pf->cxt = AllocSetContextCreate(TopMemoryContext, "apiary provenance reads",
										ALLOCSET_DEFAULT_SIZES);
		ctl.keysize = sizeof(SeenKey);
		ctl.entrysize = sizeof(SeenKey);
		ctl.hcxt = pf->cxt;
		pf->seen = hash_create("apiary rows read", 256, &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		pf->scratch = AllocSetContextCreate(pf->cxt, "apiary provenance read",
											ALLOCSET_DEFAULT_SIZES);
		old = MemoryContextSwitchTo(pf->cxt);
		initStringInfo(&pf->reads);
		MemoryContextSwitchTo(old);
	}
	memset(&key, 0, sizeof(key));
	key.relid = tap->relid;
	key.tid = tid;
	if (ItemPointerIsValid(&tid))
	{
		(void) hash_search(pf->seen, &key, HASH_FIND, &found);
		if (found)
			return;
	}
	if (pf->nreads >= apiary_provenance_max_reads || pf->reads.len >= READS_BYTES_MAX)
	{
		pf->skipped++;
		return;
	}
	if (ItemPointerIsValid(&tid))
		(void) hash_search(pf->seen, &key, HASH_ENTER, NULL);

	/* converted in a scratch context: only the result is kept */
	old = MemoryContextSwitchTo(pf->scratch);
	if (tap->desc != NULL)
	{
		slot_getallattrs(slot);
		tuple = heap_form_tuple(tap->desc, slot->tts_values, slot->tts_isnull);
		jb = tuple_jsonb(tap->desc, tuple, false, &trimmed);
	}
	else
	{
		tuple = ExecCopySlotHeapTuple(slot);
		jb = tuple_jsonb(slot->tts_tupleDescriptor, tuple, false, &trimmed);
	}
	/* a row without an image has size 0 */
	rh.relid = tap->relid;
	rh.size = jb != NULL ? VARSIZE(jb) : 0;
	appendBinaryStringInfo(&pf->reads, (char *) &rh, sizeof(rh));
	if (jb != NULL)
		appendBinaryStringInfo(&pf->reads, (char *) jb, VARSIZE(jb));
	pf->nreads++;
	MemoryContextSwitchTo(old);
	MemoryContextReset(pf->scratch);
}

static TupleTableSlot *
tap_exec(PlanState *ps)
{
	ReadTap    *tap;
	TupleTableSlot *slot;

	for (tap = taps; tap != NULL; tap = tap->next)
		if (tap->ps == ps)
			break;
	if (tap == NULL)
		elog(ERROR, "apiary provenance: scan node not found");
	slot = tap->real(ps);
	if (!TupIsNull(slot))
		note_read(tap);
	return slot;
}

/* The query's memory goes (at its end, or on error): so do its taps. */
static void
taps_forget(void *arg)
{
	ReadTap   **p = &taps;

	while (*p != NULL)
	{
		if ((*p)->estate == (EState *) arg)
			*p = (*p)->next;
		else
			p = &(*p)->next;
	}
}

/* An index-only scan's columns, named as in the table. */
static TupleDesc
index_columns(IndexOnlyScanState *ioss, Relation heap)
{
	TupleDesc	from = ioss->ss.ss_ScanTupleSlot->tts_tupleDescriptor;
	Relation	index = ioss->ioss_RelationDesc;
	TupleDesc	desc = CreateTemplateTupleDesc(from->natts);

	for (int i = 0; i < from->natts; i++)
	{
		AttrNumber	attnum = i < index->rd_index->indnatts ?
			index->rd_index->indkey.values[i] : 0;
		char	   *name = attnum > 0 ?
			NameStr(TupleDescAttr(RelationGetDescr(heap), attnum - 1)->attname) :
			psprintf("expr%d", i + 1);

		TupleDescInitEntry(desc, i + 1, name, TupleDescAttr(from, i)->atttypid,
						   TupleDescAttr(from, i)->atttypmod, 0);
	}
	return BlessTupleDesc(desc);
}

static bool
tap_walker(PlanState *ps, void *context)
{
	EState	   *estate = (EState *) context;

	if (ps == NULL)
		return false;
	switch (nodeTag(ps))
	{
		case T_SeqScanState:
		case T_SampleScanState:
		case T_IndexScanState:
		case T_IndexOnlyScanState:
		case T_BitmapHeapScanState:
		case T_TidScanState:
		case T_TidRangeScanState:
			{
				Relation	rel = ((ScanState *) ps)->ss_currentRelation;
				Oid			nsp;
				ReadTap    *tap;

				if (rel == NULL)
					break;
				nsp = RelationGetNamespace(rel);
				/* apiary's own tables and the catalogs are not the data */
				if (IsCatalogRelation(rel) || nsp == get_namespace_oid("apiary", true))
					break;
				tap = MemoryContextAllocZero(estate->es_query_cxt, sizeof(ReadTap));
				tap->ps = ps;
				tap->estate = estate;
				tap->relid = RelationGetRelid(rel);
				tap->real = ps->ExecProcNodeReal;
				if (IsA(ps, IndexOnlyScanState))
				{
					MemoryContext old = MemoryContextSwitchTo(estate->es_query_cxt);

					tap->desc = index_columns((IndexOnlyScanState *) ps, rel);
					MemoryContextSwitchTo(old);
				}
				ps->ExecProcNodeReal = tap_exec;
				tap->next = taps;
				taps = tap;
				break;
			}
		default:
			break;
	}
	return planstate_tree_walker(ps, tap_walker, context);
}

static void
provenance_ExecutorStart(QueryDesc *qd, int eflags)
{
	if (prev_ExecutorStart)
		prev_ExecutorStart(qd, eflags);
	else
		standard_ExecutorStart(qd, eflags);

	if (recording_reads() && !(eflags & EXEC_FLAG_EXPLAIN_ONLY) && qd->planstate != NULL)
	{
		MemoryContextCallback *cb =
			MemoryContextAlloc(qd->estate->es_query_cxt, sizeof(MemoryContextCallback));

		/* first: the taps live in es_query_cxt, so must leave with it */
		cb->func = taps_forget;
		cb->arg = qd->estate;
		MemoryContextRegisterResetCallback(qd->estate->es_query_cxt, cb);
		(void) tap_walker(qd->planstate, qd->estate);
	}
}

/*
 * Rows read by parallel workers would not pass the taps of this process:
 * while reads are recorded, queries are planned without them.
 */
static PlannedStmt *
provenance_planner(Query *parse, const char *query_string, int cursorOptions,
				   ParamListInfo boundParams)
{
	if (recording_reads())
		cursorOptions &= ~CURSOR_OPT_PARALLEL_OK;
	if (prev_planner)
		return prev_planner(parse, query_string, cursorOptions, boundParams);
	return standard_planner(parse, query_string, cursorOptions, boundParams);
}

/* An error that unwinds past a frame's owner ends its transaction too. */
static void
provenance_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		current = NULL;
}

void
provenance_init(void)
{
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = provenance_ExecutorStart;
	prev_planner = planner_hook;
	planner_hook = provenance_planner;
	RegisterXactCallback(provenance_xact_callback, NULL);
}

/* ---------------------------------------------------------------------
 * The output plugin: decoded transactions to rows
 * ---------------------------------------------------------------------
 */

/* What a row's image lost, if anything. */
typedef enum ImageLoss
{
	IMAGE_WHOLE,
	IMAGE_TRIMMED,				/* by the bounds on images */
	IMAGE_FAILED				/* its conversion failed */
} ImageLoss;

typedef struct Change
{
	XLogRecPtr	lsn;
	Oid			relid;
	char	   *relname;
	const char *operation;
	Jsonb	   *row;
	ImageLoss	loss;
} Change;

typedef struct Message
{
	XLogRecPtr	lsn;
	MessageHeader hdr;
	char	   *function;
	char	   *workflow;		/* NULL for none */
	List	   *reads;			/* of Change */
} Message;

/* A row for apiary.provenance_rows. */
typedef struct ProvRow
{
	XLogRecPtr	begin_lsn;
	int32		n;
	Message    *by;
	Change	   *change;
	TimestampTz at;
} ProvRow;

typedef struct PluginState
{
	MemoryContext txn_cxt;		/* the transaction being decoded */
	MemoryContext change_cxt;	/* one change's conversion */
	List	   *changes;
	int			nchanges;
	int			dropped;		/* changes over TXN_CHANGES_MAX */
	Size		images;			/* bytes of row images held */
	char	   *failure;		/* the first failed conversion's error */
	List	   *messages;
	MemoryContext out_cxt;		/* rows decoded, not yet stored */
	List	   *rows;
	Size		rows_bytes;		/* of their images */
	Oid			apiary_nsp;
} PluginState;

static void
plugin_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init)
{
	PluginState *st = MemoryContextAllocZero(ctx->context, sizeof(PluginState));

	st->txn_cxt = AllocSetContextCreate(ctx->context, "apiary provenance transaction",
										ALLOCSET_DEFAULT_SIZES);
	st->out_cxt = AllocSetContextCreate(ctx->context, "apiary provenance rows",
										ALLOCSET_DEFAULT_SIZES);
	st->change_cxt = AllocSetContextCreate(ctx->context, "apiary provenance change",
										   ALLOCSET_DEFAULT_SIZES);
	st->apiary_nsp = InvalidOid;
	ctx->output_plugin_private = st;
	opt->output_type = OUTPUT_PLUGIN_BINARY_OUTPUT;
	opt->receive_rewrites = false;
}

static void
plugin_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	PluginState *st = ctx->output_plugin_private;

	MemoryContextReset(st->txn_cxt);
	st->changes = NIL;
	st->nchanges = 0;
	st->dropped = 0;
	st->images = 0;
	st->failure = NULL;
	st->messages = NIL;
}

/*
 * Keep a row image of this transaction as c's, copied into txn_cxt,
 * unless the transaction's images reached TXN_IMAGES_MAX.
 */
static void
keep_image(PluginState *st, Change *c, Jsonb *jb)
{
	c->row = NULL;
	if (jb == NULL)
		return;
	if (st->images + VARSIZE(jb) > TXN_IMAGES_MAX)
	{
		c->loss = IMAGE_TRIMMED;
		return;
	}
	st->images += VARSIZE(jb);
	c->row = MemoryContextAlloc(st->txn_cxt, VARSIZE(jb));
	memcpy(c->row, jb, VARSIZE(jb));
}

/*
 * A change's row image (NULL for none).  A row with columns of the
 * database's own types is converted in a subtransaction, for their output
 * functions are code of an extension's: a value one of them cannot
 * convert is recorded without the row's image, where the error would
 * have stopped the collector, to decode the same transaction again at
 * every restart.  Built-in types convert any value they hold, within the
 * bounds above, and cost no subtransaction.
 */
static void
change_image(PluginState *st, Change *c, Relation rel, HeapTuple tuple, bool key_only)
{
	MemoryContext old = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	TupleDesc	desc = RelationGetDescr(rel);
	bool		guarded = false;

	for (int i = 0; i < desc->natts && !guarded; i++)
		guarded = column_kind(TupleDescAttr(desc, i)) == COLUMN_TEXT;
	if (guarded)
		BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(st->change_cxt);
	PG_TRY();
	{
		bool		trimmed = false;

		keep_image(st, c, tuple_jsonb(desc, tuple, key_only, &trimmed));
		if (trimmed)
			c->loss = IMAGE_TRIMMED;
		if (guarded)
			ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		if (!guarded)
			PG_RE_THROW();
		MemoryContextSwitchTo(st->txn_cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		c->row = NULL;
		c->loss = IMAGE_FAILED;
		if (st->failure == NULL)
			st->failure = psprintf("%s (a row of %s)", edata->message,
								   RelationGetRelationName(rel));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	CurrentResourceOwner = owner;
	MemoryContextReset(st->change_cxt);
}

/*
 * A transaction's changes are kept until its commit, when its messages
 * say whose they are; a bulk load that is nobody's must not fill the
 * collector's memory, so at most this many are kept per transaction.
 */
#define TXN_CHANGES_MAX 100000

/*
 * A change of the transaction to rel, held until its commit says whose it
 * is (in the transaction's context); NULL for one not recorded: apiary's
 * own bookkeeping, the catalogs, and changes past the cap.
 */
static Change *
add_change(PluginState *st, Relation rel, XLogRecPtr lsn, const char *operation)
{
	Change	   *c;

	if (!OidIsValid(st->apiary_nsp))
		st->apiary_nsp = get_namespace_oid("apiary", true);
	if (RelationGetNamespace(rel) == st->apiary_nsp || IsCatalogRelation(rel))
		return NULL;
	if (st->nchanges >= TXN_CHANGES_MAX)
	{
		st->dropped++;
		return NULL;
	}
	st->nchanges++;

	c = palloc0(sizeof(Change));
	c->lsn = lsn;
	c->relid = RelationGetRelid(rel);
	c->relname = psprintf("%s.%s",
						  get_namespace_name(RelationGetNamespace(rel)),
						  RelationGetRelationName(rel));
	c->operation = operation;
	st->changes = lappend(st->changes, c);
	return c;
}

static void
plugin_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			  Relation rel, ReorderBufferChange *change)
{
	PluginState *st = ctx->output_plugin_private;
	MemoryContext old;
	const char *operation;
	HeapTuple	tuple = NULL;
	bool		key_only = false;
	Change	   *c;

	switch (change->action)
	{
		case REORDER_BUFFER_CHANGE_INSERT:
			operation = "insert";
			if (change->data.tp.newtuple)
				tuple = &change->data.tp.newtuple->tuple;
			break;
		case REORDER_BUFFER_CHANGE_UPDATE:
			operation = "update";
			if (change->data.tp.newtuple)
				tuple = &change->data.tp.newtuple->tuple;
			break;
		case REORDER_BUFFER_CHANGE_DELETE:
			operation = "delete";
			key_only = true;
			if (change->data.tp.oldtuple)
				tuple = &change->data.tp.oldtuple->tuple;
			break;
		default:
			return;
	}
	old = MemoryContextSwitchTo(st->txn_cxt);
	c = add_change(st, rel, change->lsn, operation);
	if (c != NULL && tuple != NULL)
		change_image(st, c, rel, tuple, key_only);
	MemoryContextSwitchTo(old);
}

/* A TRUNCATE: one row per table, without an image. */
static void
plugin_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
				int nrelations, Relation relations[], ReorderBufferChange *change)
{
	PluginState *st = ctx->output_plugin_private;
	MemoryContext old = MemoryContextSwitchTo(st->txn_cxt);

	for (int i = 0; i < nrelations; i++)
		(void) add_change(st, relations[i], change->lsn, "truncate");
	MemoryContextSwitchTo(old);
}

/*
 * A message of ours, signed in transaction xid: parsed into a Message, in
 * the current memory context.  NULL for anything else, a signed message
 * copied into another transaction included, or if it does not parse,
 * which only a bug could make once the signature matched.
 */
static Message *
parse_message(TransactionId xid, XLogRecPtr lsn, const char *data, Size size)
{
	Message    *m;
	const char *p;
	const char *end;
	size_t		len;

	if (size < sizeof(MessageHeader) + MAC_LEN || !message_signed(data, size))
		return NULL;
	end = data + size - MAC_LEN;
	m = palloc0(sizeof(Message));
	m->lsn = lsn;
	memcpy(&m->hdr, data, sizeof(MessageHeader));
	/* signed for this transaction: not one copied from another */
	if (m->hdr.version != MESSAGE_VERSION || m->hdr.nreads < 0 ||
		XidFromFullTransactionId(FullTransactionIdFromU64(m->hdr.xid)) != xid)
		return NULL;
	p = data + sizeof(MessageHeader);
	len = strnlen(p, end - p);
	if (len == end - p)
		return NULL;
	m->function = pnstrdup(p, len);
	p += len + 1;
	len = strnlen(p, end - p);
	if (len == end - p)
		return NULL;
	m->workflow = m->hdr.has_workflow ? pnstrdup(p, len) : NULL;
	p += len + 1;
	for (int i = 0; i < m->hdr.nreads; i++)
	{
		ReadHeader	rh;
		Change	   *c = palloc0(sizeof(Change));
		char	   *relname;

		if (end - p < sizeof(rh))
			return NULL;
		memcpy(&rh, p, sizeof(rh));
		p += sizeof(rh);
		/* 0: a row read without its image (over IMAGE_ROW_MAX) */
		if ((rh.size != 0 && rh.size < VARHDRSZ) || rh.size > end - p)
			return NULL;
		c->lsn = lsn;
		c->relid = rh.relid;
		relname = get_rel_name(rh.relid);
		c->relname = relname != NULL ?
			psprintf("%s.%s", get_namespace_name(get_rel_namespace(rh.relid)), relname) :
			psprintf("%u", rh.relid);
		c->operation = "read";
		if (rh.size != 0)
		{
			c->row = palloc(rh.size);
			memcpy(c->row, p, rh.size);
			if (VARSIZE(c->row) != rh.size)
				return NULL;
			p += rh.size;
		}
		m->reads = lappend(m->reads, c);
	}
	return p == end ? m : NULL;
}

static void
plugin_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			   XLogRecPtr lsn, bool transactional, const char *prefix,
			   Size size, const char *data)
{
	PluginState *st = ctx->output_plugin_private;
	MemoryContext old;
	Message    *m;

	if (!transactional || strcmp(prefix, MESSAGE_PREFIX) != 0)
		return;
	old = MemoryContextSwitchTo(st->txn_cxt);
	m = parse_message(txn->xid, lsn, data, size);
	if (m != NULL)
	{
		ListCell   *lc;
		List	   *kept = NIL;

		/* the reads count against the transaction's rows and images */
		foreach(lc, m->reads)
		{
			Change	   *c = lfirst(lc);
			Jsonb	   *jb = c->row;

			if (st->nchanges < TXN_CHANGES_MAX)
			{
				st->nchanges++;
				keep_image(st, c, jb);
				kept = lappend(kept, c);
			}
			else
			{
				st->dropped++;
				pfree(c->relname);
				pfree(c);
			}
			if (jb != NULL)
				pfree(jb);
		}
		list_free(m->reads);
		m->reads = kept;
		st->messages = lappend(st->messages, m);
	}
	else
		ereport(LOG,
				(errmsg("apiary provenance: ignored a message at %X/%X that apiary did not sign",
						LSN_FORMAT_ARGS(lsn)),
				 errdetail("Transaction %u wrote it with the prefix \"%s\". Any role may write such messages; provenance takes only those apiary signed, which messages from before the library that signs them are not.",
						   txn->xid, MESSAGE_PREFIX)));
	MemoryContextSwitchTo(old);
}

/* Ranges by their start, an outer one before the ranges it holds. */
static int
message_range_cmp(const void *a, const void *b)
{
	const Message *x = *(Message *const *) a;
	const Message *y = *(Message *const *) b;

	if (x->hdr.start != y->hdr.start)
		return x->hdr.start < y->hdr.start ? -1 : 1;
	if (x->lsn != y->lsn)
		return x->lsn > y->lsn ? -1 : 1;
	return 0;
}

/*
 * The innermost invocation whose range holds each change's LSN (NULL:
 * none), into by[].  The ranges of one transaction nest or follow one
 * another, as its invocations do, and decoding gives its changes in LSN
 * order (subtransactions' merged): one pass with a stack of the ranges
 * open, not a look at every range for every change (a transaction of many
 * calls and many writes).
 */
static void
attribute_all(List *messages, List *changes, Message **by)
{
	int			nm = list_length(messages);
	Message   **sorted = palloc(Max(nm, 1) * sizeof(Message *));
	Message   **open = palloc(Max(nm, 1) * sizeof(Message *));
	int			nopen = 0;
	int			next = 0;
	int			i = 0;
	ListCell   *lc;

	foreach(lc, messages)
		sorted[foreach_current_index(lc)] = lfirst(lc);
	qsort(sorted, nm, sizeof(Message *), message_range_cmp);

	foreach(lc, changes)
	{
		XLogRecPtr	lsn = ((Change *) lfirst(lc))->lsn;

		Assert(i == 0 || lsn >= ((Change *) list_nth(changes, i - 1))->lsn);
		while (next < nm && sorted[next]->hdr.start <= lsn)
		{
			while (nopen > 0 && open[nopen - 1]->lsn <= sorted[next]->hdr.start)
				nopen--;
			open[nopen++] = sorted[next++];
		}
		while (nopen > 0 && open[nopen - 1]->lsn <= lsn)
			nopen--;
		by[i++] = nopen > 0 ? open[nopen - 1] : NULL;
	}
	pfree(sorted);
	pfree(open);
}

/*
 * Provenance shows a row's image to the role of the invocation (and to
 * apiary_admin).  A SECURITY DEFINER function may touch rows its caller
 * may not read: the image is kept only when the role may read the whole
 * table (SELECT, and no row-level security applying to it), else the
 * row is recorded without it.  Decided by the catalogs as they were when
 * the transaction ran.
 */
static bool
may_read(Oid role, Oid relid)
{
	bool		missing = false;
	ListCell   *lc;

	/* (a table the transaction dropped again has no rights to go by) */
	if (pg_class_aclcheck_ext(relid, role, ACL_SELECT, &missing) == ACLCHECK_OK &&
		!missing && check_enable_rls(relid, role, true) != RLS_ENABLED)
		return true;
	if (missing || !get_rel_relispartition(relid))
		return false;
	/* a partition's rows are read through any partitioned table above it */
	foreach(lc, get_partition_ancestors(relid))
		if (may_read(role, lfirst_oid(lc)))
			return true;
	return false;
}

/* Keep a row for storing: copied into out_cxt, the current context. */
static void
keep_row(PluginState *st, ReorderBufferTXN *txn, int n, Message *by, Change *c)
{
	Change	   *keep = palloc(sizeof(Change));
	ProvRow    *r = palloc(sizeof(ProvRow));

	*keep = *c;
	keep->relname = pstrdup(c->relname);
	keep->row = NULL;
	if (c->row != NULL && may_read(by->hdr.role, c->relid))
	{
		keep->row = palloc(VARSIZE(c->row));
		memcpy(keep->row, c->row, VARSIZE(c->row));
	}
	r->begin_lsn = txn->first_lsn;
	r->n = n;
	r->by = by;
	r->change = keep;
	r->at = txn->xact_time.commit_time;
	st->rows = lappend(st->rows, r);
	if (keep->row != NULL)
		st->rows_bytes += VARSIZE(keep->row);
}

static void
plugin_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			  XLogRecPtr commit_lsn)
{
	PluginState *st = ctx->output_plugin_private;
	MemoryContext old;
	ListCell   *lc;
	int			n = 0;
	int			losses[IMAGE_FAILED + 1] = {0};
	Message   **by;

	if (st->messages == NIL)
		return;
	if (st->dropped > 0)
		ereport(WARNING,
				(errmsg("apiary provenance: transaction %u wrote and read more than %d rows; the other %d are not recorded",
						txn->xid, TXN_CHANGES_MAX, st->dropped)));
	/* out_cxt outlives this transaction's context: copy what is kept */
	old = MemoryContextSwitchTo(st->out_cxt);
	foreach(lc, st->messages)
	{
		Message    *m = lfirst(lc);
		Message    *keep = palloc(sizeof(Message));
		ListCell   *rc;

		*keep = *m;
		keep->function = pstrdup(m->function);
		keep->workflow = m->workflow ? pstrdup(m->workflow) : NULL;
		keep->reads = NIL;
		lfirst(lc) = keep;
		foreach(rc, m->reads)
		{
			Change	   *c = lfirst(rc);

			keep_row(st, txn, ++n, keep, c);
			losses[c->loss]++;
		}
	}
	by = palloc(Max(list_length(st->changes), 1) * sizeof(Message *));
	attribute_all(st->messages, st->changes, by);
	foreach(lc, st->changes)
	{
		Change	   *c = lfirst(lc);

		if (by[foreach_current_index(lc)] != NULL)
		{
			keep_row(st, txn, ++n, by[foreach_current_index(lc)], c);
			losses[c->loss]++;
		}
	}
	pfree(by);
	MemoryContextSwitchTo(old);
	if (losses[IMAGE_TRIMMED] > 0)
		ereport(WARNING,
				(errmsg_plural("apiary provenance: transaction %u has %d row recorded without some or all of its values",
							   "apiary provenance: transaction %u has %d rows recorded without some or all of their values",
							   losses[IMAGE_TRIMMED], txn->xid, losses[IMAGE_TRIMMED]),
				 errdetail("A value over %d MB is left out of its row's image, a row over %d MB has none, and so have the rows of a transaction past its first %d MB of images.",
						   IMAGE_VALUE_MAX >> 20, IMAGE_ROW_MAX >> 20, TXN_IMAGES_MAX >> 20)));
	if (losses[IMAGE_FAILED] > 0)
		ereport(WARNING,
				(errmsg_plural("apiary provenance: transaction %u has %d row recorded without its values, which could not be converted",
							   "apiary provenance: transaction %u has %d rows recorded without their values, which could not be converted",
							   losses[IMAGE_FAILED], txn->xid, losses[IMAGE_FAILED]),
				 errdetail("The first failed with: %s", st->failure)));
	MemoryContextReset(st->txn_cxt);
	st->changes = NIL;
	st->messages = NIL;
}

/* The collector's own writes (store_rows). */
static bool
plugin_filter(LogicalDecodingContext *ctx, RepOriginId origin_id)
{
	return origin_id == DoNotReplicateId;
}

void		_PG_output_plugin_init(OutputPluginCallbacks *cb);

/*
 * The slot's plugin is this library ("apiary"); decoding with it outside
 * the collector (pg_logical_slot_get_changes) returns nothing.
 */
PGDLLEXPORT void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = plugin_startup;
	cb->begin_cb = plugin_begin;
	cb->change_cb = plugin_change;
	cb->truncate_cb = plugin_truncate;
	cb->commit_cb = plugin_commit;
	cb->message_cb = plugin_message;
	cb->filter_by_origin_cb = plugin_filter;
}

/* ---------------------------------------------------------------------
 * The collector worker
 * ---------------------------------------------------------------------
 */

/*
 * Rows held before they are stored, even if the WAL goes on; and bytes of
 * their images (a batch may pass it by one transaction's, at most
 * TXN_IMAGES_MAX: its arrays stay far below 1 GB).
 */
#define STORE_BATCH 5000
#define STORE_BATCH_BYTES (16 * 1024 * 1024)

/*
 * The collector runs at apiary.provenance_nice: on a server short of CPU
 * it yields to the work it records, and catches up when there is slack.
 * A process may lower its own priority but not raise it again: for that
 * the collector exits, and the launcher starts a new one.
 */
static bool
apply_nice(void)
{
	static int	applied = 0;

	if (apiary_provenance_nice == applied)
		return true;
	if (setpriority(PRIO_PROCESS, 0, apiary_provenance_nice) != 0)
		return false;
	applied = apiary_provenance_nice;
	return true;
}

/*
 * apiary.provenance_failed_at(): when the collector last failed, unless a
 * collector got past that point since; NULL if it did not fail, and in a
 * database where no collector runs.
 */
PG_FUNCTION_INFO_V1(apiary_provenance_failed_at);
Datum
apiary_provenance_failed_at(PG_FUNCTION_ARGS)
{
	TimestampTz at = 0;

	/* only where a collector runs */
	if (apiary_shared != NULL && provenance_wanted() &&
		MyDatabaseId == get_database_oid(apiary_database, true))
	{
		SpinLockAcquire(&apiary_shared->mutex);
		at = apiary_shared->provenance_failed_at;
		SpinLockRelease(&apiary_shared->mutex);
	}
	if (at == 0)
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(at);
}

bool
provenance_wanted(void)
{
	return apiary_provenance != APIARY_PROVENANCE_OFF && wal_level >= WAL_LEVEL_LOGICAL;
}

static void
no_prepare_write(LogicalDecodingContext *ctx, XLogRecPtr lsn, TransactionId xid, bool last)
{
}

static void
no_write(LogicalDecodingContext *ctx, XLogRecPtr lsn, TransactionId xid, bool last)
{
}

/*
 * Make sure the slot exists with this plugin (0.4 used wal2json: that
 * slot is replaced), in a transaction of its own.
 */
static void
ensure_slot(void)
{
	bool		exists;
	bool		ours = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	journal_execute("SELECT plugin OPERATOR(pg_catalog.=) 'apiary',"
					" COALESCE(database OPERATOR(pg_catalog.=) pg_catalog.current_database(), false), database,"
					" restart_lsn IS NULL OR wal_status OPERATOR(pg_catalog.=) 'lost', confirmed_flush_lsn"
					" FROM pg_catalog.pg_replication_slots"
					" WHERE slot_name OPERATOR(pg_catalog.=) '" PROVENANCE_SLOT "'",
					NULL, 0, NULL, NULL, NULL, SPI_OK_SELECT);
	exists = SPI_processed > 0;
	if (exists)
	{
		bool		isnull;
		bool		here = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		char	   *database = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);

		ours = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		/*
		 * One left in the database apiary.database named before: nothing
		 * decodes it there any more, and it would hold WAL forever.
		 */
		if (ours && !here)
		{
			ours = false;
			ereport(LOG, (errmsg("apiary provenance: dropping replication slot \"%s\" of database \"%s\", which apiary.database no longer names",
								 PROVENANCE_SLOT, database ? database : "")));
		}
		else if (!ours)
			ereport(LOG, (errmsg("apiary provenance: dropping replication slot \"%s\" of another output plugin",
								 PROVENANCE_SLOT)));

		/*
		 * One whose WAL the server removed (max_slot_wal_keep_size) can
		 * never be decoded again: a new one records what comes next.
		 */
		else if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull)))
		{
			char	   *from = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5);

			ours = false;
			ereport(WARNING,
					(errmsg("apiary provenance: replication slot \"%s\" has lost the WAL it had not decoded; the writes after %s up to now are not recorded",
							PROVENANCE_SLOT, from ? from : "its start"),
					 errdetail("The server removed the WAL before the collector decoded it, as max_slot_wal_keep_size allows: the collector was behind, or one transaction wrote more WAL than that (a slot keeps the WAL of every transaction still open)."),
					 errhint("The slot is created again.  Set max_slot_wal_keep_size above the WAL of the largest transaction and of the collector's lag, or fix what keeps the collector behind.")));
		}
	}
	if (exists && !ours)
		journal_execute("SELECT pg_catalog.pg_drop_replication_slot('" PROVENANCE_SLOT "')",
						NULL, 0, NULL, NULL, NULL, SPI_OK_SELECT);
	if (!ours)
	{
		journal_execute("SELECT pg_catalog.pg_create_logical_replication_slot('" PROVENANCE_SLOT "', 'apiary')",
						NULL, 0, NULL, NULL, NULL, SPI_OK_SELECT);
		ereport(LOG, (errmsg("apiary provenance: created replication slot \"%s\"",
							 PROVENANCE_SLOT)));
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/* Store what was decoded: one statement, over arrays, in one transaction. */
static void
store_rows(PluginState *st)
{
	static const char *sql =
		"INSERT INTO apiary.provenance_rows"
		" (begin_lsn, n, role, workflow, task, function, xid, relation, relname,"
		"  operation, \"row\", at)"
		" SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
		"  pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5),"
		"  pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8),"
		"  pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11),"
		"  pg_catalog.unnest($12))"
		" ON CONFLICT DO NOTHING";
#define NCOLS 12
	static const Oid elemtypes[NCOLS] = {PG_LSNOID, INT4OID, OIDOID, TEXTOID, INT8OID, TEXTOID,
	XID8OID, OIDOID, TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID};
	static SPIPlanPtr plan = NULL;
	Oid			types[NCOLS];
	Datum		args[NCOLS];
	int			nrows = list_length(st->rows);
	Datum	   *values[NCOLS];
	bool	   *nulls[NCOLS];
	int			i = 0;
	ListCell   *lc;

	/*
	 * Marked "do not replicate": decoding skips these rows at once
	 * (plugin_filter), instead of reassembling them only to drop them.
	 */
	replorigin_session_origin = DoNotReplicateId;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	for (int c = 0; c < NCOLS; c++)
	{
		types[c] = get_array_type(elemtypes[c]);
		values[c] = palloc(nrows * sizeof(Datum));
		nulls[c] = palloc0(nrows * sizeof(bool));
	}
	foreach(lc, st->rows)
	{
		ProvRow    *r = lfirst(lc);
		Change	   *c = r->change;

		values[0][i] = LSNGetDatum(r->begin_lsn);
		values[1][i] = Int32GetDatum(r->n);
		values[2][i] = ObjectIdGetDatum(r->by->hdr.role);
		if (r->by->workflow)
			values[3][i] = CStringGetTextDatum(r->by->workflow);
		else
			nulls[3][i] = true;
		values[4][i] = Int64GetDatum(r->by->hdr.task);
		nulls[4][i] = r->by->hdr.task == 0;
		values[5][i] = CStringGetTextDatum(r->by->function);
		values[6][i] = FullTransactionIdGetDatum(FullTransactionIdFromU64(r->by->hdr.xid));
		values[7][i] = ObjectIdGetDatum(c->relid);
		values[8][i] = CStringGetTextDatum(c->relname);
		values[9][i] = CStringGetTextDatum(c->operation);
		if (c->row)
			values[10][i] = JsonbPGetDatum(c->row);
		else
			nulls[10][i] = true;
		values[11][i] = TimestampTzGetDatum(r->at);
		i++;
	}
	for (int c = 0; c < NCOLS; c++)
	{
		int16		len;
		bool		byval;
		char		align;
		int			dims[1] = {nrows};
		int			lbs[1] = {1};

		get_typlenbyvalalign(elemtypes[c], &len, &byval, &align);
		args[c] = PointerGetDatum(construct_md_array(values[c], nulls[c], 1, dims, lbs,
													 elemtypes[c], len, byval, align));
	}
	if (plan == NULL)
		plan = journal_prepare(sql, NCOLS, types);
	journal_execute(sql, plan, NCOLS, types, args, NULL, SPI_OK_INSERT);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	/*
	 * Durable before the slot moves past them, whatever synchronous_commit
	 * this session was given.
	 */
	XLogFlush(XactLastCommitEnd);
	replorigin_session_origin = InvalidRepOriginId;
	pgstat_report_stat(false);

	MemoryContextReset(st->out_cxt);
	st->rows = NIL;
	st->rows_bytes = 0;
#undef NCOLS
}

static bool
tables_installed(void)
{
	bool		installed;
	Oid			nsp;

	StartTransactionCommand();
	nsp = get_namespace_oid("apiary", true);
	installed = OidIsValid(nsp) && OidIsValid(get_relname_relid("provenance_rows", nsp));
	CommitTransactionCommand();
	return installed;
}

/* The failure provenance_status shows is over once the slot passed it. */
static void
forget_failure(XLogRecPtr confirmed)
{
	SpinLockAcquire(&apiary_shared->mutex);
	if (apiary_shared->provenance_failed_at != 0 &&
		confirmed >= apiary_shared->provenance_failed_lsn)
		apiary_shared->provenance_failed_at = 0;
	SpinLockRelease(&apiary_shared->mutex);
}

/*
 * Decode the WAL as it is flushed, and store what it says, for good;
 * returns once provenance is turned off.
 */
static void
collect(LogicalDecodingContext *ctx, MemoryContext cxt)
{
	PluginState *st = ctx->output_plugin_private;

	for (;;)
	{
		XLogRecPtr	end;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (provenance_wanted() && !apply_nice())
			{
				ereport(LOG, (errmsg("apiary provenance: restarting at the new apiary.provenance_nice")));
				proc_exit(0);
			}
		}
		if (!provenance_wanted())
			return;				/* off: the caller drops the slot */

		end = GetFlushRecPtr(NULL);
		if (ctx->reader->EndRecPtr < end)
		{
			/*
			 * Decoding reads the catalogs as they were; keep its cache
			 * entries apart from those of the transactions in between.
			 */
			InvalidateSystemCaches();
			while (ctx->reader->EndRecPtr < end && list_length(st->rows) < STORE_BATCH &&
				   st->rows_bytes < STORE_BATCH_BYTES)
			{
				char	   *errm = NULL;
				XLogRecord *record = XLogReadRecord(ctx->reader, &errm);

				if (errm)
					elog(ERROR, "could not read WAL for apiary provenance: %s", errm);
				if (record != NULL)
					LogicalDecodingProcessRecord(ctx, ctx->reader);
				CHECK_FOR_INTERRUPTS();
			}
			InvalidateSystemCaches();
			if (st->rows != NIL)
				store_rows(st);
			/* stored (or nothing to store): the slot may move past it */
			LogicalConfirmReceivedLocation(ctx->reader->EndRecPtr);
			ReplicationSlotMarkDirty();
			forget_failure(ctx->reader->EndRecPtr);
			if (ctx->reader->EndRecPtr < end)
				continue;
		}
		MemoryContextSwitchTo(cxt);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 200L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * One collector at a time: one started while another runs (by a launcher
 * started again, which knows nothing of the one before) leaves at once.
 */
static bool
claim_collector(void)
{
	bool		ok;

	SpinLockAcquire(&apiary_shared->mutex);
	ok = apiary_shared->collector_pid == 0 || kill(apiary_shared->collector_pid, 0) != 0;
	if (ok)
		apiary_shared->collector_pid = MyProcPid;
	SpinLockRelease(&apiary_shared->mutex);
	return ok;
}

static void
release_collector(int code, Datum arg)
{
	SpinLockAcquire(&apiary_shared->mutex);
	if (apiary_shared->collector_pid == MyProcPid)
		apiary_shared->collector_pid = 0;
	SpinLockRelease(&apiary_shared->mutex);
}

bool
apiary_collector_running(void)
{
	pid_t		pid;

	SpinLockAcquire(&apiary_shared->mutex);
	pid = apiary_shared->collector_pid;
	SpinLockRelease(&apiary_shared->mutex);
	return pid != 0 && kill(pid, 0) == 0;
}

void
apiary_provenance_main(Datum main_arg)
{
	LogicalDecodingContext *ctx;
	MemoryContext cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	if (!claim_collector())
		proc_exit(0);
	before_shmem_exit(release_collector, (Datum) 0);
	BackgroundWorkerInitializeConnection(apiary_database, NULL, 0);
	pgstat_report_appname("apiary provenance");
	apiary_housekeeping_session();

	if (!provenance_wanted() || RecoveryInProgress() || !tables_installed())
		proc_exit(0);
	(void) apply_nice();
	ensure_slot();

	cxt = AllocSetContextCreate(TopMemoryContext, "apiary provenance decoding",
								ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(cxt);
	/* a collector left from a launcher before this one may still have it */
	ReplicationSlotAcquire(PROVENANCE_SLOT, false);
	ctx = CreateDecodingContext(InvalidXLogRecPtr, NIL, false,
								XL_ROUTINE(.page_read = read_local_xlog_page,
										   .segment_open = wal_segment_open,
										   .segment_close = wal_segment_close),
								no_prepare_write, no_write, NULL);
	XLogBeginRead(ctx->reader, MyReplicationSlot->data.restart_lsn);
	ereport(LOG, (errmsg("apiary provenance: decoding from %X/%X",
						 LSN_FORMAT_ARGS(MyReplicationSlot->data.restart_lsn))));

	PG_TRY();
	{
		collect(ctx, cxt);
	}
	PG_CATCH();
	{
		/* apiary.provenance_status says so until a collector gets past it */
		SpinLockAcquire(&apiary_shared->mutex);
		apiary_shared->provenance_failed_at = GetCurrentTimestamp();
		apiary_shared->provenance_failed_lsn = ctx->reader->EndRecPtr;
		SpinLockRelease(&apiary_shared->mutex);
		PG_RE_THROW();
	}
	PG_END_TRY();

	/* off: nothing may hold WAL back any more */
	FreeDecodingContext(ctx);
	ReplicationSlotRelease();
	ReplicationSlotDrop(PROVENANCE_SLOT, true);
	ereport(LOG, (errmsg("apiary provenance is off: dropped replication slot \"%s\"",
						 PROVENANCE_SLOT)));
	proc_exit(0);
}
