# The one task runner: the README, developers and .ci/run all call these targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

SHARED ?= $(abspath $(CURDIR)/../shared)
REFERENCE_VENV ?= $(HOME)/.cache/kwaai/reference-venv
export KWAAI_REFERENCE_PYTHON ?= $(REFERENCE_VENV)/bin/python
# transformers 4.46 for the families Petals 2.2's transformers 4.33 lacks (Mixtral), put first on the
# reference venv's PYTHONPATH by the tests that need it.
export KWAAI_NEWER_TRANSFORMERS ?= $(HOME)/.cache/kwaai/transformers-4.46
VENV := $(CURDIR)/target/venv
# pyo3 finds Python through PATH unless told; pinning it keeps npx's PATH from forcing rebuilds.
export PYO3_PYTHON ?= $(shell command -v python3)
# numpy: the tests pass numpy arrays too (it is optional for users of the package).
PYTHON_TOOLS := maturin==1.16.0 pytest==8.3.4 mypy==1.13.0 numpy==2.4.6
FFI_LIB := target/debug
# The model the examples generate with, and the one-server swarm on 127.0.0.1 they join.
DEMO_MODEL := target/demo-model
WITH_SWARM := examples/with_swarm.sh $(DEMO_MODEL)
C_FLAGS := -std=c11 -Wall -Wextra -Werror -Iinclude -Itests/c
C_LINK := -L$(FFI_LIB) -lkwaai -Wl,-rpath,$(CURDIR)/$(FFI_LIB)
VALGRIND := valgrind -q --leak-check=full --show-leak-kinds=definite,indirect \
	--errors-for-leak-kinds=definite,indirect --error-exitcode=1

.PHONY: help demo test deps reference tools build lint test-rust test-c test-python test-node check-generated \
	header uniffi-bindings wheel fuzz pkgconfig test-kotlin bench-ffi demo-model bench-bindings test-wasm \
	browser-tools browser-pkg test-browser

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

demo: ## build and run the local demo swarm on 127.0.0.1 (it streams a generation and stops)
	cargo run -p kwaai-cli -- demo

test: deps lint build test-rust test-c test-python test-node test-kotlin test-wasm check-generated ## install what tests need, run every test
	@echo "make test: all suites passed"

deps: reference tools ## the reference peer, Python and Node test tools, valgrind, iproute2 (the WebRTC tests' network namespaces)

reference: ## install the Python reference peer (hivemind + petals) into $(REFERENCE_VENV), and transformers 4.46 beside it, once
	bash $(SHARED)/reference/install.sh $(REFERENCE_VENV)
	[ -d $(KWAAI_NEWER_TRANSFORMERS)/transformers ] || $(KWAAI_REFERENCE_PYTHON) -m pip install -q --no-deps \
		--target $(KWAAI_NEWER_TRANSFORMERS) transformers==4.46.3 tokenizers==0.20.3 huggingface_hub==0.26.5

tools:
	command -v valgrind >/dev/null && command -v cmake >/dev/null && command -v java >/dev/null && \
		command -v ip >/dev/null && command -v unshare >/dev/null && [ -f $(JNA_JAR) ] || \
		{ apt-get update -qq && \
		apt-get install -y -qq valgrind cmake default-jre-headless libjna-java iproute2 util-linux; }
	[ -x $(VENV)/bin/maturin ] || python3 -m venv $(VENV)
	$(VENV)/bin/python -c 'import maturin, pytest, mypy, numpy' 2>/dev/null || $(VENV)/bin/pip install -q $(PYTHON_TOOLS)
	cd bindings/node && npm ci --no-audit --no-fund --loglevel=error
	cd bindings/uniffi/tests/kotlin && npm ci --no-audit --no-fund --loglevel=error

# Every cargo invocation selects the whole workspace with all targets, so dependencies are
# resolved with one feature set and compiled once (per-package builds would rebuild them).
CARGO_SET := --workspace --all-targets
JNA_JAR := /usr/share/java/jna.jar
KOTLIN_HOME := bindings/uniffi/tests/kotlin/node_modules/kotlin-compiler

build: ## build every crate, library and test of the workspace (debug)
	cargo build $(CARGO_SET)

lint: ## formatting and clippy, warnings are errors
	cargo fmt --all --check
	cargo clippy $(CARGO_SET) -- -D warnings

test-rust: build demo-model browser-pkg ## Rust unit, interop and header tests (the browser page's too), and the Rust examples
	cargo test --workspace
	./target/debug/examples/start_node
	$(WITH_SWARM) ./target/debug/examples/generate $(DEMO_MODEL)

C_TESTS := node_lifecycle dht_store_get tensor_exchange generate
CPP_TESTS := node_roundtrip model_generate
# The tiny model the generation tests serve (argv[1] of every C and C++ test).
TINY_MODEL := target/c/tiny-llama
CPP_FLAGS := -std=c++17 -Wall -Wextra -Werror -Iinclude

test-c: build demo-model ## the C ABI from C: each test plain, under valgrind, and with AddressSanitizer
	mkdir -p target/c
	[ -f $(TINY_MODEL)/model.safetensors ] || $(KWAAI_REFERENCE_PYTHON) $(SHARED)/reference/make_tiny_model.py \
		$(TINY_MODEL) --family llama --layers 4 --hidden 64 >/dev/null
	for t in $(C_TESTS); do \
		gcc $(C_FLAGS) tests/c/$$t.c -pthread $(C_LINK) -o target/c/$$t; \
		gcc $(C_FLAGS) -fsanitize=address,undefined -fno-omit-frame-pointer tests/c/$$t.c -pthread $(C_LINK) \
			-o target/c/$$t-asan; \
		./target/c/$$t $(TINY_MODEL); \
		$(VALGRIND) ./target/c/$$t $(TINY_MODEL) > target/c/$$t-valgrind.log 2>&1 || { cat target/c/$$t-valgrind.log; exit 1; }; \
		./target/c/$$t-asan $(TINY_MODEL) > target/c/$$t-asan.log 2>&1 || { cat target/c/$$t-asan.log; exit 1; }; \
	done
	for t in $(CPP_TESTS); do \
		g++ $(CPP_FLAGS) tests/cpp/$$t.cpp -pthread $(C_LINK) -o target/c/$$t; \
		g++ $(CPP_FLAGS) -fsanitize=address,undefined -fno-omit-frame-pointer tests/cpp/$$t.cpp -pthread $(C_LINK) \
			-o target/c/$$t-asan; \
		./target/c/$$t $(TINY_MODEL); \
		$(VALGRIND) ./target/c/$$t $(TINY_MODEL) > target/c/$$t-valgrind.log 2>&1 || { cat target/c/$$t-valgrind.log; exit 1; }; \
		./target/c/$$t-asan $(TINY_MODEL) > target/c/$$t-asan.log 2>&1 || { cat target/c/$$t-asan.log; exit 1; }; \
	done
	gcc $(C_FLAGS) examples/c/start_node.c $(C_LINK) -o target/c/start_node && ./target/c/start_node
	gcc $(C_FLAGS) examples/c/generate.c $(C_LINK) -o target/c/generate
	$(MAKE) --no-print-directory pkgconfig
	$(WITH_SWARM) ./target/c/generate $(DEMO_MODEL)
	PKG_CONFIG_PATH=$(CURDIR)/target/pkgconfig cmake -S examples/cpp -B target/cpp-example -DCMAKE_BUILD_TYPE=Debug >/dev/null
	cmake --build target/cpp-example >/dev/null && ./target/cpp-example/exchange_tensor
	$(WITH_SWARM) ./target/cpp-example/generate $(DEMO_MODEL)
	@echo "C ABI: C and C++ clean under valgrind and AddressSanitizer; the CMake example runs"

bench-ffi: ## cost per C ABI call from C (release library) and per streamed token, against the same in Rust
	cargo build --release -p kwaai-ffi
	mkdir -p target/c
	gcc -O2 -std=c11 -Iinclude kwaai-ffi/benches/ffi_calls.c -Ltarget/release -lkwaai \
		-Wl,-rpath,$(CURDIR)/target/release -o target/c/ffi_calls
	./target/c/ffi_calls
	cargo bench -p kwaai-ffi --bench calls
	[ -f $(TINY_MODEL)/model.safetensors ] || $(KWAAI_REFERENCE_PYTHON) $(SHARED)/reference/make_tiny_model.py \
		$(TINY_MODEL) --family llama --layers 4 --hidden 64 >/dev/null
	KWAAI_TINY_MODEL=$(CURDIR)/$(TINY_MODEL) cargo bench -p kwaai-ffi --bench tokens

demo-model: build ## write the demo model (a small random Llama with a tokenizer) to target/demo-model
	[ -f $(DEMO_MODEL)/model.safetensors ] || ./target/debug/kwaainet demo --make-model $(DEMO_MODEL) >/dev/null

bench-bindings: ## per streamed token through each binding (a replayed stream), against the same in Rust
	cargo build --release -p kwaai-python -p kwaai-uniffi
	cargo bench -p kwaai-ffi --bench tokens -- --replay-only
	cp target/release/lib_kwaai.so bindings/python/python/kwaai/_kwaai.abi3.so
	$(PY_RUN) bindings/python/benches/tokens.py
	cp target/debug/lib_kwaai.so bindings/python/python/kwaai/_kwaai.abi3.so
	cd bindings/node && npx napi build --platform --release --js index.js --dts index.d.ts --cargo-flags="-p kwaai-node"
	node bindings/node/benches/tokens.mjs
	rm -rf target/kotlin-bench
	$(KOTLIN_HOME)/bin/kotlinc -nowarn bindings/uniffi/generated/uniffi/kwaai/kwaai.kt bindings/uniffi/benches/TokensBench.kt \
		-cp $(JNA_JAR) -d target/kotlin-bench
	java -Djna.library.path=target/release -cp target/kotlin-bench:$(JNA_JAR):$(KOTLIN_HOME)/lib/kotlin-stdlib.jar TokensBenchKt

pkgconfig: ## write target/pkgconfig/kwaai.pc for this checkout's header and library
	mkdir -p target/pkgconfig
	sed -e 's|@PREFIX@|$(CURDIR)|' -e 's|@LIBDIR@|$(CURDIR)/$(FFI_LIB)|' \
		-e "s|@VERSION@|$$(sed -n 's/^version = \"\(.*\)\"/\1/p' Cargo.toml | head -1)|" \
		kwaai-ffi/kwaai.pc.in > target/pkgconfig/kwaai.pc

KOTLIN_RUN = java -Djna.library.path=$(FFI_LIB) -cp target/kotlin/classes:$(JNA_JAR):$(KOTLIN_HOME)/lib/kotlin-stdlib.jar

test-kotlin: build demo-model ## the Kotlin bindings (UniFFI) on the JVM, compiled with kotlinc, and the example
	rm -rf target/kotlin
	$(KOTLIN_HOME)/bin/kotlinc -nowarn bindings/uniffi/generated/uniffi/kwaai/kwaai.kt bindings/uniffi/tests/kotlin/*.kt \
		examples/kotlin/*.kt -cp $(JNA_JAR) -d target/kotlin/classes
	$(KOTLIN_RUN) NodeTestKt
	$(KOTLIN_RUN) GenerateTestKt $(DEMO_MODEL)
	$(WITH_SWARM) $(KOTLIN_RUN) GenerateKt $(DEMO_MODEL)

# The tests import the package from its source tree with the extension built by `make build`
# (what `maturin develop` does, without a second cargo build); `make wheel` builds the wheel.
PY_RUN := env PYTHONPATH=$(CURDIR)/bindings/python/python $(VENV)/bin/python

test-python: build demo-model ## the Python package: pytest, type stubs checked against the module, the example
	cp target/debug/lib_kwaai.so bindings/python/python/kwaai/_kwaai.abi3.so
	$(PY_RUN) -m mypy.stubtest kwaai._kwaai
	cd bindings/python && $(PY_RUN) -m mypy
	cd bindings/python && $(PY_RUN) -m pytest -q tests
	$(PY_RUN) examples/python/start_node.py
	$(WITH_SWARM) $(PY_RUN) examples/python/generate.py $(DEMO_MODEL)

wheel: ## build the Python wheel (release) into target/wheels
	cd bindings/python && $(VENV)/bin/maturin build --release -o $(CURDIR)/target/wheels

test-node: build demo-model ## build the Node addon and run node's test runner, and the examples
	cd bindings/node && npx napi build --platform --js index.js --dts index.d.ts --cargo-flags="$(CARGO_SET)"
	cd bindings/node && node --test __test__/
	node examples/node/start_node.mjs
	$(WITH_SWARM) node examples/node/generate.mjs $(DEMO_MODEL)

check-generated: build ## generated sources (header, index.d.ts, UniFFI) are committed and current
	rm -rf target/uniffi-check
	./target/debug/uniffi-bindgen generate --no-format --library target/debug/libkwaai_uniffi.so \
		--language kotlin --language swift --out-dir target/uniffi-check >/dev/null
	diff -r bindings/uniffi/generated target/uniffi-check || \
		{ echo "bindings/uniffi/generated is stale: run make uniffi-bindings"; exit 1; }
	git diff --exit-code -- bindings/node/index.d.ts || \
		{ echo "bindings/node/index.d.ts changed: commit it"; exit 1; }
	@# napi-rs writes index.js's export lines in build order, which varies: compare them as a set,
	@# then keep the committed file.
	diff <(git show HEAD:bindings/node/index.js | sort) <(sort bindings/node/index.js) || \
		{ echo "bindings/node/index.js changed: commit it"; exit 1; }
	git checkout -- bindings/node/index.js

# The browser build: the test runner must be the wasm-bindgen version kwaai-wasm pins.
WASM_BINDGEN_VERSION := $(shell sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' kwaai-wasm/Cargo.toml)
WASM_BINDGEN_ROOT ?= $(HOME)/.cache/kwaai/wasm-bindgen-$(WASM_BINDGEN_VERSION)
WASM_TARGET := wasm32-unknown-unknown

browser-tools: # the wasm32 target, the pinned wasm-bindgen-cli, Debian's chromium and chromedriver
	rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	[ -x $(WASM_BINDGEN_ROOT)/bin/wasm-bindgen-test-runner ] || cargo install --locked wasm-bindgen-cli \
		--version $(WASM_BINDGEN_VERSION) --root $(WASM_BINDGEN_ROOT)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }

# Fails unless `npm pack` would pack every file package.json lists (stdin: `npm pack --dry-run --json`).
CHECK_PACKED := const [p] = JSON.parse(require("fs").readFileSync(0)), got = p.files.map((f) => f.path); \
	const missing = require("./package.json").files.filter((f) => !got.includes(f)); \
	if (missing.length) { console.error("npm would not pack " + missing); process.exit(1); }

browser-pkg: browser-tools ## the npm package of the browser client (release wasm, wasm-bindgen --target web) in target/browser-pkg
	cargo build --release -p kwaai-wasm --target $(WASM_TARGET)
	$(WASM_BINDGEN_ROOT)/bin/wasm-bindgen --target web --out-dir target/browser-pkg \
		target/$(WASM_TARGET)/release/kwaai_wasm.wasm
	grep -q "\"version\": \"$$(sed -n 's/^version = \"\(.*\)\"/\1/p' Cargo.toml | head -1)\"" kwaai-wasm/package.json || \
		{ echo "kwaai-wasm/package.json's version is not the workspace's"; exit 1; }
	cp kwaai-wasm/package.json kwaai-wasm/README.md target/browser-pkg/
	cd target/browser-pkg && npm pack --dry-run --json | node -e '$(CHECK_PACKED)'

test-browser: browser-pkg reference ## the example page in headless Chromium against local swarms (Rust, and Rust + Python)
	cargo test -p kwaai-wasm --test browser_generation

test-wasm: browser-tools ## kwaai-core without `native` on wasm32, and kwaai-wasm's tests in headless Chromium
	cargo clippy -p kwaai-core --no-default-features --target $(WASM_TARGET) -- -D warnings
	cargo clippy -p kwaai-wasm --all-targets --target $(WASM_TARGET) -- -D warnings
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(WASM_BINDGEN_ROOT)/bin/wasm-bindgen-test-runner \
		CHROMEDRIVER=$$(command -v chromedriver) cargo test -p kwaai-wasm --target $(WASM_TARGET)

FUZZ_SECONDS ?= 180
fuzz: ## run every fuzz target for FUZZ_SECONDS each (cargo-fuzz; see fuzz/README.md)
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd fuzz && for target in $$(RUSTC_BOOTSTRAP=1 cargo fuzz list); do \
		RUSTC_BOOTSTRAP=1 cargo fuzz run -O $$target -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done

header: ## regenerate include/kwaai.h
	KWAAI_BLESS=1 cargo test $(CARGO_SET) --test header_is_current

uniffi-bindings: build ## regenerate the Swift and Kotlin sources
	rm -rf bindings/uniffi/generated
	./target/debug/uniffi-bindgen generate --no-format --library target/debug/libkwaai_uniffi.so \
		--language kotlin --language swift --out-dir bindings/uniffi/generated
