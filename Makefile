# kvcd - one non-recursive Makefile.
#
#   make                      build kvcd, kvcdctl and the client library
#   make test                 build and run every tests/test_*.c (Check) binary
#   make SANITIZE=address,undefined test
#                             the same in its own build directory, with sanitizers
#   make bench                build the benchmark programs
#   make install PREFIX=/usr/local
#
# Warnings are errors (WERROR=0 to relax locally).

CC ?= cc
PREFIX ?= /usr/local
WERROR ?= 1
SANITIZE ?=

ifeq ($(SANITIZE),)
BUILD ?= build
else
BUILD ?= build-san
endif

# msgpack-c's pkg-config name is "msgpack" on Debian 12, "msgpack-c" later.
MSGPACK_PC := $(shell pkg-config --exists msgpack-c && echo msgpack-c || echo msgpack)
PKGS := libuv libzmq $(MSGPACK_PC) jansson libxxhash hiredis libmicrohttpd

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS := $(shell pkg-config --libs $(PKGS))
CHECK_CFLAGS := $(shell pkg-config --cflags check)
CHECK_LIBS := $(shell pkg-config --libs check)

CFLAGS ?= -O2 -g
WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -Wno-unused-parameter -Wformat=2
ifeq ($(WERROR),1)
WARN += -Werror
endif
ALL_CFLAGS := -std=gnu11 $(WARN) $(CFLAGS) -D_GNU_SOURCE -fPIC -I. $(PKG_CFLAGS) -MMD -MP
ALL_LDFLAGS := $(LDFLAGS) -pthread -rdynamic
ifneq ($(SANITIZE),)
ALL_CFLAGS += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
ALL_LDFLAGS += -fsanitize=$(SANITIZE)
endif

# Sources -----------------------------------------------------------------------
PROTO_SRC := protocol/blake3.c protocol/err.c protocol/key.c protocol/lmcache.c protocol/proto.c
CLIENT_SRC := protocol/client.c
CORE_SRC := $(filter-out daemon/main.c,$(wildcard daemon/*.c)) $(wildcard conf/*.c)
ADAPTER_SRC := $(wildcard adapters/*.c)
# An adapter that grows keeps its helpers in adapters/<name>/*.c (not in the table).
ADAPTER_HELPER_SRC := $(wildcard adapters/*/*.c)
ADAPTER_GEN := $(BUILD)/gen/adapter_table.c

PROTO_OBJ := $(PROTO_SRC:%.c=$(BUILD)/%.o)
CLIENT_OBJ := $(CLIENT_SRC:%.c=$(BUILD)/%.o)
CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/%.o) $(ADAPTER_SRC:%.c=$(BUILD)/%.o) \
            $(ADAPTER_HELPER_SRC:%.c=$(BUILD)/%.o) \
            $(BUILD)/gen/adapter_table.o

LIBPROTO := $(BUILD)/libkvcdproto.a
LIBCLIENT := $(BUILD)/libkvcdclient.a
LIBCORE := $(BUILD)/libkvcdcore.a

KVCD := $(BUILD)/kvcd
KVCDCTL := $(BUILD)/kvcdctl

TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_PLUGIN_SRC := $(wildcard tests/plugins/*.c)
TEST_PLUGINS := $(TEST_PLUGIN_SRC:tests/plugins/%.c=$(BUILD)/tests/plugins/%.so)
TEST_SUPPORT := $(filter-out $(TEST_SRC),$(wildcard tests/*.c))
TEST_SUPPORT_OBJ := $(TEST_SUPPORT:%.c=$(BUILD)/%.o)

# The LMCache compatibility tests: a Python virtual environment with the pinned
# lmcache 0.5.6 client side (scripts/test-venv.sh; one for both builds: it holds
# no code of ours) and kvcd's LMCache codec as a ctypes-loadable object, built
# without sanitizers (Python is not instrumented).
VENV := build/venv
VENV_STAMP := $(VENV)/.kvcd-requirements
LMC_SHIM := $(BUILD)/tests/python/libkvcd_lmc.so
LMC_SHIM_SRC := tests/python/lmc_shim.c protocol/lmcache.c $(PROTO_SRC)

BENCH_SRC := $(wildcard tests/bench/*.c)
BENCH_BIN := $(BENCH_SRC:tests/bench/%.c=$(BUILD)/bench/%)

.DEFAULT_GOAL := all
# Keep test objects: deleting them as intermediates races with edits.
.SECONDARY:
.PHONY: all test bench install clean check-format run venv

# The README's first command: L1 plus an fs L2 in ./kvcd-data.
RUN_FLAGS ?= --config conf/examples/default.json
run: all
	$(KVCD) $(RUN_FLAGS)
all: $(KVCD) $(KVCDCTL) $(LIBCLIENT)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

# The adapter table is written from the list of adapters/*.c: each file defines
# `const kvcd_adapter_t kvcd_adapter_<name>`; adding an adapter is adding a file.
$(ADAPTER_GEN): $(ADAPTER_SRC) Makefile scripts/gen-adapter-table.sh
	@mkdir -p $(dir $@)
	sh scripts/gen-adapter-table.sh $(ADAPTER_SRC) > $@.tmp && mv $@.tmp $@

$(BUILD)/gen/adapter_table.o: $(ADAPTER_GEN)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(LIBPROTO): $(PROTO_OBJ)
	rm -f $@ && ar rcs $@ $^
$(LIBCLIENT): $(CLIENT_OBJ) $(PROTO_OBJ)
	rm -f $@ && ar rcs $@ $^
$(LIBCORE): $(CORE_OBJ)
	rm -f $@ && ar rcs $@ $^

$(KVCD): $(BUILD)/daemon/main.o $(LIBCORE) $(LIBPROTO)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS) -ldl -lm
$(KVCDCTL): $(BUILD)/protocol/kvcdctl.o $(LIBCLIENT)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS) -lm

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(TEST_SUPPORT_OBJ) $(LIBCORE) $(LIBCLIENT)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(PKG_LIBS) -ldl -lm
# test_oom fails the core's own allocations on demand (tests/test_oom.c).
$(BUILD)/tests/test_oom: ALL_LDFLAGS += -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc
$(BUILD)/tests/%.o: tests/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) -c -o $@ $<
$(BUILD)/tests/plugins/%.so: tests/plugins/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -shared -o $@ $< $(ALL_LDFLAGS)

$(BUILD)/bench/%: tests/bench/%.c $(LIBCORE) $(LIBCLIENT)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $(filter %.c %.a,$^) $(PKG_LIBS) -ldl -lm

bench: all $(BENCH_BIN)

$(LMC_SHIM): $(sort $(LMC_SHIM_SRC)) protocol/lmcache.h protocol/proto.h
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 $(WARN) -O2 -g -D_GNU_SOURCE -fPIC -I. $(PKG_CFLAGS) -shared -o $@ \
	    $(sort $(LMC_SHIM_SRC)) $(PKG_LIBS) -lm

$(VENV_STAMP): tests/python/requirements.txt tests/python/requirements-nodeps.txt \
               scripts/test-venv.sh
	sh scripts/test-venv.sh $(dir $(VENV))
venv: $(VENV_STAMP)

# Every test binary runs, even after a failure; the target fails if any did.
# The trace replay (issue 12) runs too: its --check fails when the daemon's
# hit ratio differs from strict LRU or a restart loses hits.
test: all $(TEST_BIN) $(TEST_PLUGINS) $(LMC_SHIM) $(VENV_STAMP) $(BUILD)/bench/bench_replay
	@fail=0; for t in $(TEST_BIN); do \
	    echo "== $$t"; \
	    KVCD_BIN=$(abspath $(KVCD)) KVCDCTL_BIN=$(abspath $(KVCDCTL)) \
	    KVCD_SRCDIR=$(CURDIR) KVCD_BUILD=$(abspath $(BUILD)) \
	    KVCD_VENV=$(abspath $(VENV)) KVCD_LMC_SHIM=$(abspath $(LMC_SHIM)) \
	    $$t || fail=1; \
	done; \
	echo "== $(BUILD)/bench/bench_replay --check"; \
	KVCD_BIN=$(abspath $(KVCD)) $(BUILD)/bench/bench_replay --check || fail=1; \
	if [ $$fail -ne 0 ]; then echo "make test: FAILED"; exit 1; fi; \
	echo "make test: all test binaries passed"

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/kvcd
	install -m 0755 $(KVCD) $(KVCDCTL) $(DESTDIR)$(PREFIX)/bin/
	install -m 0755 scripts/kvcd-launch.sh $(DESTDIR)$(PREFIX)/bin/kvcd-launch
	install -m 0644 $(LIBCLIENT) $(DESTDIR)$(PREFIX)/lib/
	install -m 0644 protocol/client.h protocol/key.h protocol/kvcd_err.h \
	    $(DESTDIR)$(PREFIX)/include/kvcd/

check-format:
	clang-format --dry-run --Werror daemon/*.[ch] protocol/*.[ch] conf/*.[ch] adapters/*.[ch] tests/*.[ch]

clean:
	rm -rf build build-san

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
