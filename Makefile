# weightd — plain Makefile. `make help` lists the targets.
#
# Build flavours share this file and differ only in the build directory:
#   make            release build in build/
#   make SAN=1      AddressSanitizer + UndefinedBehaviorSanitizer in build-san/
#   make TSAN=1     ThreadSanitizer in build-tsan/ (ring tests)
#   make STATIC=1   Debian libraries linked statically in build-static/ (for GPU machines)
# Every .c file in a layer folder joins the internal library; every tests/test_*.c is
# one test program; every cmd/*.c with a main() is named in BINS below.

SAN ?= 0
TSAN ?= 0
STATIC ?= 0
CC ?= cc

ifeq ($(SAN),1)
BUILD ?= build-san
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
else ifeq ($(TSAN),1)
BUILD ?= build-tsan
SANFLAGS := -fsanitize=thread
else ifeq ($(STATIC),1)
BUILD ?= build-static
CONFIGURE_FLAGS := --static
else
BUILD ?= build
endif

# `make run` and `make test` install ./configure's prerequisites before anything is built,
# then call make again. GNU make remakes an included makefile (here: runs ./configure) before
# it runs any goal, so config.mk is left out when those goals, which build nothing
# themselves, are the only ones asked for; the inner make includes it.
PRECONFIG_GOALS := deps deps-test run test help clean gpu-check bench-peers
ifneq ($(filter-out $(PRECONFIG_GOALS),$(or $(MAKECMDGOALS),all)),)
include $(BUILD)/config.mk
endif

WARN := -Wall -Wextra -Wshadow -Wno-unused-parameter -Wstrict-prototypes -Wmissing-prototypes
CFLAGS ?= -O2 -g
ALL_CFLAGS := -std=gnu11 $(CFLAGS) $(WARN) -pthread -fPIC -D_GNU_SOURCE \
	-I$(BUILD) -I. -Iinclude $(CUDA_CFLAGS) $(SANFLAGS)
ALL_LDFLAGS := $(LDFLAGS) -pthread $(SANFLAGS)

LAYER_SRCS := $(wildcard core/*/*.c shm/*.c uring/*.c gpu/*.c)
LAYER_OBJS := $(LAYER_SRCS:%.c=$(BUILD)/%.o)
CTL_SRCS := $(wildcard cmd/ctl_*.c)
CTL_OBJS := $(CTL_SRCS:%.c=$(BUILD)/%.o)
TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
TEST_HELPER_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tests/helpers*.c))
BENCH_SRCS := $(wildcard bench/bench_*.c)
BENCH_BINS := $(BENCH_SRCS:bench/%.c=$(BUILD)/bench/%)
INTERNAL_LIB := $(BUILD)/libwd-internal.a
BINS := $(BUILD)/weightctl $(if $(wildcard cmd/weightd.c),$(BUILD)/weightd)
# libweightd: the public client library (include/weightd.h), the client side of shm/.
CLIENT_SRCS := $(wildcard shm/client*.c shm/attach.c shm/ring.c shm/segment.c shm/registry.c \
	shm/registry_view.c \
	shm/stats.c) \
	core/base/log.c core/base/time.c core/base/units.c core/format/st_dtype.c
# The GPU tier's import side (weightd_device_map_opts): the device layer and the conversion
# routines the emulated device runs (core/format/convert.c). The client library links no internal
# archive, and needs libc alone (dlopen of the CUDA driver and threads are in glibc).
CLIENT_GPU_SRCS := $(wildcard gpu/device.c gpu/emu_dev.c gpu/emu_rules.c gpu/emu_mem.c gpu/emu_stream.c \
	gpu/cuda_dev.c gpu/cuda_none.c gpu/cuda.c) \
	core/format/convert.c
CLIENT_LIB := $(if $(wildcard shm/client.c),$(BUILD)/libweightd.so $(BUILD)/weightd.pc)

.PHONY: all deps run test check test-unit pyenv test-san test-tsan test-gpu fuzz fuzz-ci bench-scan \
	bench-ring bench-load bench-hit bench-python clean help gpu-bundle gpu-check
.DEFAULT_GOAL := all

# A libcuda.so.1 stand-in whose every entry point succeeds (tests/test_gpu.c, driver loading).
CUDA_STUB := $(BUILD)/tests/libcuda-stub.so

all: $(BINS) $(CLIENT_LIB) $(TEST_BINS) $(BENCH_BINS) $(CUDA_STUB)
	$(if $(filter out,$(GPU_TIER)),@echo "NOTE: the GPU tier is compiled out of $(BUILD)/ (no CUDA toolkit headers): weightd serves the host tier only")
$(CUDA_STUB): tests/cuda_stub.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -fPIC -shared -o $@ $<

help:
	@echo "make run         install missing packages, build, run the daemon on demo models"
	@echo "make test        build and run every test (unit, integration, ASan+UBSan, fuzz)"
	@echo "make test-unit   run the test suite on the release build only"
	@echo "make install     install into DESTDIR/PREFIX (default /usr/local); also uninstall"
	@echo "make bench-scan  discovery benchmark (10,000 and 100,000 files)"
	@echo "make bench-ring  ring round-trip latency and throughput vs. baselines"
	@echo "make bench-load  disk -> host cache through the daemon vs. best warm read/raw O_DIRECT (SIZE=1G)"
	@echo "make bench-hit   new process: attach + resolve 1,000 resident tensors"
	@echo "make bench-python  new Python process: 1,000 resident tensors vs. file read"
	@echo "make bench-peers weightd vs. safetensors, fastsafetensors, Run:ai, from_pretrained (SIZE=2G)"
	@echo "make bench-gpu   disk/host -> VRAM vs. pinned H2D, storage, safetensors (SIZE=1G)"
	@echo "make test-tsan   ring tests under ThreadSanitizer (clang)"
	@echo "make fuzz        run the libFuzzer targets for FUZZ_SECONDS (default 60)"
	@echo "make test-gpu    device-tier tests on the real CUDA driver (SKIP, exit 77, without)"

$(BUILD)/config.mk $(BUILD)/config-host.h: configure
	./configure --builddir=$(BUILD) --cc=$(CC) $(CONFIGURE_FLAGS)

$(BUILD)/%.o: %.c $(BUILD)/config-host.h
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(INTERNAL_LIB): $(LAYER_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/weightctl: $(BUILD)/cmd/weightctl.o $(CTL_OBJS) $(INTERNAL_LIB)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(DEP_LIBS)

$(BUILD)/weightd: $(BUILD)/cmd/weightd.o $(INTERNAL_LIB)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(DEP_LIBS)

$(BUILD)/libweightd.so: $(CLIENT_SRCS:%.c=$(BUILD)/%.o) $(CLIENT_GPU_SRCS:%.c=$(BUILD)/%.o) \
		shm/libweightd.map
	$(CC) $(ALL_LDFLAGS) -shared -Wl,-soname,libweightd.so.$(WD_SOVERSION) \
		-Wl,--version-script=shm/libweightd.map -Wl,--no-undefined -o $@ $(filter %.o,$^) \
		-Wl,--as-needed -ldl -lpthread -Wl,--no-as-needed
	ln -sf libweightd.so $@.$(WD_SOVERSION)

WD_SOVERSION := 1
WD_VERSION := 0.2.0
# The /metrics build_info label (core/daemon/metrics.c).
$(BUILD)/core/daemon/metrics.o $(BUILD)/cmd/weightd.o: ALL_CFLAGS += -DWD_VERSION='"$(WD_VERSION)"'
# The client library's users of XXH3 take it inline (xxhash.h's XXH_INLINE_ALL), so that
# libweightd.so needs libc alone (ldd, readelf -d).
$(BUILD)/shm/registry.o $(BUILD)/shm/registry_view.o $(BUILD)/gpu/emu_stream.o: \
	ALL_CFLAGS += -DXXH_INLINE_ALL
PREFIX ?= /usr/local
$(BUILD)/weightd.pc: Makefile
	@printf 'prefix=%s\nlibdir=$${prefix}/lib\nincludedir=$${prefix}/include\n\nName: weightd\nDescription: weightd client library (shared-memory model residency)\nVersion: %s\nLibs: -L$${libdir} -lweightd\nCflags: -I$${includedir}\n' '$(PREFIX)' '$(WD_VERSION)' > $@

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(TEST_HELPER_OBJS) $(INTERNAL_LIB)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(DEP_LIBS) -lcmocka

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(INTERNAL_LIB)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(DEP_LIBS)

# What `make run` needs (build and run), and what `make test` needs on top (scripts/install-deps.sh).
deps:
	@scripts/install-deps.sh run
deps-test:
	@scripts/install-deps.sh test

# The demo: a small generated model set under .run/ and the daemon serving it in the
# foreground (it scans --models at start); Ctrl-C stops it.
RUN_DIR := .run
run: deps
	@$(MAKE) --no-print-directory $(BINS) $(CLIENT_LIB)
	@test -d $(RUN_DIR)/models || $(BUILD)/weightctl gen --preset demo $(RUN_DIR)/models
	@echo "weightd: talk to it from another shell: WEIGHTD_SOCKET=$(RUN_DIR)/weightd.sock $(BUILD)/weightctl ps"
	exec $(BUILD)/weightd --foreground --state-dir $(RUN_DIR)/state \
		--socket $(RUN_DIR)/weightd.sock --models $(RUN_DIR)/models --host-budget 1G

# `make test` is what CI runs: the release suite, the sanitizer suite, and the fuzzers.
# The sanitizer suite runs last so that its summary line closes the output.
test: deps-test
	@$(MAKE) --no-print-directory test-unit
	@$(MAKE) --no-print-directory fuzz-ci
	@$(MAKE) --no-print-directory test-tsan
	@$(MAKE) --no-print-directory test-san

# The Python tests run in a cached virtual environment of pinned PyPI packages (torch,
# safetensors, transformers, diffusers): scripts/pyenv.sh makes it on first use.
test-unit check: all
	@py=$$(scripts/pyenv.sh test) && WD_PYTHON=$$py tests/run.sh $(BUILD)

pyenv:
	@scripts/pyenv.sh test

# The GPU tests on the real CUDA driver (../shared/GPU.md): tests/test_gpu.c (the CUDA device layer
# directly: VRAM, streams, events, staging, fd export/import, conversion kernels), then
# tests/test_devcache.c without $WEIGHTD_GPU_EMULATE (every corpus file loaded to cuda:0 and
# read back, ...). It runs what is built and never rebuilds (on a GPU machine, bring a
# STATIC=1 build). Exit 77: no driver or no GPU, with the reason printed; otherwise the
# first failure's status.
test-gpu:
	@test -x $(BUILD)/tests/test_gpu -a -x $(BUILD)/tests/test_devcache -a \
		-x $(BUILD)/weightd || \
		{ echo "test-gpu: build $(BUILD)/ first (make all, or make STATIC=1 all)"; exit 1; }
	@env -u WEIGHTD_GPU_EMULATE $(BUILD)/tests/test_gpu; rc=$$?; \
	if [ $$rc -eq 0 ]; then \
		env -u WEIGHTD_GPU_EMULATE WD_DEVCACHE_REAL=1 WD_BUILD=$(CURDIR)/$(BUILD) \
		WD_ROOT=$(CURDIR) WD_CORPUS=$${WD_CORPUS:-$(CURDIR)/../shared/corpus} \
		$(BUILD)/tests/test_devcache; rc=$$?; \
	fi; \
	[ $$rc -eq 77 ] && echo "test-gpu: SKIP (see the reason above)"; exit $$rc

test-san:
	@$(MAKE) --no-print-directory SAN=1 check

# The ring tests under ThreadSanitizer; always clang, always build-tsan/, whatever the caller set.
test-tsan:
	@$(MAKE) --no-print-directory SAN=0 STATIC=0 TSAN=1 CC=clang BUILD=build-tsan \
		build-tsan/tests/test_ring
	@build-tsan/tests/test_ring

# libFuzzer targets need clang. The core layer is compiled once with coverage
# instrumentation (fuzzer-no-link) into an archive each target links against.
FUZZ_SECONDS ?= 60
FUZZ_BUILD := build-fuzz
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=$(FUZZ_BUILD)/%)
FUZZ_SAN := address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS := -std=gnu11 -g -O1 -D_GNU_SOURCE -I$(BUILD) -I. -Iinclude
# Only the parsers of untrusted files and what they call.
FUZZ_LIB_OBJS := $(patsubst %.c,$(FUZZ_BUILD)/%.o,core/format/st.c core/format/st_error.c \
	core/format/st_dtype.c core/format/st_deep.c core/base/file.c core/format/model_read.c \
	core/format/model_layout.c core/format/model_json.c core/format/model_open.c \
	core/format/arch.c core/base/log.c core/base/time.c)

$(FUZZ_BUILD)/%.o: %.c $(BUILD)/config-host.h
	@mkdir -p $(@D)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,$(FUZZ_SAN) -c -o $@ $<

$(FUZZ_BUILD)/libfuzzcore.a: $(FUZZ_LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_BUILD)/%: tests/fuzz/%.c $(FUZZ_BUILD)/libfuzzcore.a
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer,$(FUZZ_SAN) -o $@ $^ $(DEP_LIBS)

fuzz fuzz-ci: $(FUZZ_BINS)
	@set -e; for f in $(FUZZ_BINS); do \
		name=$$(basename $$f); mkdir -p $(FUZZ_BUILD)/corpus-$$name; \
		echo "fuzz: $$name for $(FUZZ_SECONDS)s"; \
		rc=0; $$f -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 \
			$(FUZZ_BUILD)/corpus-$$name tests/fuzz/seeds/$$name \
			>$(FUZZ_BUILD)/$$name.log 2>&1 || rc=$$?; \
		tail -n 12 $(FUZZ_BUILD)/$$name.log; \
		if [ $$rc -ne 0 ]; then \
			echo "fuzz: $$name FAILED (exit $$rc), see $(FUZZ_BUILD)/$$name.log"; exit 1; \
		fi; \
	done

bench-scan: $(BUILD)/bench/bench_scan $(BUILD)/weightctl $(BUILD)/weightd
	$(BUILD)/bench/bench_scan
	$(BUILD)/bench/bench_scan --count 100000 --runs 1

# Kept so make does not delete it after the run: the JSON must stay the last line printed.
# Keep intermediate objects (tests, benches) so a rebuild is incremental and quiet.
.SECONDARY:
bench-ring: $(BUILD)/bench/bench_ring $(BINS)
	$(BUILD)/bench/bench_ring

# disk -> host cache vs raw io_uring, O_DIRECT, mmap+touch and read(); SIZE=4G for bigger.
SIZE ?= 1G
bench-load: $(BUILD)/bench/bench_load $(BINS) $(BUILD)/libweightd.so
	$(BUILD)/bench/bench_load -s $(SIZE)

# A fresh Python process gets 1,000 resident tensors as numpy views vs. reading the file.
# A new process attaching and resolving every tensor of a resident 1,000-tensor model.
bench-hit: $(BUILD)/bench/bench_hit $(BINS)
	$(BUILD)/bench/bench_hit

bench-python: $(BINS) $(CLIENT_LIB)
	/usr/bin/python3 bench/bench_python.py --build $(BUILD)

# weightd against safetensors, fastsafetensors, Run:ai's streamer, from_pretrained and
# numpy.fromfile on one LLaMA-like checkpoint (2G unless SIZE= is given), each reader in a
# fresh process. The peers come from PyPI into a cached virtual environment
# (scripts/pyenv.sh bench, pinned in scripts/python/bench.txt). Not part of make test.
# Like `make test`, it installs its prerequisites first (python3-venv among them), so that a
# fresh machine runs it with this one command.
.PHONY: bench-peers
bench-peers: deps-test
	@$(MAKE) --no-print-directory $(BINS) $(CLIENT_LIB)
	@py=$$(scripts/pyenv.sh bench) && $$py bench/bench_peers.py --build $(BUILD) \
		--size $(if $(filter command line environment,$(origin SIZE)),$(SIZE),2G)

# disk -> VRAM and host -> VRAM vs. pinned H2D, O_DIRECT storage and safetensors (../shared/GPU.md).
# No driver: prints why and {"skipped": ...}. WEIGHTD_GPU_EMULATE=1 runs it emulated (labelled).
# Runs what is built: on a GPU machine, bring a STATIC=1 build and `make STATIC=1 bench-gpu`.
.PHONY: bench-gpu
bench-gpu:
	@test -x $(BUILD)/bench/bench_gpu || \
		{ echo "bench-gpu: build $(BUILD)/bench/bench_gpu first (make all)"; exit 1; }
	$(BUILD)/bench/bench_gpu -s $(SIZE)

# The prepared device check (docs/gpu.md). `make STATIC=1 all gpu-bundle` puts in
# $(BUILD)/gpu-bundle/ what a GPU machine with nothing installed needs, stripped, to fit the
# device tool's 64 MiB: the daemon, test_gpu (and its stub driver), test_devcache and
# bench_gpu; in lib/ the shared libraries that have no static archive (cmocka for the tests;
# GnuTLS's unistring, p11-kit with libffi, and libudev, see configure); in corpus/ the test
# corpus. `make gpu-check` there runs scripts/gpu-check.sh on it (test_gpu, test_devcache
# and bench_gpu on the real driver, one JSON line); it builds nothing and never runs
# ./configure.
GPU_CHECK_BUILD ?= build-static/gpu-bundle
GPU_BUNDLE := $(BUILD)/gpu-bundle
GPU_BUNDLE_LIBS := libcmocka.so.0 libunistring.so.2 libp11-kit.so.0 libffi.so.8 libudev.so.1
.PHONY: gpu-bundle gpu-check
gpu-bundle: $(BUILD)/weightd $(BUILD)/tests/test_gpu $(BUILD)/tests/test_devcache \
		$(BUILD)/bench/bench_gpu $(CUDA_STUB)
	@rm -rf $(GPU_BUNDLE)
	@mkdir -p $(GPU_BUNDLE)/lib $(GPU_BUNDLE)/corpus $(GPU_BUNDLE)/tests $(GPU_BUNDLE)/bench
	@strip -o $(GPU_BUNDLE)/weightd $(BUILD)/weightd
	@strip -o $(GPU_BUNDLE)/tests/test_gpu $(BUILD)/tests/test_gpu
	@strip -o $(GPU_BUNDLE)/tests/test_devcache $(BUILD)/tests/test_devcache
	@strip -o $(GPU_BUNDLE)/tests/libcuda-stub.so $(CUDA_STUB)
	@strip -o $(GPU_BUNDLE)/bench/bench_gpu $(BUILD)/bench/bench_gpu
	@for l in $(GPU_BUNDLE_LIBS); do \
		p=$$(/sbin/ldconfig -p | awk -v l=$$l '$$1 == l && /x86-64/ { print $$NF; exit }'); \
		[ -n "$$p" ] || { echo "gpu-bundle: $$l not found"; exit 1; }; \
		cp -L "$$p" $(GPU_BUNDLE)/lib/; \
	done
	@cp ../shared/corpus/* $(GPU_BUNDLE)/corpus/
	@du -sh $(GPU_BUNDLE) | awk '{ print "gpu-bundle: $(GPU_BUNDLE)/ is " $$1 " (the device tool carries 64 MiB at most)" }'
gpu-check:
	@sh scripts/gpu-check.sh $(GPU_CHECK_BUILD)

# make install [DESTDIR=/staging] [PREFIX=/usr/local] [SYSCONFDIR=/etc]: the daemon, the CLI,
# libweightd (header, .so.1 and its .so link, pkg-config file), the Python package when the
# tree has it, the man pages, the systemd unit with its sysusers.d entry, and a starting
# configuration in SYSCONFDIR/weightd (never overwritten). Installs what $(BUILD) holds, so
# `make SAN=1 install` installs the sanitizer build.
.PHONY: install uninstall
SYSCONFDIR ?= /etc
BINDIR := $(PREFIX)/bin
LIBDIR := $(PREFIX)/lib
INCLUDEDIR := $(PREFIX)/include
MANDIR := $(PREFIX)/share/man
DOCDIR := $(PREFIX)/share/doc/weightd
UNITDIR := $(PREFIX)/lib/systemd/system
SYSUSERSDIR := $(PREFIX)/lib/sysusers.d
PYTHONDIR := $(PREFIX)/lib/python3/dist-packages
PY_FILES := $(wildcard bindings/python/weightd/*.py)
install: $(BINS) $(CLIENT_LIB)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(DOCDIR) \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(SYSCONFDIR)/weightd
	install -m 755 $(BUILD)/weightd $(BUILD)/weightctl $(DESTDIR)$(BINDIR)/
	install -m 755 $(BUILD)/libweightd.so $(DESTDIR)$(LIBDIR)/libweightd.so.$(WD_SOVERSION)
	ln -sf libweightd.so.$(WD_SOVERSION) $(DESTDIR)$(LIBDIR)/libweightd.so
	install -m 644 include/weightd.h $(DESTDIR)$(INCLUDEDIR)/
	sed 's|^prefix=.*|prefix=$(PREFIX)|' $(BUILD)/weightd.pc \
		>$(DESTDIR)$(LIBDIR)/pkgconfig/weightd.pc
	install -m 644 docs/man/weightctl.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 644 docs/man/weightd.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 644 docs/config.md deploy/weightd.conf deploy/weightd-thp.tmpfiles $(DESTDIR)$(DOCDIR)/
	sed -e 's|/usr/local/|$(PREFIX)/|g' -e 's|/etc/weightd/|$(SYSCONFDIR)/weightd/|g' \
		deploy/weightd.service >$(DESTDIR)$(UNITDIR)/weightd.service
	install -m 644 deploy/weightd.sysusers $(DESTDIR)$(SYSUSERSDIR)/weightd.conf
	test -e $(DESTDIR)$(SYSCONFDIR)/weightd/weightd.conf || \
		install -m 644 deploy/weightd.conf $(DESTDIR)$(SYSCONFDIR)/weightd/weightd.conf
	$(if $(PY_FILES),install -d $(DESTDIR)$(PYTHONDIR)/weightd)
	$(if $(PY_FILES),install -m 644 $(PY_FILES) $(DESTDIR)$(PYTHONDIR)/weightd/)
	$(if $(PY_FILES),install -m 644 bindings/python/weightd-patch.pth $(DESTDIR)$(PYTHONDIR)/)

# Removes what install put in place, except the configuration in SYSCONFDIR.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/weightd $(DESTDIR)$(BINDIR)/weightctl \
		$(DESTDIR)$(LIBDIR)/libweightd.so.$(WD_SOVERSION) $(DESTDIR)$(LIBDIR)/libweightd.so \
		$(DESTDIR)$(INCLUDEDIR)/weightd.h $(DESTDIR)$(LIBDIR)/pkgconfig/weightd.pc \
		$(DESTDIR)$(MANDIR)/man1/weightctl.1 $(DESTDIR)$(MANDIR)/man8/weightd.8 \
		$(DESTDIR)$(UNITDIR)/weightd.service $(DESTDIR)$(SYSUSERSDIR)/weightd.conf
	rm -rf $(DESTDIR)$(DOCDIR) $(DESTDIR)$(PYTHONDIR)/weightd \
		$(DESTDIR)$(PYTHONDIR)/weightd-patch.pth

clean:
	rm -rf build build-san build-tsan build-static build-fuzz

-include $(LAYER_OBJS:.o=.d) $(TEST_BINS:=.d) $(TEST_HELPER_OBJS:.o=.d) $(BUILD)/cmd/weightctl.d $(BUILD)/cmd/weightd.d $(CTL_OBJS:.o=.d) $(BENCH_SRCS:bench/%.c=$(BUILD)/bench/%.d)
