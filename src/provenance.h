/*-------------------------------------------------------------------------
 *
 * provenance.h
 *	  Which rows apiary functions read and wrote (apiary.provenance).
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_PROVENANCE_H
#define APIARY_PROVENANCE_H

#include "access/xlogdefs.h"
#include "utils/hsearch.h"
#include "lib/stringinfo.h"

/*
 * One invocation in progress, on the C stack of whoever runs it (an
 * executor running a task, apiary_invoke).  Frames nest as calls do.
 */
typedef struct ProvenanceFrame
{
	struct ProvenanceFrame *parent;
	bool		active;			/* recording for this invocation */
	XLogRecPtr	start;			/* WAL insert position when it began */
	/* apiary.provenance = all: the rows it read */
	MemoryContext cxt;
	StringInfoData reads;
	int			nreads;
	int			skipped;		/* over apiary.provenance_max_reads, or
								 * READS_BYTES_MAX */
	HTAB	   *seen;
	MemoryContext scratch;		/* one read's conversion */
} ProvenanceFrame;

/* _PG_init: the executor hook that sees reads. */
extern void provenance_init(void);

/*
 * Around every invocation: begin before the function runs; note its end
 * (in its transaction) once it returned; pop always, also on error.
 */
extern void provenance_begin(ProvenanceFrame *pf);
extern void provenance_note(ProvenanceFrame *pf, Oid role, text *workflow,
							int64 task, const char *function);
extern void provenance_pop(ProvenanceFrame *pf);

/*
 * At shared memory's creation, in the postmaster: the key that signs
 * provenance messages, read from the data directory, or made and written
 * there the first time.  False (logged) if neither could be done.
 */
extern bool provenance_load_key(uint8 *key);

/* The collector, a background worker started by the launcher. */
extern bool provenance_wanted(void);
extern PGDLLEXPORT void apiary_provenance_main(Datum main_arg);

/* Is a provenance collector running (started by this launcher or another)? */
extern bool apiary_collector_running(void);

#define PROVENANCE_SLOT "apiary_provenance"

#endif							/* APIARY_PROVENANCE_H */
