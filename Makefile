# Build, test and measure the per-interpreter tracemalloc fork of CPython.
#
#   make                      build the release interpreter; ./python points at it
#   make test                 build VARIANT=debug and run the test suite
#   make stress               build VARIANT=debug and run the stress harness
#                             for SECONDS=60 (SEED=<n> to replay a run,
#                             STRESS_ARGS="--tracing some" and the like)
#   make VARIANT=<name>       build one variant into build/<name>/
#   make install PREFIX=<dir> install the release variant (VARIANT= another)
#                             into <dir>; altinstall: no python3 link
#   make bench                build release and upstream, benchmark them (build/bench/)
#   make bench-ft             build ft-release and upstream-ft-release, benchmark
#                             them: overhead and 2 threads (build/bench-ft/)
#   make regress              CPython's tests on debug vs upstream-debug: regressions
#   make sanitize             tracemalloc tests + stress under ASan
#                             (VARIANT=tsan or tsan-gil: TSan)
#   make refresh              record edits made in build/src
#                             (see InternalDocs/fork.md)
#
# `make help` lists every target.

VARIANT ?= release
VARIANTS := release debug ft ft-release asan tsan tsan-gil upstream \
	upstream-debug upstream-ft upstream-ft-release upstream-asan \
	upstream-tsan upstream-tsan-gil
JOBS ?= $(shell nproc)
PYTHON_FOR_TOOLS ?= python3

# Sources: the fork's assembled tree, or the unpatched base (for reference).
SRC_release        := build/src
SRC_debug          := build/src
SRC_ft             := build/src
SRC_ft-release     := build/src
SRC_asan           := build/src
SRC_tsan           := build/src
SRC_tsan-gil       := build/src
SRC_upstream       := build/base
SRC_upstream-debug := build/base
SRC_upstream-ft    := build/base
SRC_upstream-ft-release := build/base
SRC_upstream-asan  := build/base
SRC_upstream-tsan  := build/base
SRC_upstream-tsan-gil := build/base

# configure options per variant.  PGO=1 makes release and upstream (and
# their free-threaded twins, ft-release and upstream-ft-release) PGO+LTO.
PGO ?=
OPT_FLAGS := $(if $(PGO),--enable-optimizations --with-lto,)
CONF_release        := $(OPT_FLAGS)
CONF_upstream       := $(OPT_FLAGS)
CONF_debug          := --with-pydebug
CONF_upstream-debug := --with-pydebug
CONF_ft             := --disable-gil --with-pydebug
CONF_ft-release     := --disable-gil $(OPT_FLAGS)
CONF_asan           := --with-pydebug --with-address-sanitizer --without-pymalloc
CONF_tsan           := --disable-gil --with-thread-sanitizer
CC_tsan             := clang
CONF_tsan-gil       := --with-thread-sanitizer
CC_tsan-gil         := clang
CC_asan             := gcc
# upstream-<variant>: the base built exactly like the fork's <variant>
CONF_upstream-ft    := $(CONF_ft)
CONF_upstream-ft-release := $(CONF_ft-release)
CONF_upstream-asan  := $(CONF_asan)
CONF_upstream-tsan  := $(CONF_tsan)
CC_upstream-tsan    := $(CC_tsan)
CONF_upstream-tsan-gil := $(CONF_tsan-gil)
CC_upstream-tsan-gil   := $(CC_tsan-gil)
CC_upstream-asan    := $(CC_asan)

ifeq ($(filter $(VARIANT),$(VARIANTS)),)
$(error unknown VARIANT '$(VARIANT)'; valid variants: $(VARIANTS))
endif

B := build/$(VARIANT)
CC_VARIANT := $(or $(CC_$(VARIANT)),gcc)
# Looked up when configure runs, after `deps` may have installed it: a
# fresh machine would otherwise configure without it, and configure again
# (a full build) once it is there.
CCACHE = $(shell command -v ccache 2>/dev/null)
# ccache keys paths relative to the checkout, so that another clone of the
# same sources (CI's) finds what this one compiled.
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := 1
CONFIGURE_ARGS = $(CONF_$(VARIANT)) CC="$(strip $(CCACHE) $(CC_VARIANT))"

# What `python -VV` shows: "(tmfork/<Debian revision of the base>:<commit>".
FORK_TAG := $(shell sed -n 's/^FORK_TAG=//p' base.conf)
# 3.13, for the names of what make install installs
PY_VERSION := $(shell sed -n 's/^BASE_VERSION=\([0-9]*\.[0-9]*\).*/\1/p' \
	base.conf)
BUILDINFO = $(if $(filter build/src,$(SRC_$(VARIANT))), \
	GITTAG="echo $(FORK_TAG)/$$(sed -n 's/.* from Debian //p' build/base.info)" \
	GITVERSION="echo $$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
	GITBRANCH="echo $(FORK_TAG)")

.PHONY: all build deps src configure install altinstall test regress stress \
	bench bench-ft sanitize refresh status discard fetch clean distclean help

all: build
ifeq ($(VARIANT),release)
	@ln -sfn build/release/python python
endif

help:
	@sed -n 's/^#   //p' Makefile
	@echo "targets: all install altinstall test stress regress bench bench-ft"
	@echo "         sanitize refresh"
	@echo "         status discard fetch clean distclean"
	@echo "variants (VARIANT=...): $(VARIANTS)"

deps:
	@scripts/deps.sh

src: deps
	@$(PYTHON_FOR_TOOLS) scripts/base.py assemble

fetch: deps
	@$(PYTHON_FOR_TOOLS) scripts/base.py fetch

# Re-run configure when its options change; otherwise build incrementally.
# The install prefix is one of them, but only `make install` asks for one:
# other targets build with the prefix the directory was last configured
# with (none at first: configure's /usr/local), which the build tree's own
# ./python does not use.
configure: src
	@mkdir -p $(B)
	@prefix='$(or $(INSTALL_PREFIX),$(shell cat $(B)/.prefix 2>/dev/null))'; \
	if [ ! -f $(B)/config.status ] || \
	    [ "$$(cat $(B)/.configure-args 2>/dev/null)" != '$(CONFIGURE_ARGS)' ] || \
	    [ "$$(cat $(B)/.prefix 2>/dev/null)" != "$$prefix" ]; then \
	    echo "configure $(VARIANT): $(CONFIGURE_ARGS)" \
	        "$${prefix:+--prefix=$$prefix}"; \
	    rm -f $(B)/.configure-args $(B)/.prefix; \
	    (cd $(B) && $(CURDIR)/$(SRC_$(VARIANT))/configure $(CONFIGURE_ARGS) \
	        $${prefix:+--prefix="$$prefix"} > configure.log 2>&1) || \
	        { tail -30 $(B)/configure.log; exit 1; }; \
	    echo '$(CONFIGURE_ARGS)' > $(B)/.configure-args; \
	    echo "$$prefix" > $(B)/.prefix; \
	fi

build: configure
	@echo "build $(VARIANT) (log: $(B)/build.log)"
	@# getbuildinfo.o, which holds the commit python -VV shows, is only
	@# rebuilt when other objects change: drop it when the commit did.
	@if [ -n "$(filter build/src,$(SRC_$(VARIANT)))" ]; then \
	    commit=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown); \
	    [ "$$(cat $(B)/.commit 2>/dev/null)" = "$$commit" ] || \
	        rm -f $(B)/Modules/getbuildinfo.o; \
	    echo "$$commit" > $(B)/.commit; \
	fi
	@$(MAKE) -C $(B) -j$(JOBS) $(BUILDINFO) > $(B)/build.log 2>&1 || \
	    { grep -E -B2 -A6 'error|Error' $(B)/build.log | tail -60; exit 1; }
	@$(B)/python -VV

# Install as CPython does (`install`: python3.13 and the python3 links;
# `altinstall`: python3.13 only), into PREFIX, configured as the variant's
# prefix so that sysconfig and python3.13-config name it.  PREFIX is
# checked first: it must be, or be creatable as, a writable directory.
ifneq ($(filter install altinstall,$(MAKECMDGOALS)),)
ifeq ($(strip $(PREFIX)),)
$(error usage: make $(filter install altinstall,$(MAKECMDGOALS)) \
	PREFIX=/dir [VARIANT=name])
endif
INSTALL_PREFIX := $(abspath $(PREFIX))
PREFIX_ERROR := $(shell p='$(INSTALL_PREFIX)'; d=$$(dirname "$$p"); \
	if [ -e "$$p" ] && [ ! -d "$$p" ]; then echo "it is not a directory"; \
	elif [ ! -e "$$p" ] && [ ! -d "$$d" ]; then \
	    echo "its parent directory $$d does not exist"; \
	elif [ ! -e "$$p" ] && ! mkdir "$$p" 2>/dev/null; then \
	    echo "it cannot be created in $$d"; \
	elif ! t=$$(mktemp -p "$$p" .tmfork-XXXXXX 2>/dev/null); then \
	    echo "it is not writable"; \
	else rm -f "$$t"; fi)
ifneq ($(PREFIX_ERROR),)
$(error cannot install into PREFIX=$(PREFIX): $(PREFIX_ERROR))
endif
endif

install altinstall: build
	@echo "$@ $(VARIANT) into $(INSTALL_PREFIX) (log: $(B)/$@.log)"
	@$(MAKE) -C $(B) $@ > $(B)/$@.log 2>&1 || { tail -30 $(B)/$@.log; exit 1; }
	@v=$$($(INSTALL_PREFIX)/bin/python$(PY_VERSION) -VV) && echo "installed: $$v"

# The suite: upstream's tests of tracemalloc and its neighbours, plus ours.
FORK_TESTS := $(notdir $(basename $(wildcard Lib/test/test_tracemalloc_*.py)))
TESTS ?= test_tracemalloc test_embed test_capi test_interpreters \
	test__interpreters $(FORK_TESTS)
test: VARIANT_TEST = $(if $(filter command line environment,$(origin VARIANT)),$(VARIANT),debug)
test:
	@$(MAKE) --no-print-directory build VARIANT=$(VARIANT_TEST)
	@$(PYTHON_FOR_TOOLS) scripts/run-tests.py build/$(VARIANT_TEST)/python $(TESTS)

# Benchmarks, fork vs upstream (see Tools/tracemalloc/bench.py --help);
# BENCH_ARGS=--quick for a smoke run.  Measures, never fails on a target.
bench:
	@$(MAKE) --no-print-directory build VARIANT=release
	@$(MAKE) --no-print-directory build VARIANT=upstream
	@$(PYTHON_FOR_TOOLS) Tools/tracemalloc/bench.py --fork build/release/python \
	    --upstream build/upstream/python --out build/bench $(BENCH_ARGS)

# The free-threaded builds: 1-frame overhead, and 2 threads of one
# interpreter vs 1 (bench.py --ft); BENCH_ARGS as for bench.
bench-ft:
	@$(MAKE) --no-print-directory build VARIANT=ft-release
	@$(MAKE) --no-print-directory build VARIANT=upstream-ft-release
	@$(PYTHON_FOR_TOOLS) Tools/tracemalloc/bench.py --ft \
	    --fork build/ft-release/python --upstream build/upstream-ft-release/python \
	    --out build/bench-ft $(BENCH_ARGS)

# The stress harness: a seeded random mix over many interpreters and threads
# that checks tracemalloc's invariants (Tools/tracemalloc/stress.py --help).
SECONDS ?= 60
SEED ?=
STRESS_ARGS ?=
stress: VARIANT_STRESS = $(if $(filter command line environment,$(origin VARIANT)),$(VARIANT),debug)
stress:
	@$(MAKE) --no-print-directory build VARIANT=$(VARIANT_STRESS)
	@build/$(VARIANT_STRESS)/python Tools/tracemalloc/stress.py \
	    --seconds $(SECONDS) $(if $(SEED),--seed $(SEED)) $(STRESS_ARGS)

# Sanitizer runs (VARIANT=asan, the default, tsan or tsan-gil): the
# tracemalloc tests and a stress run, failing on any sanitizer report.  Leak
# reports are off, as in CPython's own CI; TSan uses CPython's suppressions
# for the build (free-threaded or default) and ours (each entry says why it
# is there).
SAN_ENV_asan := ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:handle_segv=0
SAN_ENV_tsan := TSAN_OPTIONS="halt_on_error=0:exitcode=66:allocator_may_return_null=1:suppressions=$(CURDIR)/build/tsan.supp"
SAN_ENV_tsan-gil := $(SAN_ENV_tsan)
TSAN_SUPP_tsan := build/src/Tools/tsan/suppressions_free_threading.txt
TSAN_SUPP_tsan-gil := build/src/Tools/tsan/suppressions.txt
sanitize: VARIANT_SAN = $(if $(filter command line environment,$(origin VARIANT)),$(VARIANT),asan)
sanitize:
	@case "$(VARIANT_SAN)" in asan|tsan|tsan-gil) ;; \
	    *) echo "make sanitize: VARIANT must be asan, tsan or tsan-gil"; \
	       exit 2;; esac
	@$(MAKE) --no-print-directory build VARIANT=$(VARIANT_SAN)
	@cat $(or $(TSAN_SUPP_$(VARIANT_SAN)),$(TSAN_SUPP_tsan)) \
	    Tools/tsan/tracemalloc_suppressions.txt > build/tsan.supp
	@$(SAN_ENV_$(VARIANT_SAN)) $(PYTHON_FOR_TOOLS) scripts/run-tests.py \
	    build/$(VARIANT_SAN)/python test_tracemalloc $(FORK_TESTS)
	@$(SAN_ENV_$(VARIANT_SAN)) build/$(VARIANT_SAN)/python \
	    Tools/tracemalloc/stress.py --seconds $(SECONDS) \
	    $(if $(SEED),--seed $(SEED)) $(STRESS_ARGS)

# CPython's own tests around tracemalloc, fork vs base built the same way:
# lists every test that passes on the base but fails on the fork
# (REGRESS_ARGS=--keep-base reuses the base's report from an earlier run).
regress:
	@$(MAKE) --no-print-directory build VARIANT=debug
	@$(MAKE) --no-print-directory build VARIANT=upstream-debug
	@$(PYTHON_FOR_TOOLS) scripts/regress.py --fork build/debug/python \
	    --base build/upstream-debug/python --out build/regress $(REGRESS_ARGS)

refresh:
	@$(PYTHON_FOR_TOOLS) scripts/base.py refresh

status:
	@$(PYTHON_FOR_TOOLS) scripts/base.py status

discard:
	@$(PYTHON_FOR_TOOLS) scripts/base.py discard

clean:
	rm -rf $(B)

distclean:
	rm -rf build python
