#!/usr/bin/env bash
# The crash test (crash.sh) with apiary.synchronous_steps = off: steps that
# do not end their workflow commit without waiting for their WAL flush, so
# the kill -9 of the postmaster loses the last of them (the test servers
# run with fsync off, but WAL still in shared buffers dies with the
# processes).  The same checks must hold: every workflow done with the
# right output, every step's effect exactly once.
CRASH_CONF="apiary.synchronous_steps = off" exec bash "$(dirname "$0")/crash.sh"
