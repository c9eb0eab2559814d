/*-------------------------------------------------------------------------
 *
 * queue.h
 *	  The workflow tables (apiary.workflows, apiary.tasks, apiary.waits,
 *	  apiary.ready, apiary.links), read and written by direct heap and
 *	  index access.
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_QUEUE_H
#define APIARY_QUEUE_H

#include "nodes/pg_list.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

typedef enum QueueState
{
	QS_WAITING,					/* futures among its arguments not done yet */
	QS_PENDING,					/* ready to run at run_after */
	QS_LINKED,					/* ran, and returned a future not done yet */
	QS_DONE,
	QS_FAILED,
	QS_CANCELLED,
} QueueState;

extern const char *queue_state_name(QueueState state);

/* A task an executor claimed. */
typedef struct QueueTask
{
	int64		id;
	Oid			role;
	text	   *workflow;
	char	   *function;
	Jsonb	   *args;
	int			attempts;		/* attempts made before this one */
	char	   *search_path;	/* when it was queued */
	Oid			fn_owner;		/* its function's then, or InvalidOid (0.11) */
	char	  **settings;		/* queue_setting_names' values then, or NULL (0.14) */
	int			nsettings;
} QueueTask;

/*
 * The settings a task runs with, as the session that queued it had them
 * (apiary.tasks.settings holds their values in this order): those that
 * change how its arguments and output convert to and from JSON, and how
 * its function reads and shows dates and times.
 */
#define QUEUE_NSETTINGS 6
extern const char *const queue_setting_names[QUEUE_NSETTINGS];

/* Register the invalidation callback of the tables' cached OIDs (_PG_init). */
extern void queue_init(void);

/* An executor keeps the tables open to the end of each transaction. */
extern void queue_keep_open(void);

/* Are the workflow tables there, as this library writes them? */
extern bool queue_installed(void);

/*
 * Claim a ready task: take its row out of apiary.ready, skipping rows
 * other executors have taken.  Tries task prefer first, when not 0.
 * Returns false when none is ready, with *next_due set to the earliest
 * retry that is not due yet (0 if none).
 */
extern bool queue_claim(int64 prefer, QueueTask *task, TimestampTz *next_due);

/* Claim task id only, if it is ready and no other executor has it. */
extern bool queue_take(int64 id, QueueTask *task);

/*
 * Queue a task; futures lists the ids (int64 *) of the futures among its
 * arguments that are not done yet: it waits for them.  Returns its id.
 */
extern int64 queue_add_task(Oid role, text *workflow, int64 parent,
							const char *function, Oid fn_owner, Jsonb *args,
							List *futures);

/*
 * Has (role, id) been started?  Then true, with the recorded call.  Waits
 * for a concurrent start of the same id to end, and keeps it waiting to
 * the end of the (sub)transaction: look before queue_add_workflow.
 */
extern bool queue_find_workflow(Oid role, text *id, char **recorded_function,
								Jsonb **recorded_args);

/*
 * Start workflow (role, id), which queue_find_workflow did not find (or
 * whose id is generated: random, new), with its root task, and return the
 * task's id.  A timeout (NULL: none) sets its deadline that long after its
 * start.
 */
extern int64 queue_add_workflow(Oid role, text *id, const char *function,
								Oid fn_owner, Jsonb *args, Interval *timeout);

/*
 * The OID of apiary.tasks, which a DROP and CREATE EXTENSION changes, as
 * they start task ids over.
 */
extern Oid	queue_tasks_relid(void);

/* Done, failed or cancelled: nothing more will happen to it. */
extern bool queue_finished_state(QueueState state);

/*
 * A future's state and its output or error, if it is a task of this
 * workflow; errors out otherwise.  *foreign (unless NULL) says whether
 * another transaction queued it.  With hold, a foreign future not yet
 * finished is locked until this transaction ends, so that its finish sees
 * the wait or link this transaction made for it.
 */
extern QueueState queue_future(int64 id, Oid role, text *workflow, bool hold,
							   bool *foreign, Jsonb **output, Jsonb **error);

/*
 * One of waiter's futures is done, which its finish could not tell it (see
 * queue_future): true if that was its last, and it is ready now.
 */
extern bool queue_release(int64 waiter);

/*
 * ... or it failed or was cancelled, with failure: waiter is cancelled, as
 * that future's finish would have done, if it is still waiting (and if it
 * exists: a rolled-back subtransaction may have taken it back).
 */
extern void queue_cancel_waiter(int64 waiter, int64 future, Jsonb *failure);

/*
 * Record a task's outcome: QS_DONE with its output, QS_FAILED or
 * QS_CANCELLED with its error.  ran_at is when the attempt that produced
 * it started, or 0 when none ran.  What depended on the task follows:
 * tasks that returned it as their future take the same outcome, tasks
 * waiting for it become ready when it was their last future (done) or are
 * cancelled (failed), and a root task finishes its workflow (whose
 * apiary_result waiters are woken at commit).  Returns how many tasks
 * became ready; their ids go to released, up to max_released.
 */
extern int	queue_finish(int64 id, QueueState state, Jsonb *value,
						 TimestampTz ran_at, int64 *released, int max_released);

/*
 * Does the unfinished future wait, through the futures it waits for or
 * returned, for task's output?  Then task cannot return it: neither would
 * ever finish.  Asked under queue_lock_links, which a task that returns a
 * future it did not just queue holds to its commit, so that two such
 * tasks of a workflow cannot each miss the link the other makes.
 */
extern void queue_lock_links(Oid role, text *workflow);
extern bool queue_depends_on(int64 future, int64 task);

/*
 * The task ran and returned future, which is not done yet: it takes the
 * future's outcome when that comes.  One that failed already (failed, with
 * its error) fails the task now, linked still: apiary_resume puts the task
 * back to linked, not to pending, for its attempt has committed.
 */
extern void queue_link(int64 id, int64 future, TimestampTz ran_at,
					   bool failed, Jsonb *error);

/*
 * The task ran and failed with error; run it again after delay seconds.
 * The error stays on the pending task, for apiary_status, until the next
 * attempt's outcome.
 */
extern void queue_retry(int64 id, double delay, TimestampTz ran_at, Jsonb *error);

/* Count a crash of the server while task ran: the new count, 0 if not pending. */
extern int	queue_count_crash(int64 id, char **function);

/*
 * Cancelling.  An executor calls queue_workflow_cancelled before it lets a
 * task's effects stand; apiary_cancel calls queue_lock_workflow before it
 * marks a workflow cancelled (or resumes it).  The locks they take (shared,
 * exclusive; until the end of the transaction) keep a cancel from falling
 * between an executor's check and its commit; a count in shared memory of
 * the exclusive ones taken lets the check skip reading a workflow this
 * executor found running when no cancel has begun since.  A task of a
 * finished workflow is cancelled on its own row.  timed_out says whether
 * the cancel was the launcher's, at the workflow's deadline.
 */
extern bool queue_workflow_cancelled(Oid role, text *workflow, int64 task,
									 bool *timed_out);
extern void queue_lock_workflow(Oid role, text *workflow);

#endif							/* APIARY_QUEUE_H */
