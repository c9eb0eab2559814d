# apiary — PGXS build.  See README.md for the two commands that matter.

EXTENSION = apiary
MODULE_big = apiary
OBJS = \
	src/apiary.o \
	src/bind.o \
	src/bindrules.o \
	src/executor.o \
	src/guc.o \
	src/invoke.o \
	src/journal.o \
	src/launcher.o \
	src/names.o \
	src/provenance.o \
	src/queue.o \
	src/registry.o \
	src/sketch.o \
	src/stats.o \
	src/workflow.o

DATA = src/sql/apiary--0.1.sql src/sql/apiary--0.1--0.2.sql src/sql/apiary--0.2--0.3.sql src/sql/apiary--0.3--0.4.sql \
	src/sql/apiary--0.4--0.5.sql src/sql/apiary--0.5--0.6.sql \
	src/sql/apiary--0.6--0.7.sql src/sql/apiary--0.7--0.8.sql src/sql/apiary--0.8--0.9.sql \
	src/sql/apiary--0.9--0.10.sql src/sql/apiary--0.10--0.11.sql src/sql/apiary--0.11--0.12.sql \
	src/sql/apiary--0.12--0.13.sql src/sql/apiary--0.13--0.14.sql \
	src/sql/apiary--0.14--0.15.sql
PGFILEDESC = "apiary - transactional functions and workflows inside PostgreSQL"
# the public C API, for functions written in C
HEADERS_apiary = src/apiary.h

PG_CPPFLAGS = -I$(srcdir)/src
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare \
	-Wno-missing-field-initializers -Wno-clobbered -Werror

# The regression suite needs apiary in shared_preload_libraries, so it runs
# on a temporary instance of its own (as pg_stat_statements does).
REGRESS = registry invoke keys nested errors workflows security observability upgrade lifecycle
REGRESS_OPTS = --temp-config=$(srcdir)/test/apiary.conf \
	$(if $(shell $(shell $(PG_CONFIG) --bindir)/postgres --describe-config 2>/dev/null | grep '^output_plugin_libraries'),--temp-config=$(srcdir)/test/output_plugins.conf) \
	--temp-instance=./tmp_check --port=54329 --encoding=UTF8
ISOLATION = keys_race prepared registry_cache registry_races drop_race
ISOLATION_OPTS = --temp-config=$(srcdir)/test/apiary_isolation.conf \
	--temp-instance=./tmp_check_iso --port=54330

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: rebuild everything when a header changes
$(OBJS): $(wildcard src/*.h)

.PHONY: unit
unit:
	$(MAKE) -C test/unit
