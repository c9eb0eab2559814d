/*-------------------------------------------------------------------------
 *
 * guc.h
 *	  apiary's configuration parameters (apiary.*).
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_GUC_H
#define APIARY_GUC_H

/* The kinds a function can be registered as. */
typedef enum ApiaryKind
{
	APIARY_KIND_TRANSACTIONAL,
	APIARY_KIND_READONLY,
	APIARY_KIND_EXTERNAL,
} ApiaryKind;

#define APIARY_KIND_NAMES "transactional, readonly and external"

extern char *apiary_kind_setting;
extern char *apiary_database;
extern int	apiary_workers;
extern int	apiary_max_attempts;
extern bool apiary_synchronous_steps;
extern int	apiary_max_args_size;
extern int	apiary_max_args_depth;
extern int	apiary_max_output_size;
extern int	apiary_max_queued;
extern int	apiary_max_key_size;
extern int	apiary_stats_max;
extern int	apiary_retention;
extern int	apiary_ready_vacuum_threshold;
extern int	apiary_executor_max_memory;

typedef enum ApiaryProvenance
{
	APIARY_PROVENANCE_OFF,
	APIARY_PROVENANCE_WRITES,
	APIARY_PROVENANCE_ALL,
} ApiaryProvenance;
extern int	apiary_provenance;
extern int	apiary_provenance_max_reads;
extern int	apiary_provenance_nice;

extern void apiary_define_gucs(void);

/* Whether this session is connected to apiary.database, the executors' own. */
extern bool apiary_in_database(void);

/* Parse a kind name; false when it is none of the kinds. */
extern bool apiary_kind_parse(const char *name, ApiaryKind *kind);
extern const char *apiary_kind_name(ApiaryKind kind);

#endif							/* APIARY_GUC_H */
