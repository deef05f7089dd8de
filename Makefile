# The two commands a new user needs:
#   make run     installs what is missing, builds, starts sgpud with the sample endpoint "echo"
#   make check   installs what is missing, builds, runs every test (unit, fuzz, integration, browser)
# Other targets: make (build), make check-asan (the suite under ASan+UBSan), make bench.
# make fuzz: each fuzz target under libFuzzer for FUZZ_SECONDS (default 60), clang + ASan+UBSan.

BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
MESON_TEST_FLAGS ?= --print-errorlogs

.PHONY: all deps test-deps build run check check-unit check-asan bench clean
.PHONY: fuzz format format-check

all: build

deps:
	@bash scripts/install-deps.sh

# What the tests and benchmarks use besides: a registry, Slurm, Chromium, nginx, wrk.
test-deps:
	@bash scripts/install-deps.sh test

$(BUILD)/build.ninja: | deps
	meson setup $(BUILD)

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

run: build
	./$(BUILD)/sgpud --sample-endpoint $(SGPUD_ARGS)

check: test-deps build
	meson test -C $(BUILD) $(MESON_TEST_FLAGS)

check-unit: test-deps build
	meson test -C $(BUILD) --suite unit $(MESON_TEST_FLAGS)

$(ASAN_BUILD)/build.ninja: | deps
	meson setup $(ASAN_BUILD) -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug

# Integration timeouts are scaled: sanitized binaries are slower.
check-asan: test-deps $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	SGPU_TEST_TIMEOUT_SCALE=3 meson test -C $(ASAN_BUILD) $(MESON_TEST_FLAGS) --timeout-multiplier 3

# Coverage-guided fuzzing: clang, everything instrumented for libFuzzer, ASan+UBSan.
$(FUZZ_BUILD)/build.ninja: | deps
	CC=clang meson setup $(FUZZ_BUILD) -Dfuzzing=true -Db_sanitize=address,undefined -Db_lundef=false

fuzz: test-deps $(FUZZ_BUILD)/build.ninja
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh $(FUZZ_BUILD)

bench: test-deps build
	./$(BUILD)/bench/bench-coldstart
	./$(BUILD)/bench/bench-coldstart-oci
	./$(BUILD)/bench/bench-coldstart-slurm
	./$(BUILD)/bench/bench-gateway
	./$(BUILD)/bench/scaler-sim
	cd $(BUILD) && ./bench/bench-jobs-submit
	./$(BUILD)/bench/bench-logs

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
	rm -rf $(FUZZ_BUILD)

# The C layout of .clang-format: `make format` rewrites, `make format-check` (CI) only checks.
format:
	bash scripts/format.sh

format-check: test-deps
	bash scripts/format.sh --check
