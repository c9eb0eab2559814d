/*-------------------------------------------------------------------------
 *
 * workflow.h
 *	  The workflow API (workflow.c): what the launcher calls of it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef APIARY_WORKFLOW_H
#define APIARY_WORKFLOW_H

/*
 * Cancel the running workflows whose deadline (apiary_start's timeout) has
 * come, and clear passed deadlines; one batch, in a transaction of its
 * own.  True when the batch was full and more may be due.
 */
extern bool apiary_expire_workflows(void);

#endif							/* APIARY_WORKFLOW_H */
