# The one task runner: the README, developers and .ci/run all call these targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

SHARED ?= $(abspath $(CURDIR)/../shared)
REFERENCE_VENV ?= $(HOME)/.cache/kwaai/reference-venv
export KWAAI_REFERENCE_PYTHON ?= $(REFERENCE_VENV)/bin/python
VENV := $(CURDIR)/target/venv
PYTHON_TOOLS := maturin==1.16.0 pytest==8.3.4 mypy==1.13.0
FFI_LIB := target/debug
C_FLAGS := -std=c11 -Wall -Wextra -Werror -Iinclude
C_LINK := -L$(FFI_LIB) -lkwaai -Wl,-rpath,$(CURDIR)/$(FFI_LIB)
VALGRIND := valgrind -q --leak-check=full --show-leak-kinds=definite,indirect \
	--errors-for-leak-kinds=definite,indirect --error-exitcode=1

.PHONY: help demo test deps reference tools lint test-rust test-c test-python test-node check-generated \
	header uniffi-bindings

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

demo: ## build and run the local demo swarm on 127.0.0.1 (Ctrl-C stops it)
	cargo run -p kwaai-cli -- demo

test: deps lint test-rust test-c test-python test-node check-generated ## install what tests need, run every test
	@echo "make test: all suites passed"

deps: reference tools ## the reference peer, Python and Node test tools, valgrind

reference: ## install the Python reference peer (hivemind + petals) into $(REFERENCE_VENV), once
	bash $(SHARED)/reference/install.sh $(REFERENCE_VENV)

tools:
	command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
	[ -x $(VENV)/bin/maturin ] || { python3 -m venv $(VENV) && $(VENV)/bin/pip install -q $(PYTHON_TOOLS); }
	cd bindings/node && npm ci --no-audit --no-fund --loglevel=error

lint: ## formatting and clippy, warnings are errors
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

test-rust: ## Rust unit, interop and header tests, and the Rust examples
	cargo test
	cargo run -q -p kwaai-core --example start_node

test-c: ## the C ABI from C: plain, under valgrind, and with AddressSanitizer
	cargo build -p kwaai-ffi
	mkdir -p target/c
	gcc $(C_FLAGS) tests/c/node_lifecycle.c $(C_LINK) -o target/c/node_lifecycle
	gcc $(C_FLAGS) -fsanitize=address,undefined -fno-omit-frame-pointer tests/c/node_lifecycle.c $(C_LINK) \
		-o target/c/node_lifecycle_asan
	./target/c/node_lifecycle
	$(VALGRIND) ./target/c/node_lifecycle > target/c/valgrind.log || { cat target/c/valgrind.log; exit 1; }
	./target/c/node_lifecycle_asan > target/c/asan.log || { cat target/c/asan.log; exit 1; }
	gcc $(C_FLAGS) examples/c/start_node.c $(C_LINK) -o target/c/start_node && ./target/c/start_node
	@echo "C ABI: clean under valgrind and AddressSanitizer"

test-python: ## build the Python package into a venv, run pytest and check the type stubs
	cd bindings/python && VIRTUAL_ENV=$(VENV) PATH=$(VENV)/bin:$$PATH maturin develop -q
	cd bindings/python && $(VENV)/bin/python -m mypy.stubtest kwaai._kwaai
	cd bindings/python && $(VENV)/bin/pytest -q tests
	$(VENV)/bin/python examples/python/start_node.py

test-node: ## build the Node addon and run node's test runner
	cd bindings/node && npx napi build --platform --js index.js --dts index.d.ts
	cd bindings/node && node --test __test__/
	node examples/node/start_node.mjs

check-generated: ## generated sources (header, index.d.ts, UniFFI) are committed and current
	rm -rf target/uniffi-check
	cargo build -p kwaai-uniffi
	./target/debug/uniffi-bindgen generate --no-format --library target/debug/libkwaai_uniffi.so \
		--language kotlin --language swift --out-dir target/uniffi-check >/dev/null
	diff -r bindings/uniffi/generated target/uniffi-check || \
		{ echo "bindings/uniffi/generated is stale: run make uniffi-bindings"; exit 1; }
	git diff --exit-code -- bindings/node/index.js bindings/node/index.d.ts || \
		{ echo "bindings/node/index.{js,d.ts} changed: commit them"; exit 1; }

header: ## regenerate include/kwaai.h
	KWAAI_BLESS=1 cargo test -p kwaai-ffi --test header_is_current

uniffi-bindings: ## regenerate the Swift and Kotlin sources
	cargo build -p kwaai-uniffi
	rm -rf bindings/uniffi/generated
	./target/debug/uniffi-bindgen generate --no-format --library target/debug/libkwaai_uniffi.so \
		--language kotlin --language swift --out-dir bindings/uniffi/generated
